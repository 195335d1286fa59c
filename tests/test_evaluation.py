"""jcra.evaluation: stats against pinned pycocotools numbers and a direct COCOeval, CrowdPose sigmas
and crowd levels, perfect and empty results, and the errors bad input gives."""

import contextlib
import copy
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jcra import evaluate_keypoints
from jcra.evaluation import CROWD_LEVELS, METRIC_NAMES, format_metrics, load_ground_truth, strict_json
from kernels.oks import CROWDPOSE_SIGMAS
from tests.shared_data import shared_path


def _examples(name: str):
    return shared_path("xtcocoapi-examples", "annotations", name)


def _perfect_results(gt: dict) -> list[dict]:
    """Every non-crowd annotation with a labelled keypoint, as a result of score 1."""
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "keypoints": a["keypoints"],
            "score": 1.0,
        }
        for a in gt["annotations"]
        if not a["iscrowd"] and a["num_keypoints"] > 0
    ]


def _direct_stats(gt: dict, results: list[dict], sigmas, img_ids=None) -> np.ndarray:
    """COCOeval run by hand, the reference for evaluate_keypoints."""
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        coco_eval = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iouType="keypoints")
        coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def _crowdpose_gt_with_area() -> dict:
    """The CrowdPose example GT with crowdposetools' area (0.53 of the box) filled in."""
    gt = json.loads(_examples("example_crowdpose_val.json").read_text())
    for ann in gt["annotations"]:
        ann["area"] = 0.53 * ann["bbox"][2] * ann["bbox"][3]
    return gt


# ---------------------------------------------------------------------------------------------------
# Real annotations and predictions
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_path", [True, False], ids=["path", "list"])
def test_coco_example_matches_pinned_stats(as_path):
    expected = json.loads(shared_path("xtcocoapi-examples", "expected_stats.json").read_text())
    preds_file = _examples("example_coco_preds.json")
    results = preds_file if as_path else json.loads(preds_file.read_text())
    before = copy.deepcopy(results)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a valid COCO file: nothing of ours to warn of
        metrics = evaluate_keypoints(results, _examples("example_coco_val.json"))

    assert list(metrics) == list(METRIC_NAMES)  # no crowdIndex in COCO images: no crowd levels
    np.testing.assert_allclose(list(metrics.values()), expected["stats"], rtol=0, atol=1e-9)
    assert results == before  # the caller's records are not written into


def test_crowdpose_example_uses_crowdpose_sigmas_and_levels():
    gt = _crowdpose_gt_with_area()
    preds = json.loads(_examples("example_crowdpose_preds.json").read_text())

    metrics = evaluate_keypoints(preds, _examples("example_crowdpose_val.json"))

    assert list(metrics) == [*METRIC_NAMES, *CROWD_LEVELS]
    assert all(0.0 <= value <= 1.0 for value in metrics.values()), metrics
    expected = _direct_stats(gt, preds, CROWDPOSE_SIGMAS.numpy())
    np.testing.assert_allclose([metrics[n] for n in METRIC_NAMES], expected, rtol=0, atol=1e-12)

    levels = {
        "AP_easy": [im["id"] for im in gt["images"] if im["crowdIndex"] < 0.2],
        "AP_medium": [im["id"] for im in gt["images"] if 0.2 <= im["crowdIndex"] < 0.8],
        "AP_hard": [im["id"] for im in gt["images"] if im["crowdIndex"] >= 0.8],
    }
    for name, ids in levels.items():
        assert ids, f"the example has no {name} image"
        expected_ap = _direct_stats(gt, preds, CROWDPOSE_SIGMAS.numpy(), ids)[0]
        assert metrics[name] == pytest.approx(expected_ap, abs=1e-12), name

    wider = evaluate_keypoints(preds, _examples("example_crowdpose_val.json"), sigmas=2 * CROWDPOSE_SIGMAS)
    assert wider["AP"] > metrics["AP"]  # a wider tolerance can only raise OKS


@pytest.mark.parametrize("name", ["example_coco_val.json", "example_crowdpose_val.json"])
def test_perfect_results_score_one(name):
    ann_file = _examples(name)
    metrics = evaluate_keypoints(_perfect_results(json.loads(ann_file.read_text())), ann_file)
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["AR"] == pytest.approx(1.0, abs=1e-9)
    for level in CROWD_LEVELS:
        if level in metrics:
            assert metrics[level] == pytest.approx(1.0, abs=1e-9), level


