"""jcra.targets: padding, crowd regions dropped, normalisation, bad input, no host read on CUDA."""

import pytest
import torch

from jcra.targets import pad_targets

K = 17


def _target(g, gen, h=480, w=640, crowd=None):
    kpts = torch.rand(g, K, 3, generator=gen) * torch.tensor([w, h, 1.0])
    kpts[..., 2] = torch.randint(0, 3, (g, K), generator=gen).float()
    target = {
        "keypoints": kpts,
        "area": 100 + 1000 * torch.rand(g, generator=gen),
        "size": torch.tensor([h, w]),
    }
    if crowd is not None:
        target["iscrowd"] = torch.tensor(crowd)
    return target


def test_people_are_padded_in_order_and_crowd_regions_dropped():
    gen = torch.Generator().manual_seed(0)
    targets = [_target(3, gen), _target(0, gen, 200, 300), _target(4, gen, 333, 517, crowd=[0, 1, 0, 1])]
    padded = pad_targets(targets, K, torch.device("cpu"))
    assert padded.counts == [3, 0, 2]
    assert padded.kept[0] is None and padded.kept[1] is None and padded.kept[2].tolist() == [0, 2]
    assert padded.keypoints.shape == (3, 3, K, 3) and padded.area.shape == (3, 3)
    torch.testing.assert_close(padded.keypoints[0], targets[0]["keypoints"])
    torch.testing.assert_close(padded.keypoints[2, :2], targets[2]["keypoints"][[0, 2]])
    torch.testing.assert_close(padded.area[2, :2], targets[2]["area"][[0, 2]])
    # padding: no labelled keypoint, area 0
    assert (padded.keypoints[1] == 0).all() and (padded.keypoints[2, 2] == 0).all()
    assert (padded.area[1] == 0).all() and padded.area[2, 2] == 0
    assert padded.size.tolist() == [[640.0, 480.0], [300.0, 200.0], [517.0, 333.0]]  # (w, h)
    assert padded.keypoints.dtype == padded.area.dtype == padded.size.dtype == torch.float32


def test_normalised_divides_by_the_image_size():
    gen = torch.Generator().manual_seed(1)
    targets = [_target(2, gen, 480, 640), _target(1, gen, 333, 517)]
    pixels = pad_targets(targets, K, torch.device("cpu"))
    unit = pixels.normalised()
    for b, (h, w) in enumerate([(480, 640), (333, 517)]):
        n = pixels.counts[b]
        scale = torch.tensor([w, h, 1.0])
        torch.testing.assert_close(unit.keypoints[b, :n], targets[b]["keypoints"] / scale)
        torch.testing.assert_close(unit.area[b, :n], targets[b]["area"] / (w * h))
    assert unit.size is pixels.size and unit.counts == pixels.counts


def _with_boxes(target, gen):
    g = target["keypoints"].shape[0]
    corner = torch.rand(g, 2, generator=gen) * 300
    return {**target, "boxes": torch.cat([corner, corner + 10 + 200 * torch.rand(g, 2, generator=gen)], 1)}


def test_boxes_are_padded_with_the_people_and_normalised_with_the_keypoints():
    gen = torch.Generator().manual_seed(4)
    targets = [
        _with_boxes(_target(3, gen), gen),
        _with_boxes(_target(4, gen, 333, 517, crowd=[1, 0, 0, 1]), gen),
    ]
    pixels = pad_targets(targets, K, torch.device("cpu"))
    assert pixels.boxes.shape == (2, 3, 4) and pixels.boxes.dtype == torch.float32
    torch.testing.assert_close(pixels.boxes[0], targets[0]["boxes"])
    torch.testing.assert_close(pixels.boxes[1, :2], targets[1]["boxes"][[1, 2]])  # crowd entries dropped
    assert (pixels.boxes[1, 2] == 0).all()
    torch.testing.assert_close(pixels.keypoints[1, :2], targets[1]["keypoints"][[1, 2]])  # fields unmixed
    assert pixels.size.tolist() == [[640.0, 480.0], [517.0, 333.0]]
    unit = pixels.normalised()
    torch.testing.assert_close(
        unit.boxes[1, :2], targets[1]["boxes"][[1, 2]] / torch.tensor([517, 333, 517, 333])
    )
    # one target without boxes: no boxes for the batch, the rest as before
    partial = pad_targets([targets[0], _target(2, gen)], K, torch.device("cpu"))
    assert partial.boxes is None and partial.normalised().boxes is None
    torch.testing.assert_close(partial.keypoints[0], targets[0]["keypoints"])
    assert pad_targets([], K, torch.device("cpu")).boxes is None


def test_empty_batch_and_images_without_people():
    empty = pad_targets([], K, torch.device("cpu"))
    assert empty.keypoints.shape == (0, 0, K, 3) and empty.area.shape == (0, 0) and empty.size.shape == (0, 2)
    gen = torch.Generator().manual_seed(2)
    none = pad_targets([_target(0, gen), _target(2, gen, crowd=[1, 1])], K, torch.device("cpu"))
    assert none.counts == [0, 0] and none.keypoints.shape == (2, 0, K, 3)


@pytest.mark.parametrize(
    "name,mutate",
    [
        ("keypoints", lambda t: {**t, "keypoints": t["keypoints"][:, :14]}),
        ("area", lambda t: {**t, "area": t["area"][:1]}),
        ("size", lambda t: {**t, "size": torch.tensor([480])}),
        ("size", lambda t: {k: v for k, v in t.items() if k != "size"}),
        ("iscrowd", lambda t: {**t, "iscrowd": torch.zeros(1)}),
        ("iscrowd", lambda t: {**t, "iscrowd": torch.zeros(4)}),  # one flag more than people
        ("boxes", lambda t: {**t, "boxes": torch.zeros(3, 2)}),
    ],
)
def test_bad_targets_raise_value_error_naming_the_image_and_field(name, mutate):
    gen = torch.Generator().manual_seed(3)
    targets = [_target(2, gen), mutate(_target(3, gen))]
    with pytest.raises(ValueError, match=rf"targets\[1\].*{name}"):
        pad_targets(targets, K, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("targets_on", ["cpu", "cuda"])
def test_padding_for_cuda_never_synchronises_with_the_host(targets_on):
    """Host targets cross in one asynchronous copy from pinned memory; device targets are padded
    where they lie. Either way nothing waits for the GPU, and the values are the host padding's."""
    gen = torch.Generator().manual_seed(4)
    targets = [_target(3, gen), _target(5, gen, crowd=[0, 1, 0, 0, 1])]
    moved = [{k: v if k == "iscrowd" else v.to(targets_on) for k, v in t.items()} for t in targets]
    expected = pad_targets(targets, K, torch.device("cpu"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        padded = pad_targets(moved, K, torch.device("cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for field in ("keypoints", "area", "size"):
        assert getattr(padded, field).is_cuda
        torch.testing.assert_close(getattr(padded, field).cpu(), getattr(expected, field))
