"""COCO-format keypoint datasets (COCO 2017, CrowdPose, OCHuman) as a torch ``Dataset``.

The annotation file and every image the dataset will load are checked when it is built, so a missing
file, a malformed annotation, or an image file that is missing or whose header cannot be read stops a
run before training starts, naming the file. (Only headers are read then: a file damaged past its header
stops the run when it is loaded, naming it.)
"""

import json
import math
import numbers
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from jcra.data.images import UNREADABLE, read_rgb
from jcra.data.transforms import keep_inside

PIXEL_CENTRE = 0.5
"""COCO keypoints are pixel indices: a label (x, y) marks the pixel whose centre lies at (x + 0.5,
y + 0.5) in the continuous coordinates the transforms and the model use (column c spans [c, c + 1)).
The dataset adds it to every labelled keypoint, :class:`jcra.postprocess.PostProcess` takes it off, as
detectron2 does; without it a horizontal flip (x -> W - x) would move the labels one pixel off the
mirrored person while unflipped images stay exact."""

EXIF_ORIENTATION = 0x0112
SIDEWAYS = {5, 6, 7, 8}
"""EXIF orientations that swap width and height when a viewer shows the photo."""

BOX_AREA_FRACTION = 0.53
"""The area of a person whose annotation gives none (CrowdPose's), as a share of its box: the area
crowdposetools (and xtcocotools with ``use_area=False``) take in OKS. The dataset's targets (the OKS
loss and the matcher) and :func:`jcra.evaluation.evaluate_keypoints` both use it, so training works to
the OKS tolerance it is scored with."""