def test_empty_results_give_zeros():
    coco = evaluate_keypoints([], _examples("example_coco_val.json"))
    assert coco == dict.fromkeys(METRIC_NAMES, 0.0)
    crowdpose = evaluate_keypoints([], _examples("example_crowdpose_val.json"))
    assert crowdpose == dict.fromkeys([*METRIC_NAMES, *CROWD_LEVELS], 0.0)


def test_empty_results_score_like_any_results_where_there_is_no_ground_truth(tmp_path):
    """Without a single person in the ground truth every metric is undefined (COCOeval's -1), whether
    or not there are results: empty results do not score 0 there."""
    gt = _tiny_gt(17)
    results = _perfect_results(gt)
    gt["annotations"] = []
    ann_file = _write(tmp_path, "gt.json", gt)
    assert (
        evaluate_keypoints([], ann_file)
        == evaluate_keypoints(results, ann_file)
        == dict.fromkeys(METRIC_NAMES, -1.0)
    )


def test_format_metrics_is_one_line():
    line = format_metrics({"AP": 0.86089, "AP50": 1.0})
    assert line == "AP 0.861 | AP50 1.000"


# ---------------------------------------------------------------------------------------------------
# Small synthetic files: other K, crowd levels with an empty subset, bad input
# ---------------------------------------------------------------------------------------------------


def _tiny_gt(num_keypoints: int, crowd_indices=None) -> dict:
    """One labelled person of ``num_keypoints`` visible keypoints per image (ids 1, 2, ...)."""
    crowd_indices = crowd_indices or [None]
    images, annotations = [], []
    for i, crowd_index in enumerate(crowd_indices, start=1):
        image = {"id": i, "width": 100, "height": 100}
        if crowd_index is not None:
            image["crowdIndex"] = crowd_index
        images.append(image)
        keypoints = [v for k in range(num_keypoints) for v in (10.0 + 5 * k, 20.0 + 3 * k, 2)]
        annotations.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "iscrowd": 0,
                "num_keypoints": num_keypoints,
                "keypoints": keypoints,
                "bbox": [10.0, 20.0, 5.0 * num_keypoints, 3.0 * num_keypoints],
                "area": 0.53 * 15.0 * num_keypoints**2,  # crowdposetools' area, which CrowdPose scores with
            }
        )
    categories = [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(num_keypoints)]}]
    return {"images": images, "annotations": annotations, "categories": categories}


def _write(tmp_path, name, payload) -> Path:
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_other_keypoint_count_needs_sigmas(tmp_path):
    gt = _tiny_gt(5)
    ann_file = _write(tmp_path, "gt.json", gt)
    with pytest.raises(ValueError, match="sigmas"):
        evaluate_keypoints(_perfect_results(gt), ann_file)
    with pytest.raises(ValueError, match="sigmas"):
        evaluate_keypoints(_perfect_results(gt), ann_file, sigmas=[0.05] * 4)
    with pytest.raises(ValueError, match="sigmas must be 5 positive values"):
        evaluate_keypoints(_perfect_results(gt), ann_file, sigmas=[0.05] * 4 + [0.0])  # OKS would be 0/0
    metrics = evaluate_keypoints(_perfect_results(gt), ann_file, sigmas=[0.05] * 5)
    assert metrics["AP"] == pytest.approx(1.0)


def test_crowd_level_without_images_is_nan(tmp_path):
    gt = _tiny_gt(14, crowd_indices=[0.05, 0.9])
    metrics = evaluate_keypoints(_perfect_results(gt), _write(tmp_path, "gt.json", gt))
    assert metrics["AP_easy"] == pytest.approx(1.0)
    assert math.isnan(metrics["AP_medium"])
    assert metrics["AP_hard"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("crowd_indices", "level"),
    [([0.0, 0.15, 0.1999], "AP_easy"), ([0.2, 0.5, 0.7999], "AP_medium"), ([0.8, 0.9, 1.0], "AP_hard")],
)
def test_crowd_levels_follow_crowdposetools_bounds(tmp_path, crowd_indices, level):
    """crowdposetools' levels: easy below 0.2, medium from 0.2 to below 0.8, hard from 0.8."""
    gt = _tiny_gt(14, crowd_indices=crowd_indices)
    metrics = evaluate_keypoints(_perfect_results(gt), _write(tmp_path, "gt.json", gt))
    for name in CROWD_LEVELS:
        assert metrics[name] == pytest.approx(1.0) if name == level else math.isnan(metrics[name])


