"""COCO keypoint metrics of result records, through pycocotools' ``COCOeval(iouType="keypoints")``.

Results are COCO result records: ``image_id``, ``category_id``, ``keypoints`` [x, y, v] * K flat in
image pixels, ``score`` (what :class:`jcra.postprocess.PostProcess` returns). The OKS sigmas follow
the ground truth's K: COCO's for 17 keypoints, CrowdPose's for 14, the caller's otherwise.

CrowdPose ground truth differs from COCO's in two ways handled here. Its annotations carry no
``area``, so a missing one (or null, or 0) is taken as ``0.53 * w * h`` of the box
(:data:`jcra.data.coco.BOX_AREA_FRACTION`, which the training targets use too), the area
crowdposetools (and xtcocotools with ``use_area=False``) use in OKS; ``APM``/``APL`` then bin by that
area too. (A file that does give other areas is scored with them, COCO's rule, where crowdposetools
would still take 0.53 of the box; a warning says so.) Its images
carry a crowd index in [0, 1], by which CrowdPose reports AP on easy (< 0.2), medium (0.2 to below 0.8)
and hard (0.8 and up) images; those three are added when the images have ``crowdIndex``. These are the
bounds of crowdposetools' evaluation (``get_type_result(first=0.2, second=0.8)``), which published
CrowdPose numbers come from; the CrowdPose paper's text says 0.1 and 0.8.

An annotation without ``iscrowd`` is not a crowd (as the dataset reads it), one without
``num_keypoints`` gets its count of labelled (v > 0) keypoints, one without ``bbox`` the box around
its labelled keypoints (what :class:`jcra.data.CocoKeypoints` uses for it); one with neither a bbox
nor a labelled keypoint marks no place, to score or to ignore, and is left out.
"""

import contextlib
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jcra.data.coco import (
    BOX_AREA_FRACTION,
    finite_numbers,
    keypoint_box,
    keypoint_category_id,
    read_annotations,
    read_json,
    whole_number,
)
from jcra.data.coco import num_keypoints as count_keypoints
from kernels.oks import COCO_SIGMAS, CROWDPOSE_SIGMAS

METRIC_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
"""Names of ``COCOeval.stats[0:10]`` for keypoints, in that order."""

CROWD_LEVELS = ("AP_easy", "AP_medium", "AP_hard")
"""AP over CrowdPose's crowd-index subsets: below :data:`CROWD_BOUNDS` [0], below [1], the rest."""

CROWD_BOUNDS = (0.2, 0.8)
"""crowdposetools' bounds between the easy, medium and hard levels (each bound opens the next level)."""

_DEFAULT_SIGMAS = {17: COCO_SIGMAS, 14: CROWDPOSE_SIGMAS}


