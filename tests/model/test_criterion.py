"""jcra.criterion: focal losses against their formulas, heatmap targets, loss parts, overfitting."""

import json
import math

import numpy as np
import pytest
import torch

from jcra import criterion
from jcra.criterion import (
    SetCriterion,
    box_heatmap_radius,
    gaussian_heatmap,
    heatmap_focal_loss,
    sigmoid_focal_loss,
)
from jcra.matcher import HungarianMatcher
from jcra.oks_loss import oks_loss
from kernels.oks import COCO_SIGMAS
from tests.shared_data import SHARED_DATA

K = 17
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def test_sigmoid_focal_loss_matches_its_formula():
    gen = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(50, generator=gen, dtype=torch.float64)
    t = (torch.rand(50, generator=gen) > 0.5).double()
    p = x.sigmoid()
    expected = torch.where(t == 1, -0.25 * (1 - p) ** 2 * p.log(), -0.75 * p**2 * (1 - p).log())
    torch.testing.assert_close(sigmoid_focal_loss(x, t).double(), expected, rtol=1e-5, atol=1e-7)


def test_gaussian_heatmap_peaks_on_labelled_cells():
    kpts = torch.zeros(2, 3, 3)
    kpts[0] = torch.tensor([[20.0, 9.0, 2], [5.0, 5.0, 0], [60.0, 30.0, 1]])
    kpts[1] = torch.tensor([[23.0, 14.0, 2], [40.0, 8.0, 2], [63.9, 31.9, 1]])
    hm = gaussian_heatmap(kpts, 5, 9, stride=8, sigma=1.0)
    assert hm.shape == (3, 5, 9)
    assert hm[0, 1, 2] == 1 and hm.max() <= 1  # both people's keypoint 0 in cell (row 1, col 2)
    assert hm[1].max() == 1 and hm[1, 1, 5] == 1 and hm[1, 0, 0] < 1  # the unlabelled one adds nothing
    assert hm[2, 3, 7] == 1 and math.isclose(float(hm[2, 3, 6]), math.exp(-0.5), rel_tol=1e-6)
    assert (hm == 1).sum() == 3


def test_gaussian_heatmap_of_a_padded_batch_equals_each_image_alone():
    gen = torch.Generator().manual_seed(8)
    people = torch.rand(2, 4, K, 3, generator=gen) * torch.tensor([70.0, 50.0, 1.0])
    people[..., 2] = torch.randint(0, 3, (2, 4, K), generator=gen).float()
    people[1, 2:] = 0  # the second image has two people, then padding
    batch = gaussian_heatmap(people, 7, 9, stride=8, sigma=1.5)
    assert batch.shape == (2, K, 7, 9)
    torch.testing.assert_close(batch[0], gaussian_heatmap(people[0], 7, 9, stride=8, sigma=1.5))
    torch.testing.assert_close(batch[1], gaussian_heatmap(people[1, :2], 7, 9, stride=8, sigma=1.5))
    assert (gaussian_heatmap(people[:, :0], 7, 9, stride=8, sigma=1.5) == 0).all()


def test_gaussian_heatmap_taken_in_chunks_of_people_equals_all_at_once(monkeypatch):
    gen = torch.Generator().manual_seed(9)
    people = torch.rand(3, 7, K, 3, generator=gen) * torch.tensor([70.0, 50.0, 1.0])
    people[..., 2] = torch.randint(0, 3, (3, 7, K), generator=gen).float()
    whole = gaussian_heatmap(people, 7, 9, stride=8, sigma=1.5)
    for people_a_chunk in (1, 2, 3, 6):  # one person, uneven chunks, the last chunk a single person
        monkeypatch.setattr(criterion, "HEATMAP_CHUNK_ELEMENTS", people_a_chunk * 3 * K * 7 * 9)
        assert torch.equal(gaussian_heatmap(people, 7, 9, stride=8, sigma=1.5), whole)
    monkeypatch.setattr(criterion, "HEATMAP_CHUNK_ELEMENTS", 1)  # less than one person: still one a chunk
    assert torch.equal(gaussian_heatmap(people, 7, 9, stride=8, sigma=1.5), whole)


