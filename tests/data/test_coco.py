"""CocoKeypoints on real COCO-format files (../shared/data) and on every kind of bad input."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from jcra.data import CocoKeypoints
from jcra.data.coco import BOX_AREA_FRACTION
from jcra.data.images import read_rgb
from tests.shared_data import shared_path

COCO_MINI = ("coco-mini", "annotations/person_keypoints_train2017.json", "train2017")


def coco_mini():
    root = shared_path(COCO_MINI[0])
    return root / COCO_MINI[1], root / COCO_MINI[2]


def test_coco_mini_counts_and_crowd_handling():
    ann_file, image_dir = coco_mini()
    raw = json.loads(ann_file.read_text())
    dataset = CocoKeypoints(ann_file, image_dir)
    assert len(dataset) == len(raw["images"]) == 80
    people = sum(len(kpts) for kpts, _, _ in dataset.targets.values())
    expected = [
        a for a in raw["annotations"] if not a["iscrowd"] and any(v > 0 for v in a["keypoints"][2::3])
    ]
    assert people == len(expected) == 86  # 172 annotations: 5 crowd regions, 81 without keypoints
    assert sum(a["iscrowd"] for a in raw["annotations"]) == 5
    with_people = sum(1 for kpts, _, _ in dataset.targets.values() if len(kpts))
    assert len(CocoKeypoints(ann_file, image_dir, skip_empty=True)) == with_people < 80
    # PETR's negatives: images whose annotations are only crowds or people without labelled keypoints
    annotated = {a["image_id"] for a in raw["annotations"]}
    negatives = CocoKeypoints(ann_file, image_dir, skip_empty=True, negatives=True)
    assert sorted(negatives.ids) == sorted(annotated) and with_people < len(annotated) <= 80
    assert sum(len(negatives.targets[i][0]) == 0 for i in negatives.ids) == len(annotated) - with_people


def test_item_matches_the_annotation_file():
    ann_file, image_dir = coco_mini()
    raw = json.loads(ann_file.read_text())
    dataset = CocoKeypoints(ann_file, image_dir)
    index = next(i for i, image_id in enumerate(dataset.ids) if len(dataset.targets[image_id][0]) >= 2)
    image, target = dataset[index]
    info = next(im for im in raw["images"] if im["id"] == target["image_id"])
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, info["height"], info["width"])
    assert target["orig_size"].tolist() == target["size"].tolist() == [info["height"], info["width"]]
    anns = [
        a
        for a in raw["annotations"]
        if a["image_id"] == info["id"] and not a["iscrowd"] and max(a["keypoints"][2::3]) > 0
    ]
    expected = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).view(-1, 17, 3)
    expected[expected[..., 2] == 0] = 0
    expected[..., :2] += 0.5 * (expected[..., 2:] > 0)  # labels are pixel indices; targets their centres
    torch.testing.assert_close(target["keypoints"], expected)
    torch.testing.assert_close(target["area"], torch.tensor([a["area"] for a in anns], dtype=torch.float32))
    assert target["iscrowd"].tolist() == [0] * len(anns)


@pytest.mark.parametrize(
    ("folder", "ann", "num_keypoints"),
    [
        ("mmpose-testdata/crowdpose", "test_crowdpose.json", 14),
        ("mmpose-testdata/ochuman", "test_ochuman.json", 17),
        ("mmpose-testdata/coco", "test_coco.json", 17),
    ],
)
def test_other_layouts_load(folder, ann, num_keypoints):
    root = shared_path(folder)
    dataset = CocoKeypoints(root / ann, root)
    assert dataset.num_keypoints == num_keypoints
    _, target = dataset[0]
    assert target["keypoints"].shape[1:] == (num_keypoints, 3)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def tiny(tmp_path):
    """A valid two-image dataset in tmp_path to break in different ways."""
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (20, 10)).save(tmp_path / name)
    keypoints = np.zeros((17, 3))
    keypoints[0] = (5, 5, 2)
    data = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"id": 7, "image_id": 1, "keypoints": keypoints.ravel().tolist(), "area": 4.0}],
        "categories": [{"id": 1, "name": "person"}],
    }
    return tmp_path, data


def write(tmp_path, data):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_tiny_is_valid(tiny):
    tmp_path, data = tiny
    dataset = CocoKeypoints(write(tmp_path, data), tmp_path)
    assert len(dataset) == 2
    _, target = dataset[0]
    assert target["keypoints"].shape == (1, 17, 3) and target["boxes"].shape == (1, 4)


def test_the_parsed_file_is_not_kept(tiny):
    """The dataset keeps its targets, not the parsed annotations (COCO train's polygons, an estimated
    0.8 GB of Python objects, which every forked loader worker would come to copy)."""
    import gc
    import tracemalloc

    tmp_path, data = tiny
    data["annotations"][0]["segmentation"] = [[float(i) for i in range(200_000)]]  # ~6 MB parsed
    path = write(tmp_path, data)
    gc.collect()
    tracemalloc.start()
    try:
        dataset = CocoKeypoints(path, tmp_path, skip_empty=True, negatives=True)
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, f"the dataset holds {kept / 1e6:.1f} MB after reading a 2-annotation file"
    assert dataset.ids == [1] and dataset.annotated == {1}


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ann_file.*nope.json"):
        CocoKeypoints(tmp_path / "nope.json", tmp_path)


@pytest.mark.parametrize(
    ("breakage", "error", "message"),
    [
        ("not json", ValueError, "not valid JSON"),
        ("[]", ValueError, "no 'images' list"),
        ('{"images": []}', ValueError, "no 'annotations' list"),
        ('{"images": [{"id": 1}], "annotations": []}', ValueError, "without 'id' or 'file_name'"),
        ('{"images": [], "annotations": [5]}', ValueError, "'annotations' that are not a list of objects"),
        ('{"images": [], "annotations": [], "categories": null}', ValueError, "'categories' that are not"),
        ('{"images": [], "annotations": [], "categories": ["person"]}', ValueError, "'categories' that are"),
    ],
)
def test_malformed_annotation_file(tmp_path, breakage, error, message):
    path = write(tmp_path, breakage)
    with pytest.raises(error, match=message) as info:
        CocoKeypoints(path, tmp_path)
    assert str(path) in str(info.value)


def test_a_person_without_area_gets_the_share_of_its_box_evaluation_takes(tiny):
    """CrowdPose gives no area: training targets take the one its OKS is scored with, 0.53 of the box."""
    tmp_path, data = tiny
    del data["annotations"][0]["area"]
    data["annotations"][0]["bbox"] = [2.0, 3.0, 10.0, 6.0]
    _, target = CocoKeypoints(write(tmp_path, data), tmp_path)[0]
    assert target["area"].tolist() == [pytest.approx(BOX_AREA_FRACTION * 10.0 * 6.0)]
    assert BOX_AREA_FRACTION == 0.53


def test_a_person_without_bbox_gets_the_box_of_its_labelled_keypoints_pixels(tiny):
    """Labels are pixel indices, so the box runs from the first keypoint's pixel to past the last one's:
    one labelled keypoint is a 1 x 1 box, not an empty one (whose area would leave OKS undefined)."""
    tmp_path, data = tiny
    kpts = np.zeros((17, 3))
    kpts[[0, 5, 9]] = [(10, 8, 2), (15, 2, 1), (1, 1, 0)]  # the unlabelled one is outside (20 x 10 image)
    single = np.zeros((17, 3))
    single[3] = (4, 6, 2)
    data["annotations"] = [
        {"id": 1, "image_id": 1, "keypoints": kpts.ravel().tolist()},
        {"id": 2, "image_id": 1, "keypoints": single.ravel().tolist()},
    ]
    _, target = CocoKeypoints(write(tmp_path, data), tmp_path, check_images=False)[0]
    assert target["boxes"].tolist() == [[10, 2, 16, 9], [4, 6, 5, 7]]
    torch.testing.assert_close(target["area"], torch.tensor([6.0 * 7, 1.0]) * BOX_AREA_FRACTION)


def test_labels_outside_the_image_are_unlabelled_with_a_warning(tiny):
    """A label off the 20 x 10 image would be a target the model cannot reach: it goes, as in a crop,
    and a person left without any goes too."""
    tmp_path, data = tiny
    outside = np.zeros((17, 3))
    outside[0] = (25, 5, 2)  # x past the 20 pixels
    partly = np.zeros((17, 3))
    partly[:2] = [(3, 4, 2), (5, -1, 1)]
    for ann_id, keypoints in ((8, outside), (9, partly)):
        data["annotations"].append(
            {"id": ann_id, "image_id": 1, "keypoints": keypoints.ravel().tolist(), "area": 4.0}
        )
    dataset = CocoKeypoints(write(tmp_path, data), tmp_path)
    with pytest.warns(
        UserWarning, match=r"ann\.json: image 1 has 2 labelled keypoint\(s\) outside its 20 x 10"
    ):
        _, target = dataset[0]
    assert target["keypoints"].shape == (2, 17, 3) and len(target["area"]) == len(target["boxes"]) == 2
    assert target["keypoints"][1, :2].tolist() == [[3.5, 4.5, 2.0], [0.0, 0.0, 0.0]]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tiny):
    from PIL import Image

    tmp_path, data = tiny
    ramp = np.linspace(0, 65535, 20 * 10).round().astype(np.uint16).reshape(10, 20)
    Image.fromarray(ramp).save(tmp_path / "a.png")
    image, _ = CocoKeypoints(write(tmp_path, data), tmp_path)[0]
    expected = torch.from_numpy((ramp / 257.0).round().astype(np.uint8))
    assert torch.equal(image, expected.expand(3, -1, -1))


def test_thirty_two_bit_grayscale_is_scaled_as_sixteen_bit():
    """Some PNG decoders give 16-bit grayscale as PIL's 32-bit mode "I": scaled the same, not clipped."""
    from PIL import Image

    from jcra.data.images import to_rgb

    image = Image.fromarray(np.array([[0, 32767, 65535]], dtype=np.int32))
    assert image.mode == "I"
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 127, 255]