def test_crowd_levels_come_with_some_images_indexed(tmp_path):
    """Images without a crowd index fall in no level; the others still give theirs."""
    gt = _tiny_gt(14, crowd_indices=[0.05, None])
    metrics = evaluate_keypoints(_perfect_results(gt), _write(tmp_path, "gt.json", gt))
    assert list(metrics) == [*METRIC_NAMES, *CROWD_LEVELS]
    assert metrics["AP_easy"] == pytest.approx(1.0)


@pytest.mark.parametrize("crowd_index", ["0.3", True, 1.5, -0.1, [0.3]])
def test_crowd_index_outside_zero_to_one_is_named(tmp_path, crowd_index):
    """A string failed after inference (in the binning); true, 1.5 or -1 were binned without a word."""
    gt = _tiny_gt(14, crowd_indices=[0.05, crowd_index])
    with pytest.raises(
        ValueError, match=r"gt\.json: image 2 has crowdIndex .*, expected a number in \[0, 1\]"
    ):
        load_ground_truth(_write(tmp_path, "gt.json", gt))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("iscrowd", "0", "iscrowd '0', expected 0 or 1"), ("iscrowd", 2, "iscrowd 2"),
     ("num_keypoints", "0", "num_keypoints '0', expected a whole number >= 0"),
     ("num_keypoints", -1, "num_keypoints -1"), ("num_keypoints", 1.5, "num_keypoints 1.5")],
)  # fmt: skip
def test_iscrowd_and_num_keypoints_of_another_type_are_named(tmp_path, key, value, expected):
    """COCOeval reads a truthy "0" as a crowd and ignores the person: every metric became -1."""
    gt = _tiny_gt(17)
    results = _perfect_results(gt)
    gt["annotations"][0][key] = value
    with pytest.raises(ValueError, match=rf"gt\.json: annotation 1 has {expected}"):
        evaluate_keypoints(results, _write(tmp_path, "gt.json", gt))


@pytest.mark.parametrize(("count", "labelled"), [(0, 17), (5, 0)])
def test_num_keypoints_must_say_whether_the_person_is_labelled(tmp_path, count, labelled):
    """COCOeval ignores a person whose num_keypoints is 0: with labelled keypoints (which training
    learns) every metric was -1 without a word; a count without labels made a person no result can match."""
    gt = _tiny_gt(17)
    results = _perfect_results(gt)
    gt["annotations"][0]["num_keypoints"] = count
    if not labelled:
        gt["annotations"][0]["keypoints"] = [0.0] * 51
    with pytest.raises(
        ValueError,
        match=rf"annotation 1 has num_keypoints {count}, but {labelled} of its keypoints are labelled",
    ):
        evaluate_keypoints(results, _write(tmp_path, "gt.json", gt))


def test_num_keypoints_off_by_some_is_read_as_the_file_says(tmp_path):
    """COCOeval only asks whether the count is 0: a file that miscounts (16 for 17) still scores."""
    gt = _tiny_gt(17)
    gt["annotations"][0]["num_keypoints"] = 16
    assert evaluate_keypoints(_perfect_results(gt), _write(tmp_path, "gt.json", gt))["AP"] == pytest.approx(
        1.0
    )


def test_annotation_of_an_unlisted_category_is_named(tmp_path):
    """COCOeval scores the listed categories only: a person under another id was never evaluated."""
    gt = _tiny_gt(17)
    gt["annotations"][0]["category_id"] = 2
    with pytest.raises(
        ValueError, match=r"annotation 1 has category_id 2, which 'categories' does not list \(\[1\]\)"
    ):
        evaluate_keypoints(_perfect_results(gt), _write(tmp_path, "gt.json", gt))


def test_a_file_without_images_is_named(tmp_path):
    gt = {"images": [], "annotations": [], "categories": _tiny_gt(17)["categories"]}
    with pytest.raises(ValueError, match=r"gt\.json lists no images: nothing to evaluate"):
        evaluate_keypoints([], _write(tmp_path, "gt.json", gt))


def test_whole_numbers_stored_as_floats_are_read_as_ids_and_counts(tmp_path):
    """numpy and pandas write 785.0 and 17.0; COCOeval reads them as 785 and 17."""
    gt = _tiny_gt(17, crowd_indices=[None, None])
    results = _perfect_results(gt)
    for ann in gt["annotations"]:
        ann["num_keypoints"] = float(ann["num_keypoints"])
    for record in results:
        record["image_id"] = float(record["image_id"])
    assert evaluate_keypoints(results, _write(tmp_path, "gt.json", gt))["AP"] == pytest.approx(1.0)