@pytest.mark.parametrize(
    ("side", "radius"), [(0.0, 0), (10.0, 0), (10.5, 1), (21.0, 2), (30.0, 2), (31.0, 3), (99.0, 3)]
)
def test_box_heatmap_radius_is_petrs(side, radius):
    """A square box of ``side`` cells: CornerNet's radius at min overlap 0.9 as opera computes it is
    about 0.0974 side (the third case's root, (b + sqrt(b^2 - 4ac)) / 2), floored, at most 3."""
    box = torch.tensor([[16.0, 24.0, 16.0 + 8 * side, 24.0 + 8 * side]])
    assert box_heatmap_radius(box, stride=8).tolist() == [radius]
    o, s = 0.9, side
    a, b, c = 4 * o, -4 * o * s, (o - 1) * s * s
    assert math.floor(min((b + math.sqrt(b * b - 4 * a * c)) / 2, 3)) == radius


def test_box_heatmap_radius_of_a_long_box_follows_its_short_side():
    """The radius grows with both sides (40 x 10 cells: 1, where 10 x 10 gives 0 and 40 x 40 gives 3)."""
    boxes = torch.tensor([[0.0, 0.0, 320.0, 80.0], [0.0, 0.0, 80.0, 320.0], [0.0, 0.0, 80.0, 80.0]])
    assert box_heatmap_radius(boxes, stride=8).tolist() == [1, 1, 0]
    assert box_heatmap_radius(boxes[:, [2, 3, 0, 1]], stride=8).tolist() == [0, 0, 0]  # inverted: empty


def test_gaussian_heatmap_cut_to_each_persons_radius():
    """CenterNet's drawing: person 0 (radius 1, sigma 1/2) fills the 3 x 3 cells around its peak and
    nothing else, person 1 (radius 0) only its peak's cell; the max over people where both draw."""
    kpts = torch.zeros(2, 2, 3)
    kpts[0] = torch.tensor([[20.0, 20.0, 2], [60.0, 20.0, 2]])  # cells (row 2, col 2) and (2, 7)
    kpts[1] = torch.tensor([[28.0, 20.0, 2], [5.0, 5.0, 0]])  # cell (2, 3); an unlabelled one
    radius = torch.tensor([1.0, 0.0])
    hm = gaussian_heatmap(kpts, 6, 10, stride=8, sigma=(2 * radius + 1) / 6, radius=radius)
    expected = torch.zeros(2, 6, 10)
    for joint, (row, col) in enumerate([(2, 2), (2, 7)]):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                expected[joint, row + dy, col + dx] = math.exp(-(dx * dx + dy * dy) / (2 * 0.5**2))
    expected[0, 2, 3] = 1.0  # person 1's peak, over person 0's tail there
    torch.testing.assert_close(hm, expected)


def test_heatmap_focal_loss_matches_its_formula():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    target = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64) * 0.9
    target[0, 1, 2, 3] = target[1, 0, 0, 0] = target[1, 2, 3, 4] = 1
    valid = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    valid[1, :, 3:] = False  # drops the third peak and a row of negatives
    p = logits.sigmoid()
    pos = -(p.log() * (1 - p) ** 2)
    neg = -((1 - p).log() * p**2 * (1 - target) ** 4)
    v = valid.expand_as(logits)
    expected = (pos[(target == 1) & v].sum() + neg[(target < 1) & v].sum()) / 2
    torch.testing.assert_close(
        heatmap_focal_loss(logits, target, valid).double(), expected, rtol=1e-5, atol=0
    )


def _criterion(**kwargs):
    return SetCriterion(K, COCO_SIGMAS, HungarianMatcher(COCO_SIGMAS), **kwargs)