class CocoKeypoints(Dataset):
    """Person keypoints of a COCO-format annotation file.

    Item: ``(image, target)``; without ``transforms`` the image is a uint8 tensor [3, H, W]. Target:
    ``keypoints`` [G, K, 3] float (x, y in continuous pixels: the file's labels plus
    :data:`PIXEL_CENTRE`; v: 0 unlabelled, 1 occluded, 2 visible), ``boxes``
    [G, 4] xyxy pixels, ``area`` [G] pixels² (the annotation's, else :data:`BOX_AREA_FRACTION` of the
    box), ``iscrowd`` [G] (zeros), ``image_id`` int, ``orig_size``
    and ``size`` [2] (h, w). Crowd regions and people without a labelled keypoint are never targets;
    labels outside the image are unlabelled (with a warning), as a crop would.

    ann_file: the annotation JSON; image_dir: folder of the images' ``file_name``s; transforms: a
    callable ``(PIL image, target) -> (tensor, target)`` (see :func:`jcra.data.build_transforms`);
    skip_empty: drop images without targets (training); negatives: with ``skip_empty``, keep those whose
    annotations hold no target (only crowd regions, or people with no labelled keypoint) as images to
    find nobody in: PETR's (mmdet keeps every image an annotation lists); check_images: open the header
    of every image kept now (catches missing, empty and non-image files early). ``category_id``: the id
    results on it are scored under (:func:`keypoint_category_id`); ``keypoint_names``: the file's, in
    its order (empty when it names none); ``annotated``: the ids of the images with any annotation.
    """

    def __init__(
        self, ann_file, image_dir, transforms=None, *, skip_empty=False, negatives=False, check_images=True
    ):
        self.ann_file, self.image_dir, self.transforms = Path(ann_file), Path(image_dir), transforms
        self._warned_outside = self._warned_swapped = False
        data = read_annotations(self.ann_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image_dir: {self.image_dir} is not a folder")
        self.num_keypoints = num_keypoints(data, self.ann_file)
        self.keypoint_names = tuple((_keypoint_category(data) or {}).get("keypoints", ()))
        self.category_id = keypoint_category_id(data)
        # each image's file and listed size only (COCO lists licences, URLs and dates as well)
        self.images = {
            image["id"]: {key: image[key] for key in ("file_name", "width", "height") if key in image}
            for image in data["images"]
        }
        annotations: dict = {image_id: [] for image_id in self.images}
        for ann in data["annotations"]:
            annotations[ann["image_id"]].append(ann)
        # the parsed file is not kept, only the targets and which images have annotations: COCO train's
        # polygons parse to an estimated 0.8 GB of Python objects, which each forked loader worker would
        # come to copy
        self.targets = {image_id: self._people(annotations[image_id]) for image_id in sorted(self.images)}
        self.annotated = frozenset(image_id for image_id, anns in annotations.items() if anns)
        self.ids = [
            i
            for i, (kpts, *_) in self.targets.items()
            if not skip_empty or len(kpts) or (negatives and i in self.annotated)
        ]
        if check_images:
            self._check_images()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        path = self.image_path(image_id)
        image = read_rgb(path)
        self._check_size(image_id, path, image)
        keypoints, boxes, area = self.targets[image_id]
        size = torch.tensor([image.height, image.width])
        target = {
            "keypoints": torch.from_numpy(keypoints).clone(),
            "boxes": torch.from_numpy(boxes).clone(),
            "area": torch.from_numpy(area).clone(),
            "iscrowd": torch.zeros(len(area), dtype=torch.int64),
            "image_id": image_id,
            "orig_size": size,
            "size": size.clone(),
        }
        target = self._inside(target, image_id)
        if self.transforms is None:
            return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), target
        return self.transforms(image, target)

    def _inside(self, target: dict, image_id) -> dict:
        """The target with labels outside the image dropped, as a crop drops them (with one warning
        per dataset: the annotation file is wrong there)."""
        h, w = target["size"].tolist()
        kept = keep_inside(target, h, w)
        dropped = int((target["keypoints"][..., 2] > 0).sum() - (kept["keypoints"][..., 2] > 0).sum())
        if dropped and not self._warned_outside:
            self._warned_outside = True
            warnings.warn(
                f"{self.ann_file}: image {image_id} has {dropped} labelled keypoint(s) outside its {w} x {h} "
                "pixels; they are treated as unlabelled (a person left without any is dropped)",
                stacklevel=3,
            )
        return kept

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self.images[image_id]["file_name"]

    def _people(self, annotations: list[dict]):
        """Non-crowd people with a labelled keypoint among one image's annotations: keypoints [G, K, 3],
        boxes [G, 4], area [G]."""
        kpts, boxes, areas = [], [], []
        for ann in annotations:
            k = np.asarray(ann["keypoints"], dtype=np.float32).reshape(self.num_keypoints, 3)
            if ann.get("iscrowd", 0) or not (k[:, 2] > 0).any():
                continue
            k[k[:, 2] <= 0] = 0.0
            x, y, w, h = ann.get("bbox") or keypoint_box(k)
            k[k[:, 2] > 0, :2] += PIXEL_CENTRE
            kpts.append(k)
            boxes.append([x, y, x + w, y + h])
            areas.append(ann.get("area") or BOX_AREA_FRACTION * w * h)
        return (
            np.stack(kpts) if kpts else np.zeros((0, self.num_keypoints, 3), np.float32),
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(areas, np.float32),
        )

    def _check_size(self, image_id, path: Path, image: Image.Image) -> None:
        """ValueError naming ``path`` when its pixels are not the ``width`` x ``height`` the annotation
        file lists: its labels would land on other pixels (a resized copy, or a photo stored sideways
        with an EXIF orientation and labelled as a viewer shows it). Width and height swapped alone are
        a known slip of some files (CrowdPose's own train and test files list every image so), which
        leaves the labels on the stored pixels: one warning, and the dataset reads on."""
        listed = (self.images[image_id].get("width"), self.images[image_id].get("height"))
        if None in listed or listed == image.size:
            return
        sideways = image.getexif().get(EXIF_ORIENTATION, 1) in SIDEWAYS
        swapped = listed == image.size[::-1]
        if swapped and not sideways:
            if not self._warned_swapped:
                self._warned_swapped = True
                warnings.warn(
                    f"{self.ann_file} lists image {path} as {listed[0]} x {listed[1]}, its pixels are "
                    f"{image.width} x {image.height}: width and height swapped (read as the pixels are)",
                    stacklevel=3,
                )
            return
        hint = ""
        if sideways and swapped:
            hint = (
                " (its EXIF orientation turns it sideways: the file was probably labelled as a viewer "
                "shows it; save the pixels upright, e.g. with PIL.ImageOps.exif_transpose)"
            )
        raise ValueError(
            f"image {path} is {image.width} x {image.height} pixels, but {self.ann_file} lists it as "
            f"{listed[0]} x {listed[1]}: its labels would land on other pixels{hint}"
        )

    def _check_images(self) -> None:
        """Every listed image exists, has a readable header (PIL reads only the header here) and the
        size the annotation file lists."""
        for image_id in tqdm(self.ids, desc=f"checking {self.image_dir}", disable=len(self.ids) < 5000):
            path = self.image_path(image_id)
            if not path.is_file():
                raise FileNotFoundError(f"image {path} is listed in {self.ann_file} but missing")
            try:
                with Image.open(path) as image:
                    self._check_size(image_id, path, image)
            except UNREADABLE as err:
                raise OSError(f"cannot read image {path} (listed in {self.ann_file}): {err}") from err