def test_thirty_two_bit_pixels_that_fit_in_8_bits_warn_that_they_come_out_dark():
    """int32 pixels of 0..255 (an 8-bit image kept in a wide array) have no scale to tell them from dark
    16-bit ones: scaled as 16-bit, with a warning; 16-bit modes are read silently."""
    from PIL import Image

    from jcra.data.images import to_rgb

    with pytest.warns(UserWarning, match="at most 200 are read as 16-bit grayscale"):
        assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 200, np.int32)))).max() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_rgb(Image.fromarray(np.full((2, 2), 200, np.uint16)))


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "float pixels"),
        (np.array([[0, 70000]], dtype=np.int32), "from 0 to 70000"),
        (np.array([[-1, 5]], dtype=np.int32), "from -1 to 5"),
    ],
)
def test_pixels_with_no_known_8_bit_scale_are_refused_naming_the_file(tmp_path, pixels, message):
    """A float image in [0, 1] came out black and 32-bit values clipped at 255: refused instead."""
    from PIL import Image

    from jcra.data.images import read_rgb

    Image.fromarray(pixels).save(tmp_path / "wide.tif")
    with pytest.raises(OSError, match=f"cannot read image .*wide.tif: .*{message}"):
        read_rgb(tmp_path / "wide.tif")