def test_strict_json_writes_every_non_finite_number_as_null():
    metrics = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "AP": 0.5, "count": 3}
    assert strict_json(metrics) == {"nan": None, "inf": None, "-inf": None, "AP": 0.5, "count": 3}


def test_missing_files_are_named(tmp_path):
    gt = _tiny_gt(17)
    with pytest.raises(FileNotFoundError, match="ann_file.*nope.json"):
        evaluate_keypoints([], tmp_path / "nope.json")
    ann_file = _write(tmp_path, "gt.json", gt)
    with pytest.raises(FileNotFoundError, match="results.*preds.json"):
        evaluate_keypoints(tmp_path / "preds.json", ann_file)


def test_malformed_json_is_named(tmp_path):
    bad = _write(tmp_path, "bad.json", '{"images": [')
    with pytest.raises(ValueError, match="bad.json"):
        evaluate_keypoints([], bad)
    not_coco = _write(tmp_path, "list.json", [1, 2])
    with pytest.raises(ValueError, match="list.json"):
        evaluate_keypoints([], not_coco)
    no_categories = {k: v for k, v in _tiny_gt(17).items() if k != "categories"}
    with pytest.raises(ValueError, match="no_categories.json.*'categories' list"):
        evaluate_keypoints([], _write(tmp_path, "no_categories.json", no_categories))
    ann_file = _write(tmp_path, "gt.json", _tiny_gt(17))
    with pytest.raises(ValueError, match="bad.json"):
        evaluate_keypoints(bad, ann_file)


def test_bad_records_are_named(tmp_path):
    gt = _tiny_gt(17, crowd_indices=[None, None])
    ann_file = _write(tmp_path, "gt.json", gt)
    results = _perfect_results(gt)
    short = copy.deepcopy(results)
    short[1]["keypoints"] = short[1]["keypoints"][:-3]
    with pytest.raises(ValueError, match=r"results\[1\] has keypoints 48, expected a list of 3 \* K = 51"):
        evaluate_keypoints(short, ann_file)
    as_arrays = [dict(record, keypoints=np.asarray(record["keypoints"])) for record in results]
    assert evaluate_keypoints(as_arrays, ann_file)["AP"] == pytest.approx(1.0)  # numpy arrays score as lists
    for keypoints in (None, "abc"):
        odd = copy.deepcopy(results)
        odd[1]["keypoints"] = keypoints
        with pytest.raises(ValueError, match=r"results\[1\] has keypoints (None|'abc'), expected a list"):
            evaluate_keypoints(odd, ann_file)
    unknown = copy.deepcopy(results)
    unknown[0]["image_id"] = 999
    with pytest.raises(ValueError, match="image_ids.*999"):
        evaluate_keypoints(unknown, ann_file)
    for image_id in ([1], None, 1.5, True):
        odd = copy.deepcopy(results)
        odd[1]["image_id"] = image_id
        with pytest.raises(ValueError, match=r"results\[1\] has image_id .*, not an integer or a string"):
            evaluate_keypoints(odd, ann_file)
    no_score = copy.deepcopy(results)
    del no_score[0]["score"]
    with pytest.raises(ValueError, match=r"results\[0\].*score"):
        evaluate_keypoints(no_score, ann_file)


@pytest.mark.parametrize(
    ("key", "value"),
    [("keypoints", math.nan), ("keypoints", math.inf), ("keypoints", None), ("score", math.nan)],
    ids=["nan-keypoint", "inf-keypoint", "null-keypoint", "nan-score"],
)
@pytest.mark.parametrize("as_path", [True, False], ids=["path", "list"])
def test_non_finite_results_are_named(tmp_path, key, value, as_path):
    gt = _tiny_gt(17, crowd_indices=[None, None])
    results = copy.deepcopy(_perfect_results(gt))
    if key == "keypoints":
        results[1]["keypoints"][4] = value
    else:
        results[1]["score"] = value
    where = r"results\[1\] of .*preds\.json" if as_path else r"results\[1\]"
    with pytest.raises(ValueError, match=f"{where} has keypoints or a score that are not finite numbers"):
        evaluate_keypoints(
            _write(tmp_path, "preds.json", results) if as_path else results, _write(tmp_path, "gt.json", gt)
        )