def read_json(path: Path, what: str):
    """The parsed JSON file ``path``; a missing or malformed file raises an error naming ``what`` and it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: {path} is a folder, not a file" if path.is_dir() else f"{what}: {path} does not exist"
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: {path} is not valid JSON: {err}") from err


def read_annotations(ann_file: Path, image_keys=("id", "file_name")) -> dict:
    """The parsed annotation JSON, with its structure checked: lists of objects, every image with
    ``image_keys``, image ids all integers or all strings, none twice (annotations would attach to the
    wrong image), ``width`` and ``height`` whole numbers > 0 where given."""
    data = read_json(ann_file, "ann_file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"ann_file: {ann_file} has no 'images' list (not a COCO annotation file)")
    if not isinstance(data.get("annotations"), list):
        raise ValueError(f"ann_file: {ann_file} has no 'annotations' list (not a COCO annotation file)")
    for key in ("annotations", "categories"):
        entries = data.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise ValueError(
                f"ann_file: {ann_file} has '{key}' that are not a list of objects: {entries!r:.200}"
            )
    image_ids = set()
    for image in data["images"]:
        if not isinstance(image, dict) or any(key not in image for key in image_keys):
            keys = " or ".join(map(repr, image_keys))
            raise ValueError(f"ann_file: {ann_file} has an image without {keys}: {image!r:.200}")
        if not isinstance(image["id"], int | str) or isinstance(image["id"], bool):
            raise ValueError(
                f"ann_file: {ann_file} has an image id that is not an integer or a string: {image!r:.200}"
            )
        if image["id"] in image_ids:
            raise ValueError(f"ann_file: {ann_file} lists image id {image['id']} twice")
        for side in ("width", "height"):  # optional; checked against the pixels when given
            if image.get(side) is not None and not (whole_number(image[side]) and image[side] > 0):
                raise ValueError(
                    f"ann_file: {ann_file}: image {image['id']!r} has {side} {image[side]!r:.100}, "
                    "expected a whole number > 0"
                )
        image_ids.add(image["id"])
    if len({type(image_id) for image_id in image_ids}) > 1:  # the dataset and COCOeval sort them
        raise ValueError(f"ann_file: {ann_file} has integer and string image ids; use one kind")
    return data


def _keypoint_category(data: dict) -> dict | None:
    """The category that names keypoints (COCO's person), if the file has one."""
    return next((c for c in data.get("categories", []) if c.get("keypoints")), None)


def keypoint_category_id(data: dict):
    """The id results are scored under: the category that names keypoints, else the file's only
    category, else 1 (the dataset reads every annotation that has keypoints, whatever its category)."""
    category, categories = _keypoint_category(data), data.get("categories", [])
    if category is None and len(categories) == 1:
        category = categories[0]
    return category.get("id", 1) if category else 1


def num_keypoints(data: dict, ann_file: Path) -> int:
    """K of a parsed annotation file: the person category's keypoint names (else the first
    annotation); ValueError naming ``ann_file`` for an annotation without 3 * K finite keypoint values,
    with a bbox that is not 4 finite numbers, an area that is not a finite number >= 0 (null or 0 is
    read as none: :data:`BOX_AREA_FRACTION` of the box), an ``iscrowd`` not 0 or 1, a
    ``num_keypoints`` not a whole number >= 0, or 0 for a person with labelled keypoints or not 0 for
    one without (COCOeval ignores a person whose count is 0, whom training would learn), a
    ``category_id`` that ``categories`` does not list (COCOeval scores only those), or of an unknown
    image."""
    category = _keypoint_category(data)
    anns = data["annotations"]
    if category:
        k = len(category["keypoints"])
    elif anns and "keypoints" in anns[0]:
        k = len(anns[0]["keypoints"]) // 3
    else:
        raise ValueError(f"ann_file: {ann_file} names no keypoints (no category 'keypoints', no annotations)")
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {category.get("id") for category in data.get("categories", [])}
    for ann in anns:
        where = f"ann_file: {ann_file}: annotation {ann.get('id')}"
        kpts, bbox = ann.get("keypoints"), ann.get("bbox")
        if not isinstance(kpts, list) or len(kpts) != 3 * k:
            got = len(kpts) if isinstance(kpts, list) else type(kpts).__name__
            raise ValueError(f"{where} has {got} keypoint values, expected {3 * k}")
        if not finite_numbers(kpts):
            raise ValueError(f"{where} has keypoint values that are not finite numbers")
        if bbox and not (isinstance(bbox, list) and len(bbox) == 4 and finite_numbers(bbox)):
            raise ValueError(f"{where} has bbox {bbox!r:.100}, expected 4 finite numbers [x, y, w, h]")
        area = ann.get("area")
        if area is not None and not (finite_numbers([area]) and area >= 0):
            raise ValueError(f"{where} has area {area!r:.100}, expected a finite number >= 0")
        if ann.get("iscrowd", 0) not in (0, 1):  # "0" would be a crowd to COCOeval, and ignored
            raise ValueError(f"{where} has iscrowd {ann['iscrowd']!r:.100}, expected 0 or 1")
        labelled = sum(v > 0 for v in kpts[2::3])
        count = ann.get("num_keypoints", labelled)
        if not (whole_number(count) and count >= 0):
            raise ValueError(f"{where} has num_keypoints {count!r:.100}, expected a whole number >= 0")
        if (count == 0) != (labelled == 0):  # COCOeval ignores the person exactly when it is 0
            raise ValueError(
                f"{where} has num_keypoints {count}, but {labelled} of its keypoints are labelled (v > 0)"
            )
        if category_ids and "category_id" in ann and ann["category_id"] not in category_ids:
            raise ValueError(
                f"{where} has category_id {ann['category_id']!r:.100}, which 'categories' does not list "
                f"({sorted(category_ids, key=str)})"
            )
        image_id = ann.get("image_id")
        if not isinstance(image_id, int | str) or isinstance(image_id, bool) or image_id not in image_ids:
            raise ValueError(f"{where} refers to unknown image_id {image_id!r:.100}")
    return k


def finite_numbers(values) -> bool:
    """Whether every one of ``values`` is a finite real number (not null, a string, a bool, NaN or inf)."""
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def whole_number(value) -> bool:
    """Whether ``value`` is a finite real number without a fraction (17, or 17.0 as numpy writes it)."""
    return finite_numbers([value]) and float(value).is_integer()


def keypoint_box(keypoints: np.ndarray) -> list[float]:
    """xywh box (continuous pixels) around the pixels of the labelled keypoints (file labels: pixel
    indices), for annotations without a ``bbox``."""
    xy = keypoints[keypoints[:, 2] > 0, :2]
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0) + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