def test_targets_are_the_non_crowd_people_with_corner_boxes_and_unlabelled_points_zeroed(tiny):
    """A crowd region is never a person, even with labelled keypoints; a box is (x0, y0, x1, y1) of the
    file's (x, y, w, h); an unlabelled keypoint's coordinates, whatever the file holds, are 0."""
    tmp_path, data = tiny
    person = np.zeros((17, 3))
    person[0] = (5, 5, 2)
    person[1] = (7, 3, 0)  # unlabelled, with coordinates
    crowd = np.zeros((17, 3))
    crowd[0] = (8, 6, 2)
    data["annotations"] = [
        {"id": 7, "image_id": 1, "keypoints": person.ravel().tolist(), "area": 4.0, "bbox": [2, 3, 10, 6]},
        {"id": 8, "image_id": 1, "keypoints": crowd.ravel().tolist(), "area": 9.0, "iscrowd": 1},
    ]
    _, target = CocoKeypoints(write(tmp_path, data), tmp_path)[0]
    assert target["keypoints"].shape == (1, 17, 3) and target["area"].tolist() == [4.0]
    assert target["boxes"].tolist() == [[2.0, 3.0, 12.0, 9.0]]
    assert target["keypoints"][0, :2].tolist() == [[5.5, 5.5, 2.0], [0.0, 0.0, 0.0]]