def test_loss_parts_with_known_matching():
    """One query sits near the only person, the rest far away: each part against a direct computation."""
    gen = torch.Generator().manual_seed(2)
    h, w = 80, 120
    gt = torch.rand(1, K, 3, generator=gen) * torch.tensor([w, h, 1.0])
    gt[..., 2] = 2.0 * (torch.arange(K) % 3 > 0)
    target = {"keypoints": gt, "area": torch.tensor([900.0]), "size": torch.tensor([h, w])}
    keypoints = torch.rand(1, 5, K, 2, generator=gen) * 0.1 + 0.9
    near = gt[0, :, :2] / torch.tensor([w, h]) + 0.01 * torch.randn(K, 2, generator=gen)
    keypoints[0, 3] = near
    logits = torch.randn(1, 5, generator=gen)
    losses = _criterion(weights={"oks": 3.0})({"logits": logits, "keypoints": keypoints}, [target])
    labels = torch.zeros(1, 5)
    labels[0, 3] = 1
    gt_norm = gt[0] / torch.tensor([w, h, 1.0])
    labelled = gt_norm[:, 2] > 0
    expected = {
        "loss_cls": sigmoid_focal_loss(logits, labels).sum(),
        "loss_kpt": (near - gt_norm[:, :2]).abs()[labelled].mean(),
        # OKS in pixels, as COCO scores it (the image is not square)
        "loss_oks": oks_loss(near[None] * torch.tensor([w, h]), gt, torch.tensor([900.0]), COCO_SIGMAS)[
            0
        ].float(),
    }
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-6)
    total = 2 * expected["loss_cls"] + 70 * expected["loss_kpt"] + 3 * expected["loss_oks"]
    torch.testing.assert_close(losses["loss"], total, rtol=1e-5, atol=1e-5)
    linear = _criterion(oks_mode="linear")({"logits": logits, "keypoints": keypoints}, [target])["loss_oks"]
    torch.testing.assert_close(linear, 1 - (-expected["loss_oks"]).exp(), rtol=1e-5, atol=1e-6)


def test_encoder_proposals_take_an_oks_loss_only_when_asked():
    """PETR's proposals have classification and L1 losses; ``encoder_oks`` adds the OKS loss."""
    gen = torch.Generator().manual_seed(3)
    target = {"keypoints": torch.rand(2, K, 3, generator=gen) * 60, "area": torch.full((2,), 400.0)}
    target["keypoints"][..., 2] = 2.0
    target["size"] = torch.tensor([64, 64])
    stage = {"logits": torch.randn(1, 6, generator=gen), "keypoints": torch.rand(1, 6, K, 2, generator=gen)}
    outputs = {**stage, "enc_outputs": dict(stage)}
    without, with_oks = (_criterion(encoder_oks=flag)(outputs, [target]) for flag in (False, True))
    assert "loss_oks_enc" not in without and {"loss_cls_enc", "loss_kpt_enc"} <= set(without)
    torch.testing.assert_close(with_oks["loss_oks_enc"], with_oks["loss_oks"])  # the same stage twice
    torch.testing.assert_close(with_oks["loss"] - without["loss"], 2 * with_oks["loss_oks_enc"])


def _batch_with_a_crowd(gen):
    """Two images of other sizes: three people in the first (the middle one a crowd), one in the
    second; query 1 (first image) near person 0, query 4 near person 2, query 2 (second) near its
    person, the other queries far off. Returns outputs, targets and the near (image, query, person)."""
    sizes, counts, q = [(80, 120), (60, 50)], [3, 1], 6
    targets = []
    for (h, w), g in zip(sizes, counts, strict=True):
        kpts = torch.rand(g, K, 3, generator=gen) * torch.tensor([w, h, 1.0])
        kpts[..., 2] = 2.0 * (torch.rand(g, K, generator=gen) > 0.3)
        kpts[:, 0, 2] = 2.0
        targets.append({"keypoints": kpts, "area": 200 + 800 * torch.rand(g, generator=gen),
                        "size": torch.tensor([h, w]), "iscrowd": (torch.arange(g) == 1).long()})  # fmt: skip
    keypoints = torch.rand(2, q, K, 2, generator=gen) * 0.05 + 0.95
    near = [(0, 1, 0), (0, 4, 2), (1, 2, 0)]
    for b, query, person in near:
        h, w = sizes[b]
        gt = targets[b]["keypoints"][person, :, :2] / torch.tensor([w, h])
        keypoints[b, query] = gt + 0.01 * torch.randn(K, 2, generator=gen)
    outputs = {"logits": torch.randn(2, q, generator=gen), "keypoints": keypoints}
    return outputs, targets, near


