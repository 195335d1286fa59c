"""The bottom-up baselines recover the people drawn in rendered maps (OKS-based COCO AP)."""

import contextlib
import io

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from bench.baselines.associative_embedding import AssociativeEmbeddingHead, decode_associative_embedding
from bench.baselines.dekr import DEKRHead, decode_dekr, pose_nms
from bench.baselines.render import (
    add_noise,
    add_peak_noise,
    load_people,
    pose_areas,
    random_poses,
    render_dekr,
    render_heatmaps,
    render_tags,
    synthesize_crowd,
)
from tests.shared_data import shared_path

STRIDE = 4


def oks_ap(gt: torch.Tensor, poses: torch.Tensor, scores: torch.Tensor) -> float:
    """COCO keypoint AP (OKS 0.50:0.95) of predictions against ground truth of one image."""
    images = [{"id": 1, "width": 1, "height": 1}]
    areas = pose_areas(gt)
    annotations = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": float(areas[i]),
            "bbox": [0, 0, 1, 1],
            "keypoints": p.flatten().tolist(),
            "num_keypoints": int((p[:, 2] > 0).sum()),
        }
        for i, p in enumerate(gt)
    ]
    truth = COCO()
    truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        records = [
            {"image_id": 1, "category_id": 1, "keypoints": p.flatten().tolist(), "score": float(s)}
            for p, s in zip(poses.cpu(), scores.cpu(), strict=True)
        ]
        if not records:
            return 0.0
        evaluator = COCOeval(truth, truth.loadRes(records), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def _coco_people():
    return load_people(shared_path("coco-mini", "annotations", "person_keypoints_train2017.json"))


def _ae(gt, hw, noise=0.0, seed=0):
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    heat = add_noise(render_heatmaps(gt, out_hw, STRIDE), noise, seed).clamp(0, 1)
    tags = add_noise(render_tags(gt, out_hw, STRIDE), noise, seed + 1)
    return decode_associative_embedding(heat, tags, STRIDE, max_people=max(30, 2 * len(gt)))


def _dekr(gt, hw, noise=0.0, seed=0):
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    heat, offsets = render_dekr(gt, out_hw, STRIDE)
    heat = add_noise(heat, noise, seed).clamp(0, 1)
    offsets = add_noise(offsets, 2 * noise, seed + 1)
    return decode_dekr(heat, offsets, STRIDE, max_people=max(30, 2 * len(gt)))


DECODERS = {"associative_embedding": _ae, "dekr": _dekr}


@pytest.mark.parametrize("method", DECODERS)
@pytest.mark.parametrize("n", [1, 5, 12])
def test_synthetic_clean_maps_give_ap_near_one(method, n):
    hw = (384, 512)
    gt = random_poses(n, *hw, seed=n)
    poses, scores = DECODERS[method](gt, hw)
    assert oks_ap(gt, poses, scores) > 0.95


@pytest.mark.parametrize("method", DECODERS)
@pytest.mark.parametrize(("n", "hw"), [(1, (256, 320)), (5, (384, 512)), (20, (512, 768))])
def test_coco_crowd_clean_maps_give_ap_near_one(method, n, hw):
    gt = synthesize_crowd(_coco_people(), n, *hw, seed=n)
    poses, scores = DECODERS[method](gt, hw)
    assert oks_ap(gt, poses, scores) > 0.95


@pytest.mark.parametrize("method", DECODERS)
def test_noisy_maps_still_give_high_ap(method):
    hw = (384, 512)
    gt = random_poses(8, *hw, seed=3)
    poses, scores = DECODERS[method](gt, hw, noise=0.05, seed=7)
    assert oks_ap(gt, poses, scores) > 0.8


@pytest.mark.parametrize("method", DECODERS)
def test_empty_maps_give_no_people(method):
    hw = (128, 160)
    gt = random_poses(1, *hw)
    gt[..., 2] = 0
    poses, scores = DECODERS[method](gt, hw)
    assert poses.shape[1:] == (17, 3) and poses.shape[0] == scores.shape[0] == 0


def test_ap_helper_fails_on_shifted_poses():
    hw = (384, 512)
    gt = random_poses(5, *hw)
    poses, scores = _ae(gt, hw)
    poses[..., :2] += 40
    assert oks_ap(gt, poses, scores) < 0.2


def test_pose_nms_drops_duplicates_only():
    pose = random_poses(2, 256, 320)
    poses = torch.cat([pose, pose[:1] + torch.tensor([1.0, 0.0, 0.0])])
    kept = pose_nms(poses, torch.tensor([0.9, 0.8, 0.5]), 0.05, 8)
    assert kept.tolist() == [0, 1]


def test_pose_nms_keeps_the_best_heat_of_a_cluster_as_dekr_does():
    """A cluster keeps its pose of the best mean heat, not the first by centre score; a pose sharing
    only 8 of 17 joints is not a duplicate (DEKR: more than 8), one sharing 9 is."""
    pose = random_poses(1, 256, 320)
    shifted = pose + torch.tensor([80.0, 0.0, 0.0])  # every joint far away
    poses = torch.cat([pose, pose + torch.tensor([1.0, 0.0, 0.0]), shifted])
    assert pose_nms(poses, torch.tensor([0.5, 0.9, 0.7]), 0.05, 8).tolist() == [1, 2]
    for shared, expected in ((8, [0, 1]), (9, [0])):
        partial = shifted.clone()
        partial[0, :shared] = pose[0, :shared]
        assert pose_nms(torch.cat([pose, partial]), torch.tensor([0.9, 0.5]), 0.05, 8).tolist() == expected


@pytest.mark.parametrize("head_cls", [AssociativeEmbeddingHead, DEKRHead])
def test_heads_give_stride_four_maps(head_cls):
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 4, 1))
    head = head_cls(backbone, in_channels=16, feature_stride=16, hidden=32)
    first, second = head(torch.randn(2, 3, 64, 96))
    k1 = 17 if head_cls is AssociativeEmbeddingHead else 18
    assert first.shape == (2, k1, 16, 24) and second.shape[0] == 2 and second.shape[2:] == (16, 24)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="feature_stride"):
        AssociativeEmbeddingHead(nn.Identity(), 3, 6)
    with pytest.raises(ValueError, match="heatmaps"):
        decode_associative_embedding(torch.zeros(17, 4, 4), torch.zeros(17, 4, 5))
    with pytest.raises(ValueError, match="offsets"):
        decode_dekr(torch.zeros(18, 4, 4), torch.zeros(17, 4, 4))


def test_grouping_follows_tags():
    """With every tag equal, joints of different people merge, so AP collapses: the tags do the grouping."""
    hw = (384, 512)
    gt = random_poses(6, *hw, seed=5)
    heat = render_heatmaps(gt, (hw[0] // STRIDE, hw[1] // STRIDE), STRIDE)
    poses, scores = decode_associative_embedding(heat, torch.zeros_like(heat), STRIDE)
    assert oks_ap(gt, poses, scores) < 0.2


def test_peak_noise_leaves_the_background_below_dekrs_threshold():
    """The bench's noise moves the people's peaks but leaves the background as it is, below 1e-3:
    noise there would cross DEKR's 0.01 centre threshold all over the map, which a trained network's
    does not."""
    heat, _ = render_dekr(random_poses(3, 256, 320, seed=2), (64, 80), STRIDE)
    noisy = add_peak_noise(heat, 0.05, seed=4)
    background = heat <= 1e-3
    assert background.float().mean() > 0.5 and torch.equal(noisy[background], heat[background])
    assert (noisy[~background] != heat[~background]).float().mean() > 0.9
    assert noisy.min() >= 0 and noisy.max() <= 1