def load_ground_truth(ann_file: str | Path) -> tuple[dict, int]:
    """The checked annotation file, with what COCOeval reads and it lacks filled in, and its K; a
    ValueError names the file. Annotations are numbered 1, 2, ... and all put in the results' category
    (:func:`jcra.data.coco.keypoint_category_id`), the file's only one then. Training and ``jcra evaluate``
    call it before any work, so a file that evaluation would refuse stops them first."""
    ann_file = Path(ann_file)
    data = read_annotations(ann_file, image_keys=("id",))
    if not isinstance(data.get("categories"), list):
        raise ValueError(f"ann_file {ann_file} is not a COCO annotation file: it needs a 'categories' list")
    if not data["images"]:
        raise ValueError(f"ann_file {ann_file} lists no images: nothing to evaluate")
    num_keypoints = count_keypoints(data, ann_file)
    for image in data["images"]:
        crowd_index = image.get("crowdIndex")
        if crowd_index is not None and not (finite_numbers([crowd_index]) and 0 <= crowd_index <= 1):
            raise ValueError(
                f"ann_file {ann_file}: image {image['id']!r} has crowdIndex {crowd_index!r:.100}, expected a "
                "number in [0, 1]"
            )
    # The dataset trains on people of any category, and the results name one: everyone is scored in
    # it, where COCOeval would average over the file's categories.
    category_id = keypoint_category_id(data)
    category = next((c for c in data["categories"] if c.get("id") == category_id), {"name": "person"})
    data["categories"] = [{**category, "id": category_id}]
    # crowdposetools' areas are 0.53 of the box whatever the file says
    other_areas = any(
        ann.get("area") and not math.isclose(ann["area"], BOX_AREA_FRACTION * _box_area(ann), rel_tol=1e-6)
        for ann in data["annotations"]
    )
    seen, kept = set(), []
    for ann in data["annotations"]:
        if isinstance(ann.get("id"), int | float | str):
            if ann["id"] in seen:  # a person listed twice, or two sharing an id: which one is meant?
                raise ValueError(f"ann_file {ann_file}: annotation id {ann['id']!r:.100} is used twice")
            seen.add(ann["id"])
        keypoints = np.asarray(ann["keypoints"], dtype=np.float64).reshape(num_keypoints, 3)
        labelled = keypoints[:, 2] > 0
        ann.setdefault("num_keypoints", int(labelled.sum()))
        ann["category_id"] = category_id
        ann.setdefault("iscrowd", 0)  # COCOeval indexes it; the dataset reads a missing one as 0 too
        if not ann.get("bbox"):
            if not labelled.any():
                continue
            ann["bbox"] = keypoint_box(keypoints)
        if not ann.get("area"):  # missing, null or 0, as the dataset reads it
            ann["area"] = BOX_AREA_FRACTION * ann["bbox"][2] * ann["bbox"][3]
        kept.append(ann)
    # COCOeval records a match by the person's id and reads it as a flag: an id of 0 counted as no
    # match, and a string id failed once a result matched
    for number, ann in enumerate(kept, 1):
        ann["id"] = number
    data["annotations"] = kept
    if other_areas and any("crowdIndex" in image for image in data["images"]):
        warnings.warn(
            f"ann_file {ann_file}: CrowdPose images (crowdIndex) whose people carry areas other than 0.53"
            " of the box are scored with them (COCO's rule), where crowdposetools takes 0.53 of the box:"
            " AP not comparable with published CrowdPose numbers",
            stacklevel=2,
        )
    return data, num_keypoints


def _box_area(ann: dict) -> float:
    box = ann.get("bbox")
    return box[2] * box[3] if box else 0.0


def _resolve_sigmas(sigmas, num_keypoints: int) -> np.ndarray:
    if sigmas is None:
        if num_keypoints not in _DEFAULT_SIGMAS:
            raise ValueError(
                f"no default OKS sigmas for K={num_keypoints} keypoints (only 17 COCO, 14 CrowdPose); "
                "pass sigmas"
            )
        sigmas = _DEFAULT_SIGMAS[num_keypoints]
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.detach().cpu().numpy()
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.shape != (num_keypoints,) or not (sigmas > 0).all():
        raise ValueError(
            f"sigmas must be {num_keypoints} positive values (one per keypoint), got shape {sigmas.shape}"
        )
    return sigmas


def _load_results(results, num_keypoints: int, data: dict, ann_file: Path) -> list[dict]:
    """Copies of the checked result records; their image and category ids are those of ``data``."""
    source = ""
    if isinstance(results, (str, Path)):
        path = Path(results)
        source = f" of {path}"
        results = read_json(path, "results")
        if not isinstance(results, list):
            raise ValueError(f"results file {path} must hold a JSON list of result records")
    elif not isinstance(results, Sequence):
        raise TypeError(f"results must be a list of result records or a path, got {type(results)}")
    records = []
    for i, record in enumerate(results):
        if not isinstance(record, dict):
            raise ValueError(f"results[{i}]{source} is not a result record (dict), got {type(record)}")
        missing = {"image_id", "category_id", "keypoints", "score"} - set(record)
        if missing:
            raise ValueError(f"results[{i}]{source} lacks {sorted(missing)}")
        for key in ("image_id", "category_id"):  # 785.0 is 785 to COCOeval's index; [785] or true no id
            if not (isinstance(record[key], str) or whole_number(record[key])):
                raise ValueError(
                    f"results[{i}]{source} has {key} {record[key]!r:.100}, not an integer or a string"
                )
        keypoints = record["keypoints"]  # a list as JSON gives it, or a numpy array
        sequence = isinstance(keypoints, Sequence | np.ndarray) and not isinstance(keypoints, str | bytes)
        if not sequence or len(keypoints) != 3 * num_keypoints:
            got = len(keypoints) if sequence else repr(keypoints)[:100]
            raise ValueError(
                f"results[{i}]{source} has keypoints {got}, expected a list of 3 * K = "
                f"{3 * num_keypoints} values"
            )
        # COCOeval counts a NaN keypoint as a match and sorts NaN scores anywhere
        if not finite_numbers([*record["keypoints"], record["score"]]):
            raise ValueError(f"results[{i}]{source} has keypoints or a score that are not finite numbers")
        # loadRes writes id, bbox and area into each record; keep the caller's dicts as they are
        records.append(dict(record))
    # COCOeval drops results of other categories without a word
    known = {"image_id": data["images"], "category_id": data["categories"]}
    for key, entries in known.items():
        unknown = {record[key] for record in records} - {entry.get("id") for entry in entries}
        if unknown:
            raise ValueError(
                f"results hold {key}s not in ann_file {ann_file}: {sorted(unknown, key=str)[:10]}"
            )
    return records