def test_unknown_category_is_named(tmp_path):
    gt = _tiny_gt(17)
    results = [dict(record, category_id=7) for record in _perfect_results(gt)]
    with pytest.raises(ValueError, match=r"category_ids not in ann_file .*gt\.json: \[7\]"):
        evaluate_keypoints(results, _write(tmp_path, "gt.json", gt))


@pytest.mark.parametrize("which", ["images", "annotations"])
def test_duplicate_ids_are_named(tmp_path, which):
    gt = _tiny_gt(17, crowd_indices=[None, None])
    gt[which][1]["id"] = 1
    if which == "images":
        gt["annotations"][1]["image_id"] = 1
    message = "lists image id 1 twice" if which == "images" else "annotation id 1 is used twice"
    with pytest.raises(ValueError, match=rf"gt\.json:? {message}"):
        evaluate_keypoints(_perfect_results(gt), _write(tmp_path, "gt.json", gt))


def test_missing_num_keypoints_and_bbox_are_filled(tmp_path):
    """As though the file had num_keypoints = count of v > 0 and bbox = the labelled keypoints' extent."""
    gt = _tiny_gt(17, crowd_indices=[None, None, None])
    unlabelled = gt["annotations"][2]
    unlabelled["keypoints"][2::3] = [0] * 17
    unlabelled["num_keypoints"] = 0
    for ann in gt["annotations"][:2]:
        xy = np.asarray(ann["keypoints"]).reshape(17, 3)[:, :2]
        ann["bbox"] = [*xy.min(0).tolist(), *(xy.max(0) - xy.min(0)).tolist()]
    results = _perfect_results(gt)
    for record, shift in zip(results, (1.0, 4.0), strict=True):
        record["keypoints"] = [v + shift if i % 3 < 2 else v for i, v in enumerate(record["keypoints"])]
    expected = evaluate_keypoints(results, _write(tmp_path, "full.json", gt))
    for ann in gt["annotations"]:
        del ann["num_keypoints"]
        if ann is not unlabelled:
            del ann["bbox"]

    assert evaluate_keypoints(results, _write(tmp_path, "gt.json", gt)) == expected
    assert 0.0 < expected["AP"] < 1.0
    del unlabelled["bbox"]  # then it marks no place: left out, as no result falls on its image
    assert evaluate_keypoints(results, _write(tmp_path, "gt.json", gt)) == expected


def test_a_person_without_bbox_or_area_is_scored_on_its_keypoints_box(tmp_path):
    """Neither bbox nor area: OKS takes 0.53 of the box around the labelled keypoints' pixels, as the
    dataset trains with (keypoints from x 10 to 90, y 20 to 68: a box of 81 x 49 pixels)."""
    gt = _tiny_gt(17, crowd_indices=[None, None])
    results = _perfect_results(gt)
    for record, shift in zip(results, (2.0, 5.0), strict=True):  # OKS neither 0 nor 1
        record["keypoints"] = [v + shift if i % 3 < 2 else v for i, v in enumerate(record["keypoints"])]
    for ann in gt["annotations"]:
        ann["bbox"], ann["area"] = [10.0, 20.0, 81.0, 49.0], 0.53 * 81 * 49
    expected = evaluate_keypoints(results, _write(tmp_path, "full.json", gt))
    for ann in gt["annotations"]:
        del ann["bbox"], ann["area"]
    assert evaluate_keypoints(results, _write(tmp_path, "gt.json", gt)) == expected
    assert 0.0 < expected["AP"] < 1.0


def test_missing_annotation_and_category_ids_are_filled(tmp_path):
    """Annotations without an id or a category are numbered and put in the keypoint category as the
    others are."""
    gt = _tiny_gt(17, crowd_indices=[None, None, None])
    results = _perfect_results(gt)
    for record, shift in zip(results, (1.0, 4.0, 9.0), strict=True):  # one AP over the three
        record["keypoints"] = [v + shift if i % 3 < 2 else v for i, v in enumerate(record["keypoints"])]
    expected = evaluate_keypoints(results, _write(tmp_path, "full.json", gt))
    gt["annotations"][0]["id"] = 2
    for ann in gt["annotations"][1:]:
        del ann["id"], ann["category_id"]  # read as the keypoint category's
    assert evaluate_keypoints(results, _write(tmp_path, "gt.json", gt)) == expected
    assert 0.0 < expected["AP"] < 1.0