def test_losses_are_normalised_by_the_batchs_people():
    """Two images, a crowd entry: classification and OKS summed and divided by the 3 non-crowd people,
    keypoint L1 by their labelled coordinates, against a direct computation."""
    outputs, targets, near = _batch_with_a_crowd(torch.Generator().manual_seed(4))
    losses = _criterion()(outputs, targets)
    labels = torch.zeros(2, 6)
    l1, coords, oks = 0.0, 0, 0.0
    for b, query, person in near:
        labels[b, query] = 1
        h, w = targets[b]["size"].tolist()
        gt = targets[b]["keypoints"][person]
        pred = outputs["keypoints"][b, query]
        labelled = gt[:, 2] > 0
        l1 = l1 + (pred - gt[:, :2] / torch.tensor([w, h])).abs()[labelled].sum()
        coords += 2 * int(labelled.sum())
        area = targets[b]["area"][person : person + 1]
        oks = oks + oks_loss(pred[None] * torch.tensor([w, h]), gt[None], area, COCO_SIGMAS)[0].float()
    expected = {
        "loss_cls": sigmoid_focal_loss(outputs["logits"], labels).sum() / 3,
        "loss_kpt": l1 / coords,
        "loss_oks": oks / 3,
    }
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-6)


def test_a_person_of_area_zero_takes_no_oks_loss():
    """OKS is undefined without an area: such a person's matched query gets the L1 loss only (the clamped
    -log OKS would add about 13.8 a person to the logged loss)."""
    gen = torch.Generator().manual_seed(4)
    h, w = 80, 120
    gt = torch.rand(2, K, 3, generator=gen) * torch.tensor([w, h, 1.0])
    gt[..., 2] = 2.0
    target = {"keypoints": gt, "area": torch.tensor([900.0, 0.0]), "size": torch.tensor([h, w])}
    keypoints = torch.rand(1, 5, K, 2, generator=gen) * 0.1 + 0.9
    near = gt[..., :2] / torch.tensor([w, h]) + 0.01 * torch.randn(2, K, 2, generator=gen)
    keypoints[0, 3], keypoints[0, 1] = near[0], near[1]
    keypoints.requires_grad_()
    losses = _criterion()({"logits": torch.randn(1, 5, generator=gen), "keypoints": keypoints}, [target])
    alone = oks_loss(near[:1] * torch.tensor([w, h]), gt[:1], torch.tensor([900.0]), COCO_SIGMAS)[0].float()
    torch.testing.assert_close(losses["loss_oks"], alone / 2, rtol=1e-5, atol=1e-6)  # two people
    losses["loss_oks"].backward()
    assert keypoints.grad[0, 1].abs().sum() == 0 and keypoints.grad[0, 3].abs().sum() > 0


def test_count_takes_one_heatmap_peak_a_cell_joint_and_image():
    """People, labelled coordinates, and peaks: labelled keypoints of one type in one stride-8 cell of one
    image make one peak (they are one target there)."""
    kpts = torch.zeros(3, K, 3)
    kpts[:, 0] = torch.tensor([[3.0, 3.0, 2], [5.0, 6.0, 1], [9.0, 3.0, 2]])  # cells (0, 0), (0, 0), (1, 0)
    kpts[0, 1] = torch.tensor([3.0, 3.0, 2])  # another joint in cell (0, 0)
    image = {"keypoints": kpts, "area": torch.ones(3), "size": torch.tensor([40, 50])}
    other = {"keypoints": kpts[:1].clone(), "area": torch.ones(1), "size": torch.tensor([40, 50])}
    assert _criterion().count([image, other]).tolist() == [4.0, 2.0 * 6, 3.0 + 2.0]