def _stats(gt: COCO, dt: COCO, sigmas: np.ndarray, img_ids: list | None = None) -> np.ndarray:
    """COCOeval's ten keypoint stats ([10], -1 where no ground truth counts), over img_ids if given."""
    coco_eval = COCOeval(gt, dt, iouType="keypoints")
    coco_eval.params.kpt_oks_sigmas = sigmas
    if img_ids is not None:
        coco_eval.params.imgIds = img_ids
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def _crowd_subsets(images: list[dict]) -> dict[str, list]:
    """Image ids per CrowdPose level; images without ``crowdIndex`` fall in none."""
    subsets = {name: [] for name in CROWD_LEVELS}
    for image in images:
        crowd_index = image.get("crowdIndex")
        if crowd_index is None:
            continue
        subsets[CROWD_LEVELS[sum(crowd_index >= bound for bound in CROWD_BOUNDS)]].append(image["id"])
    return subsets


def evaluate_keypoints(results, ann_file, *, sigmas=None) -> dict[str, float]:
    """COCO keypoint AP/AR of ``results`` against the ground truth in ``ann_file``.

    results: list of result records (``image_id``, ``category_id``, ``keypoints`` of 3 * K floats,
    ``score``) or the path of a JSON file holding one. ann_file: COCO-format keypoint annotations.
    sigmas: per-keypoint OKS sigmas [K]; by default COCO's (K = 17) or CrowdPose's (K = 14).

    Returns :data:`METRIC_NAMES` in order (``COCOeval.stats[0:10]``, in [0, 1]; -1 where an area range
    holds no ground truth), and when the images carry ``crowdIndex`` also :data:`CROWD_LEVELS`, which
    are nan for a level with no images. Empty results score 0 where there is ground truth, and -1 where
    there is none, as any other results would.
    """
    ann_file = Path(ann_file)
    data, num_keypoints = load_ground_truth(ann_file)
    sigmas = _resolve_sigmas(sigmas, num_keypoints)
    records = _load_results(results, num_keypoints, data, ann_file)
    subsets = _crowd_subsets(data["images"]) if any("crowdIndex" in image for image in data["images"]) else {}

    gt = COCO()
    gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if records:
            dt = gt.loadRes(records)
        else:  # loadRes cannot take an empty list: an index with no detections
            dt = COCO()
            dt.dataset = {"images": data["images"], "categories": data["categories"], "annotations": []}
            dt.createIndex()
    metrics = dict(zip(METRIC_NAMES, map(float, _stats(gt, dt, sigmas)), strict=True))
    for name, ids in subsets.items():
        metrics[name] = float(_stats(gt, dt, sigmas, ids)[0]) if ids else math.nan
    return metrics


def strict_json(metrics: dict) -> dict:
    """``metrics`` with every non-finite float (a crowd level with no images is nan) as None, which
    JSON writes as null: ``json.dumps`` would write NaN, which strict parsers reject."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


def format_metrics(metrics: dict[str, float]) -> str:
    """One line, e.g. ``AP 0.861 | AP50 0.993 | ...``, in the order of ``metrics``."""
    return " | ".join(f"{name} {value:.3f}" for name, value in metrics.items())