def test_images_in_id_order_and_one_warning_for_labels_outside(tiny):
    """The file lists image 2 first: the dataset goes by id. Two images with labels off the image
    warn once: the annotation file is wrong, not each image."""
    tmp_path, data = tiny
    data["images"].reverse()
    outside = np.zeros((17, 3))
    outside[:2] = [(5, 5, 2), (25, 5, 2)]  # the second past the 20 pixels
    data["annotations"] = [
        {"id": n, "image_id": n, "keypoints": outside.ravel().tolist(), "area": 4.0} for n in (1, 2)
    ]
    dataset = CocoKeypoints(write(tmp_path, data), tmp_path)
    assert dataset.ids == [1, 2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset[0], dataset[1]
    assert len(caught) == 1 and "outside" in str(caught[0].message)


def test_finite_numbers_are_real_numbers_only():
    from jcra.data.coco import finite_numbers

    assert finite_numbers([1, 2.5, -3]) and finite_numbers([])
    for bad in (True, None, "1", float("nan"), float("inf")):
        assert not finite_numbers([1.0, bad]), bad


def test_wrong_keypoint_length(tiny):
    tmp_path, data = tiny
    data["annotations"].append({"id": 8, "image_id": 2, "keypoints": [1.0, 2.0, 2.0] * 16, "area": 1.0})
    with pytest.raises(ValueError, match=r"annotation 8 has 48 keypoint values, expected 51"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


def test_annotation_of_unknown_image(tiny):
    tmp_path, data = tiny
    data["annotations"][0]["image_id"] = 99
    with pytest.raises(ValueError, match="annotation 7 refers to unknown image_id 99"):
        CocoKeypoints(write(tmp_path, data), tmp_path)
    data["annotations"][0]["image_id"] = [1]  # unhashable: a TypeError before
    with pytest.raises(ValueError, match=r"annotation 7 refers to unknown image_id \[1\]"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


@pytest.mark.parametrize("width", ["20", 0, 20.5, True])
def test_image_size_of_another_type_is_named(tiny, width):
    """A string width gave "is 20 x 10 pixels, but ... lists it as 20 x 10" when the image was read."""
    tmp_path, data = tiny
    data["images"][0]["width"] = width
    with pytest.raises(ValueError, match=r"image 1 has width .*, expected a whole number > 0"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


def test_missing_image(tiny):
    tmp_path, data = tiny
    (tmp_path / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.png is listed in .*ann\.json but missing"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


def test_unreadable_image(tiny):
    tmp_path, data = tiny
    (tmp_path / "b.png").write_bytes(b"definitely not a png")
    with pytest.raises(OSError, match=r"cannot read image .*b\.png"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


def test_unreadable_image_found_late_still_names_it(tiny):
    tmp_path, data = tiny
    dataset = CocoKeypoints(write(tmp_path, data), tmp_path, check_images=False)
    (tmp_path / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(OSError, match=r"cannot read image .*a\.png"):
        dataset[0]


def test_missing_image_dir(tiny):
    tmp_path, data = tiny
    ann = write(tmp_path, data)
    shutil.rmtree(tmp_path / "sub", ignore_errors=True)
    with pytest.raises(FileNotFoundError, match="image_dir"):
        CocoKeypoints(ann, tmp_path / "sub")


def test_duplicate_image_id(tiny):
    tmp_path, data = tiny
    data["images"][1]["id"] = 1
    with pytest.raises(ValueError, match=r"ann\.json lists image id 1 twice"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


@pytest.mark.parametrize("image_id", [1.0, True, None, [1]], ids=["float", "bool", "null", "list"])
def test_image_id_not_an_integer_or_string(tiny, image_id):
    tmp_path, data = tiny
    data["images"][1]["id"] = image_id
    with pytest.raises(ValueError, match=r"ann\.json has an image id that is not an integer or a string"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


def test_integer_and_string_image_ids_do_not_mix(tiny):
    """The dataset and COCOeval sort the ids: 2 < "0003" has no answer."""
    tmp_path, data = tiny
    data["images"][1]["id"] = "0002"
    data["annotations"][0]["image_id"] = 1
    with pytest.raises(ValueError, match=r"ann\.json has integer and string image ids"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


@pytest.mark.parametrize("value", [None, "5", float("nan"), float("inf")], ids=["null", "str", "nan", "inf"])
def test_keypoint_value_not_a_finite_number(tiny, value):
    tmp_path, data = tiny
    data["annotations"][0]["keypoints"][0] = value
    with pytest.raises(ValueError, match=r"ann\.json: annotation 7 has keypoint values that are not finite"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


@pytest.mark.parametrize("bbox", [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0, None]], ids=["three", "null"])
def test_malformed_bbox(tiny, bbox):
    tmp_path, data = tiny
    data["annotations"][0]["bbox"] = bbox
    with pytest.raises(ValueError, match=r"ann\.json: annotation 7 has bbox .*expected 4 finite numbers"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


@pytest.mark.parametrize("area", [-1.0, "4", float("nan")], ids=["negative", "str", "nan"])
def test_malformed_area(tiny, area):
    tmp_path, data = tiny
    data["annotations"][0]["area"] = area
    with pytest.raises(ValueError, match=r"ann\.json: annotation 7 has area .*expected a finite number >= 0"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


@pytest.mark.parametrize("area", [None, 0], ids=["null", "zero"])
def test_null_or_zero_area_is_read_as_none(tiny, area):
    """As evaluation reads it: the share of the box (COCOeval would score against an area of 0)."""
    tmp_path, data = tiny
    data["annotations"][0].update(area=area, bbox=[2.0, 3.0, 10.0, 6.0])
    _, target = CocoKeypoints(write(tmp_path, data), tmp_path)[0]
    assert target["area"].tolist() == [pytest.approx(BOX_AREA_FRACTION * 10.0 * 6.0)]


def test_image_past_pil_pixel_limit_is_named(tiny, monkeypatch):
    """PIL's DecompressionBombError (a corrupt header, or a huge image) is not an OSError."""
    from PIL import Image

    tmp_path, data = tiny
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # the 20 x 10 images pass twice that: an error
    with pytest.raises(OSError, match=r"cannot read image .*a\.png.*exceeds limit"):
        CocoKeypoints(write(tmp_path, data), tmp_path)
    dataset = CocoKeypoints(write(tmp_path, data), tmp_path, check_images=False)
    with pytest.raises(OSError, match=r"cannot read image .*a\.png"):
        dataset[0]


@pytest.mark.parametrize("check_images", [True, False])
def test_image_of_another_size_than_listed_is_refused(tiny, check_images):
    """A resized copy of the labelled image would put every label on other pixels."""
    tmp_path, data = tiny
    data["images"][0].update(width=40, height=20)
    dataset = None
    with pytest.raises(ValueError, match=r"a\.png is 20 x 10 pixels, but .*ann\.json lists it as 40 x 20"):
        dataset = CocoKeypoints(write(tmp_path, data), tmp_path, check_images=check_images)
        dataset[0]
    data["images"][0].update(width=20, height=10)
    assert len(CocoKeypoints(write(tmp_path, data), tmp_path)) == 2


def test_width_and_height_swapped_alone_warn_once_and_read_the_pixels(tiny):
    """CrowdPose's own train and test files list every image so; the labels are on the stored pixels."""
    tmp_path, data = tiny
    for image in data["images"]:
        image.update(width=10, height=20)
    with pytest.warns(UserWarning, match=r"lists image .*a\.png as 10 x 20, its pixels are 20 x 10"):
        dataset = CocoKeypoints(write(tmp_path, data), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, target = dataset[0]
    assert target["size"].tolist() == [10, 20]


def test_photo_labelled_upright_but_stored_sideways_is_refused_with_a_hint(tiny):
    tmp_path, data = tiny
    from PIL import Image

    image = Image.new("RGB", (20, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # shown turned 90 degrees, as 10 x 20
    image.save(tmp_path / "a.jpg", exif=exif)
    data["images"][0].update(file_name="a.jpg", width=10, height=20)
    with pytest.raises(ValueError, match=r"lists it as 10 x 20.*EXIF orientation.*exif_transpose"):
        CocoKeypoints(write(tmp_path, data), tmp_path)


def test_exif_orientation_is_applied_only_when_asked(tmp_path):
    """Annotations label the stored pixels; ``upright`` shows a phone photo as viewers do."""
    from PIL import Image

    stored = np.zeros((10, 20, 3), np.uint8)
    stored[0, 0] = 255  # the top-left pixel as stored
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    image.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    raw, upright = read_rgb(tmp_path / "phone.jpg"), read_rgb(tmp_path / "phone.jpg", upright=True)
    assert raw.size == (20, 10) and upright.size == (10, 20)
    assert np.asarray(raw)[0, 0, 0] > 200 and np.asarray(upright)[0, -1, 0] > 200


@pytest.mark.parametrize(
    ("categories", "expected"),
    [
        ([{"id": 1, "name": "person"}], 1),
        ([{"id": 3, "name": "human"}], 3),
        ([{"id": 2, "name": "person", "keypoints": ["nose"] * 17}, {"id": 1, "name": "dog"}], 2),
        ([{"id": 5, "name": "a"}, {"id": 6, "name": "b"}], 1),
        ([], 1),
    ],
)
def test_results_are_scored_under_the_keypoint_category(tiny, categories, expected):
    tmp_path, data = tiny
    data["categories"] = categories
    assert CocoKeypoints(write(tmp_path, data), tmp_path).category_id == expected


def test_labels_stay_on_their_pixel_through_a_flip_and_come_back_as_labelled(tiny):
    """A keypoint labelled on the one lit pixel of an image: after a horizontal flip its target still
    covers the lit pixel (its centre), and PostProcess turns a perfect prediction of the target back
    into the file's label."""
    from PIL import Image

    from jcra.data.transforms import RandomHorizontalFlip
    from jcra.postprocess import PostProcess

    tmp_path, data = tiny
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[5, 7] = 255  # row 5, column 7: the label (7, 5) of the tiny annotation is moved there
    data["annotations"][0]["keypoints"][:2] = [7, 5]
    Image.fromarray(pixels).save(tmp_path / "a.png")
    dataset = CocoKeypoints(write(tmp_path, data), tmp_path)
    image, target = dataset[0]
    assert target["keypoints"][0, 0].tolist() == [7.5, 5.5, 2.0]
    flipped, moved = RandomHorizontalFlip(None, p=1.0)(image.float(), target)
    lit_row, lit_column = (flipped[0] > 0).nonzero()[0].tolist()
    x, y = moved["keypoints"][0, 0, :2].tolist()
    assert (x - 0.5, y - 0.5) == (lit_column, lit_row) == (12, 5)
    h, w = target["size"].tolist()
    prediction = {
        "logits": torch.zeros(1, 1),
        "keypoints": (target["keypoints"][None, ..., :2] / torch.tensor([w, h])),
    }
    (record,) = PostProcess(1)(prediction, target["size"][None], [target["image_id"]])
    assert record["keypoints"][:2] == [7.0, 5.0]