@pytest.mark.parametrize("ids", [[0, 1, 2], ["p0", "p1", "p2"]], ids=["from-0", "strings"])
def test_annotation_ids_of_any_form_score_as_numbered_ones(tmp_path, ids):
    """COCOeval notes a match by the person's id and reads it as a flag: with id 0 a perfect result
    counted as a false positive (AP 0.81 here, no error), and string ids failed once a result
    matched, after the whole inference pass."""
    gt = _tiny_gt(17, crowd_indices=[None, None, None])
    results = _perfect_results(gt)
    for ann, ann_id in zip(gt["annotations"], ids, strict=True):
        ann["id"] = ann_id
    metrics = evaluate_keypoints(results, _write(tmp_path, "gt.json", gt))
    assert (metrics["AP"], metrics["AR"]) == (1.0, 1.0)


def test_people_of_every_listed_category_are_scored_in_the_results_one(tmp_path):
    """The dataset trains on people of any category and the results name the keypoint category:
    everyone is scored in it. COCOeval averaged over the file's categories (AP 0.45 here), and a file
    without categories was refused only after inference."""
    gt = _tiny_gt(17, crowd_indices=[None, None, None])
    results = _perfect_results(gt)
    gt["categories"].append({"id": 2, "name": "other"})
    gt["annotations"][0]["category_id"] = 2
    metrics = evaluate_keypoints(results, _write(tmp_path, "two.json", gt))
    assert (metrics["AP"], metrics["AR"]) == (1.0, 1.0)
    gt["categories"] = []
    for ann in gt["annotations"]:
        del ann["category_id"]
    metrics = evaluate_keypoints(results, _write(tmp_path, "none.json", gt))
    assert (metrics["AP"], metrics["AR"]) == (1.0, 1.0)


def test_crowdpose_areas_other_than_crowdposetools_are_warned_of(tmp_path):
    """A CrowdPose file given other areas is scored with them, where crowdposetools takes 0.53 of the
    box (the example's AP_hard moves from 0.41 to 0.57 with the whole box): said, not silent."""
    gt = _tiny_gt(17, crowd_indices=[0.1, 0.5, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_ground_truth(_write(tmp_path, "crowdposetools.json", gt))
    gt["annotations"][1]["area"] = 15.0 * 17**2  # the whole box
    with pytest.warns(UserWarning, match="other than 0.53 of the box .* not comparable"):
        load_ground_truth(_write(tmp_path, "box.json", gt))


def test_a_result_category_id_that_is_no_id_is_named(tmp_path):
    gt = _tiny_gt(17, crowd_indices=[None, None, None])
    results = [dict(record, category_id=[1]) for record in _perfect_results(gt)]
    with pytest.raises(ValueError, match=r"results\[0\] has category_id \[1\], not an integer or a string"):
        evaluate_keypoints(results, _write(tmp_path, "gt.json", gt))


def test_missing_iscrowd_counts_as_not_crowd(tmp_path):
    """The dataset reads a missing iscrowd as 0; evaluation must too (COCOeval indexes it)."""
    gt = _tiny_gt(17, crowd_indices=[None, None, None])
    assert not any(ann["iscrowd"] for ann in gt["annotations"])
    results = _perfect_results(gt)
    expected = evaluate_keypoints(results, _write(tmp_path, "full.json", gt))
    for ann in gt["annotations"]:
        del ann["iscrowd"]
    assert evaluate_keypoints(results, _write(tmp_path, "gt.json", gt)) == expected


@pytest.mark.parametrize("area", [None, 0], ids=["null", "zero"])
def test_null_or_zero_area_is_read_as_missing(tmp_path, area):
    """As the dataset reads it: the share of the box; COCOeval would take 0 (AP 0) or fail on null."""
    gt = _tiny_gt(17, crowd_indices=[None, None])
    results = _perfect_results(gt)
    for record, shift in zip(results, (1.0, 3.0), strict=True):
        record["keypoints"] = [v + shift if i % 3 < 2 else v for i, v in enumerate(record["keypoints"])]
    for ann in gt["annotations"]:
        del ann["area"]
    expected = evaluate_keypoints(results, _write(tmp_path, "missing.json", gt))
    assert 0.0 < expected["AP"] < 1.0
    for ann in gt["annotations"]:
        ann["area"] = area
    assert evaluate_keypoints(results, _write(tmp_path, "gt.json", gt)) == expected