def test_unlabelled_coordinates_reach_no_loss_and_no_gradient_whatever_they_hold():
    """A file may store NaN (or anything) at an unlabelled keypoint: the losses, their gradients and
    the heatmap targets are those of zeros there (a masked NaN still gave 0 * NaN = NaN gradients)."""
    outputs, targets, _ = _batch_with_a_crowd(torch.Generator().manual_seed(6))
    results = []
    for fill in (0.0, float("nan"), 1e30):
        filled = [dict(t, keypoints=t["keypoints"].clone()) for t in targets]
        for target in filled:
            kpts = target["keypoints"]
            kpts[..., :2] = torch.where(kpts[..., 2:] > 0, kpts[..., :2], fill)
        keypoints = outputs["keypoints"].clone().requires_grad_()
        losses = _criterion()({**outputs, "keypoints": keypoints}, filled)
        losses["loss"].backward()
        heat = gaussian_heatmap(filled[0]["keypoints"], 10, 15, 8, 2.0)
        results.append((losses, keypoints.grad, heat))
    for losses, grad, heat in results[1:]:
        assert grad.isfinite().all()
        for key, value in results[0][0].items():
            torch.testing.assert_close(losses[key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(grad, results[0][1], rtol=0, atol=0)
        torch.testing.assert_close(heat, results[0][2], rtol=0, atol=0)


def test_heatmap_loss_against_its_targets_and_the_valid_cells():
    """Padded batch: the Gaussian targets of each image's non-crowd people at stride 8 (sigma 2 cells),
    scored only on the cells inside each image (ceil of its size over the stride)."""
    gen = torch.Generator().manual_seed(5)
    outputs, targets, _ = _batch_with_a_crowd(gen)
    height, width = 10, 15  # the padded batch's stride-8 map: 80 x 120 pixels
    outputs["heatmap"] = torch.randn(2, K, height, width, generator=gen)
    losses = _criterion()(outputs, targets)
    goals = torch.stack(
        [gaussian_heatmap(t["keypoints"][t["iscrowd"] == 0], height, width, 8, 2.0) for t in targets]
    )
    valid = torch.zeros(2, 1, height, width, dtype=torch.bool)
    valid[0, :, :10, :15] = True  # 80 x 120
    valid[1, :, :8, :7] = True  # 60 x 50: ceil(7.5) rows, ceil(6.25) columns
    expected = heatmap_focal_loss(outputs["heatmap"], goals, valid)
    torch.testing.assert_close(losses["loss_hm"], expected, rtol=1e-5, atol=1e-6)


def test_heatmap_loss_with_petrs_box_radius():
    """heatmap_target "box": each person's Gaussians cut to its box's radius; targets without boxes are
    refused by name."""
    gen = torch.Generator().manual_seed(6)
    outputs, targets, _ = _batch_with_a_crowd(gen)
    outputs["heatmap"] = torch.randn(2, K, 10, 15, generator=gen)
    with pytest.raises(ValueError, match="boxes"):
        _criterion(heatmap_target="box")(outputs, targets)
    sides = [torch.tensor([100.0, 300.0, 200.0]), torch.tensor([60.0])]  # pixels: radius 1, 3 (crowd), 2
    for target, side in zip(targets, sides, strict=True):
        corner = target["keypoints"][:, 0, :2]
        target["boxes"] = torch.cat([corner, corner + side[:, None]], 1)
    losses = _criterion(heatmap_target="box")(outputs, targets)
    goals = []
    for target in targets:
        people = target["iscrowd"] == 0
        radius = box_heatmap_radius(target["boxes"][people], 8)
        goals.append(gaussian_heatmap(target["keypoints"][people], 10, 15, 8, (2 * radius + 1) / 6, radius))
    assert [box_heatmap_radius(t["boxes"], 8).tolist() for t in targets] == [[1, 3, 2], [0]]
    valid = torch.zeros(2, 1, 10, 15, dtype=torch.bool)
    valid[0, :, :10, :15] = True
    valid[1, :, :8, :7] = True
    expected = heatmap_focal_loss(outputs["heatmap"], torch.stack(goals), valid)
    torch.testing.assert_close(losses["loss_hm"], expected, rtol=1e-5, atol=1e-6)
    fixed = _criterion()(outputs, targets)["loss_hm"]
    assert not torch.isclose(fixed, losses["loss_hm"])
    with pytest.raises(ValueError, match="heatmap_target"):
        _criterion(heatmap_target="petr")


def test_crowd_and_empty_images():
    gen = torch.Generator().manual_seed(3)
    kpts = torch.rand(2, K, 3, generator=gen) * torch.tensor([50.0, 40.0, 1.0])
    kpts[..., 2] = 2
    targets = [
        {"keypoints": kpts, "area": torch.tensor([300.0, 200.0]), "size": torch.tensor([40, 50]),
         "iscrowd": torch.tensor([0, 1])},
        {"keypoints": torch.zeros(0, K, 3), "area": torch.zeros(0), "size": torch.tensor([40, 50])},
    ]  # fmt: skip
    outputs = {"logits": torch.randn(2, 4, generator=gen), "keypoints": torch.rand(2, 4, K, 2, generator=gen)}
    losses = _criterion()(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    # exactly one positive (the crowd region is never matched), normalised by one person
    candidates = []
    for q in range(4):
        labels = torch.zeros(2, 4)
        labels[0, q] = 1
        candidates.append(sigmoid_focal_loss(outputs["logits"], labels).sum())
    assert min(abs(float(c - losses["loss_cls"])) for c in candidates) < 1e-5


def test_every_stage_is_supervised_as_if_alone():
    """The decoder layers' losses are taken as one batch: each layer's parts equal the criterion run
    on that layer alone, with crowd, empty and differently sized images."""
    gen = torch.Generator().manual_seed(6)
    targets = []
    for g, (h, w) in zip([3, 0, 5], [(40, 50), (64, 48), (30, 90)], strict=True):
        kpts = torch.rand(g, K, 3, generator=gen) * torch.tensor([w, h, 1.0])
        kpts[..., 2] = torch.randint(0, 3, (g, K), generator=gen).float()
        crowd = (torch.arange(g) == 1).long()
        targets.append({"keypoints": kpts, "area": 50 + 500 * torch.rand(g, generator=gen),
                        "size": torch.tensor([h, w]), "iscrowd": crowd})  # fmt: skip

    def stage():
        return {
            "logits": torch.randn(3, 6, generator=gen),
            "keypoints": torch.rand(3, 6, K, 2, generator=gen),
        }

    aux = [stage() for _ in range(3)]
    losses = _criterion()({**stage(), "aux_outputs": aux}, targets)
    for i, alone in enumerate(aux):
        expected = _criterion()(alone, targets)
        for part in ("cls", "kpt", "oks"):
            torch.testing.assert_close(losses[f"loss_{part}_d{i}"], expected[f"loss_{part}"])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"sigmas must be \[num_keypoints=14\], got \(17,\)"):
        SetCriterion(14, COCO_SIGMAS, HungarianMatcher(COCO_SIGMAS))
    with pytest.raises(ValueError, match="sigmas must be finite and > 0"):
        SetCriterion(17, torch.zeros(17), HungarianMatcher(COCO_SIGMAS))
    with pytest.raises(ValueError, match="weights"):
        _criterion(weights={"bbox": 1.0})
    with pytest.raises(ValueError, match="oks_mode must be one of"):
        _criterion(oks_mode="lin")
    for geometry in ({"heatmap_sigma": 0.0}, {"heatmap_stride": 0}):
        with pytest.raises(ValueError, match="heatmap_stride must be >= 1 and heatmap_sigma > 0"):
            _criterion(**geometry)


def _real_sample(size=(128, 192)):
    """COCO val image 785 (one person, 17 keypoints) resized to ``size``, or None without the data."""
    root = SHARED_DATA / "mmpose-testdata" / "coco"
    if not (root / "test_coco.json").exists():
        return None
    from PIL import Image

    coco = json.loads((root / "test_coco.json").read_text())
    ann = next(a for a in coco["annotations"] if a["image_id"] == 785)
    image = Image.open(root / "000000000785.jpg").convert("RGB")
    sx, sy = size[1] / image.width, size[0] / image.height
    image = torch.from_numpy(np.array(image.resize(size[::-1]))).permute(2, 0, 1).float() / 255
    kpts = torch.tensor(ann["keypoints"], dtype=torch.float32).view(K, 3) * torch.tensor([sx, sy, 1.0])
    return image, kpts, ann["area"] * sx * sy


def _generated_sample(size=(128, 192)):
    """A bright stick figure on noise, with its 17 keypoints."""
    gen = torch.Generator().manual_seed(5)
    image = 0.2 * torch.rand(3, *size, generator=gen)
    kpts = torch.zeros(K, 3)
    kpts[:, 0] = 70 + 50 * torch.rand(K, generator=gen)
    kpts[:, 1] = 20 + 90 * torch.rand(K, generator=gen)
    kpts[:, 2] = 2
    for x, y, _ in kpts.round().long().tolist():
        image[:, y - 2 : y + 3, x - 2 : x + 3] = 1.0
    return image, kpts, 50.0 * 90.0


def test_overfits_one_image(tiny_model):
    """Loss falls by half within 25 Adam steps on one image (real COCO when present, else generated)."""
    image, kpts, area = _real_sample() or _generated_sample()
    images = ((image - IMAGENET_MEAN) / IMAGENET_STD)[None]
    target = {"keypoints": kpts[None], "area": torch.tensor([area]), "size": torch.tensor(image.shape[1:])}
    criterion = _criterion()
    optimiser = torch.optim.AdamW([p for p in tiny_model.parameters() if p.requires_grad], lr=1e-3)
    tiny_model.train()
    history = []
    for _ in range(25):
        loss = criterion(tiny_model(images), [target])["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history), history
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:3]), history


def test_non_finite_predictions_give_a_nan_loss_not_wrong_matches():
    """The Triton solver (interpreted here) leaves an image with a non-finite cost unmatched (-1), as it
    must not sync to say so: the stage's losses turn NaN, which stops training, instead of training on
    wrapped-around indices or failing an index check. Other stages are unaffected."""
    gen = torch.Generator().manual_seed(9)
    targets = []
    for g in (2, 3):
        kpts = torch.rand(g, K, 3, generator=gen) * torch.tensor([60.0, 40.0, 1.0])
        kpts[..., 2] = 2
        targets.append({"keypoints": kpts, "area": torch.full((g,), 300.0), "size": torch.tensor([40, 60])})
    criterion = SetCriterion(K, COCO_SIGMAS, HungarianMatcher(COCO_SIGMAS, solver="triton"))
    for image in (0, 1):
        aux = {"logits": torch.randn(2, 4, generator=gen), "keypoints": torch.rand(2, 4, K, 2, generator=gen)}
        last = {
            "logits": torch.randn(2, 4, generator=gen),
            "keypoints": torch.rand(2, 4, K, 2, generator=gen),
        }
        last["keypoints"][image, 1, 5, 0] = float("nan")
        losses = criterion({**last, "aux_outputs": [aux]}, targets)
        assert all(losses[f"loss_{part}"].isnan() for part in ("cls", "kpt", "oks"))
        assert all(losses[f"loss_{part}_d0"].isfinite() for part in ("cls", "kpt", "oks"))
        assert losses["loss"].isnan()
