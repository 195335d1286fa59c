"""The bottom-up baselines recover the people drawn in rendered maps (OKS-based COCO AP)."""

import numpy as np
import pytest
import torch
from torch import nn

from bench.baselines import HEADS, associative_embedding
from bench.baselines.associative_embedding import (
    COCO_JOINT_ORDER,
    AssociativeEmbeddingHead,
    _group,
    decode_associative_embedding,
    peak_nms,
)
from bench.baselines.dekr import CENTRE_THRESHOLD, centre_peaks, decode_dekr, pose_nms
from bench.baselines.flip_test import FLIP_TESTS, FlipTest, merge_associative_embedding, merge_dekr
from bench.baselines.render import (
    _grid,
    add_false_centres,
    add_noise,
    add_peak_noise,
    load_people,
    mirror_poses,
    pose_areas,
    pose_centres,
    random_poses,
    render_dekr,
    render_heatmaps,
    render_tags,
    synthesize_crowd,
)
from bench.baselines.scoring import oks_ap
from tests.compiled_graphs import host_constant_recorder
from tests.shared_data import shared_path

STRIDE = 4


def _coco_people():
    return load_people(shared_path("coco-mini", "annotations", "person_keypoints_train2017.json"))


def _ae_maps(poses, out_hw, noise, seed):
    heat = add_noise(render_heatmaps(poses, out_hw, STRIDE), noise, seed).clamp(0, 1)
    return heat, add_noise(render_tags(poses, out_hw, STRIDE), noise, seed + 1)


def _dekr_maps(poses, out_hw, noise, seed):
    heat, offsets = render_dekr(poses, out_hw, STRIDE)
    return add_noise(heat, noise, seed).clamp(0, 1), add_noise(offsets, 2 * noise, seed + 1)


def _mirrored(gt, out_hw):
    """The crowd as its mirror shows it, people in reverse order (so their tags differ)."""
    return mirror_poses(gt, out_hw[1], STRIDE).flip(0)


def _decoder(render, decode, merge=None):
    """``(gt, hw, noise, seed, max_people) -> (poses, scores)``: ``decode`` of the maps ``render``
    draws of the crowd ``gt`` in an image of ``hw``, keeping ``max_people`` peaks (by default the
    bench's max(30, 2N)); flip-tested with ``merge``, merged with the mirror's maps (noise of their
    own)."""

    def run(gt, hw, noise=0.0, seed=0, max_people=None):
        out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
        maps = render(gt, out_hw, noise, seed)
        if merge is not None:
            maps = merge(maps, render(_mirrored(gt, out_hw), out_hw, noise, seed + 2))
        return decode(*maps, STRIDE, max_people=max_people or max(30, 2 * len(gt)))

    return run


DECODERS = {
    "associative_embedding": _decoder(_ae_maps, decode_associative_embedding),
    "dekr": _decoder(_dekr_maps, decode_dekr),
    "associative_embedding+flip": _decoder(
        _ae_maps, decode_associative_embedding, merge_associative_embedding
    ),
    "dekr+flip": _decoder(_dekr_maps, decode_dekr, merge_dekr),
}


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
    poses, scores = DECODERS["associative_embedding"](gt, hw)
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


def test_pose_nms_measures_closeness_by_the_deciding_poses_diagonal():
    """DEKR's nms_core: j is in i's cluster by i's diagonal. Pose 0, wide (a far wrist), has 16 joints
    7 pixels from pose 1's, which is narrow: 7 is within 0.05 of 0's diagonal, not of 1's."""
    rng = torch.Generator().manual_seed(0)
    wide = torch.cat([100 + 10 * torch.rand(17, 2, generator=rng), torch.full((17, 1), 2.0)], 1)
    wide[16, :2] = torch.tensor([300.0, 100.0])
    narrow = wide + torch.tensor([7.0, 0.0, 0.0])
    narrow[16, :2] = torch.tensor([120.0, 100.0])
    assert pose_nms(torch.stack([wide, narrow]), torch.tensor([0.5, 0.9]), 0.05, 8).tolist() == [1]


def _small_head(head_cls):
    """``head_cls`` on a two-convolution stride-16 backbone."""
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 4, 1))
    return head_cls(backbone, in_channels=16, feature_stride=16, hidden=32)


@pytest.mark.parametrize("head_cls", HEADS.values())
def test_heads_give_stride_four_maps(head_cls):
    head = _small_head(head_cls)
    first, second = head(torch.randn(2, 3, 64, 96))
    k1 = 17 if head_cls is AssociativeEmbeddingHead else 18
    assert first.shape == (2, k1, 16, 24) and second.shape[0] == 2 and second.shape[2:] == (16, 24)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("method", HEADS)
def test_heads_emit_fp32_maps_under_bf16_autocast(method, flip, compiled):
    """The crowd suite times the networks under bf16 autocast and the decoders on fp32 maps: the heads'
    last convs run in fp32, so the maps a timed network gives are the maps its decoder is timed on
    (bf16 maps tie neighbouring heat values, and associative embedding finds a peak in each tie).
    ``compiled``: traced whole by torch.compile, as the suite runs them on a GPU (the eager backend:
    a graph break fails here as it does there, without inductor's compile time). Which calls break a
    graph depends on the torch version: torch 2.11 (`make test-floor`) fails on the call bf785e5 removed."""
    head = _small_head(HEADS[method])
    if flip:
        head = FlipTest(head, *FLIP_TESTS[method])
    if compiled:
        head = torch.compile(head, fullgraph=True, backend="eager")
    with torch.autocast("cpu", torch.bfloat16):
        maps = head(torch.randn(1, 3, 64, 96))
    assert all(m.dtype == torch.float32 for m in maps), [m.dtype for m in maps]


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


def test_peak_noise_moves_peaks_and_leaves_no_false_centres():
    """The bench's noise scales the maps: peaks move, tails stay tails. Added noise (on every value
    above 1e-3) raised false centres above DEKR's 0.01 all over a crowd, each a spurious pose."""
    gt = random_poses(20, 512, 768, seed=5)
    heat, _ = render_dekr(gt, (128, 192), STRIDE)
    noisy = add_peak_noise(heat, 0.02, seed=4)
    assert int((peak_nms(noisy[-1], 3) > 0.01).sum()) == 20
    shown = heat > 1e-6
    ratio = noisy[shown] / heat[shown]
    assert (ratio - 1).abs().max() < 0.15 and ratio.std() > 0.01
    assert torch.equal(noisy[~shown] == 0, heat[~shown] == 0) and noisy.min() >= 0 and noisy.max() <= 1


@pytest.mark.parametrize("method", DECODERS)
def test_a_crowd_of_forty_is_found_with_the_benchs_max_people(method):
    """Forty people with 80 peaks a joint (the bench's max(30, 2N)); DEKR's 30 centres cannot find
    them all (associative embedding's refinement fills in the joints of people past 30 peaks)."""
    hw = (512, 768)
    gt = random_poses(40, *hw, seed=6)
    assert oks_ap(gt, *DECODERS[method](gt, hw)) > 0.95
    if method.startswith("dekr"):
        assert oks_ap(gt, *DECODERS[method](gt, hw, max_people=30)) < 0.8


# ---------------------------------------------------------------------------------------------------
# Each decoding step on its own
# ---------------------------------------------------------------------------------------------------


def _one_person(hw=(192, 320), seed=11):
    return random_poses(1, *hw, seed=seed)


def test_dekr_pose_nms_removes_a_second_centre_of_the_same_person():
    """A second centre peak whose offsets point at the same person's joints: one pose comes back, the
    person's."""
    hw, (h, w) = (192, 320), (48, 80)
    gt = _one_person(hw)
    heat, offsets = render_dekr(gt, (h, w), STRIDE)
    cy, cx = np.unravel_index(int(heat[-1].argmax()), (h, w))
    y2, x2 = (cy + 10) % h, (cx + 10) % w  # well outside the centre's max-pool window
    heat[-1, y2, x2] = 0.8
    offsets[0::2, y2, x2] = gt[0, :, 0] / STRIDE - x2
    offsets[1::2, y2, x2] = gt[0, :, 1] / STRIDE - y2
    poses, scores = decode_dekr(heat, offsets, STRIDE)
    assert poses.shape[0] == scores.shape[0] == 1
    torch.testing.assert_close(poses[0, :, :2], gt[0, :, :2], atol=1e-3, rtol=0)


@pytest.mark.parametrize("n", [1, 20])
def test_false_centres_fill_dekrs_cap_and_merge_into_the_people(n):
    hw, map_hw, cap = (512, 768), (128, 192), 100
    gt = random_poses(n, *hw, seed=n)
    heat, offsets = render_dekr(gt, map_hw, STRIDE)
    false = add_false_centres(heat, cap, STRIDE, seed=n)
    assert (
        torch.equal(false[:-1], heat[:-1]) and (false[-1] >= heat[-1]).all()
    )  # the keypoints' maps untouched
    assert len(centre_peaks(heat[-1:], cap, CENTRE_THRESHOLD)[0]) == n
    # most of them are peaks above DEKR's threshold, even halved by a flip test's average
    assert len(centre_peaks(false[-1:] / 2, cap, CENTRE_THRESHOLD)[0]) >= 0.9 * cap
    true_centres = centre_peaks(heat[-1:], cap, CENTRE_THRESHOLD)[1]
    assert (
        centre_peaks(false[-1:], n, CENTRE_THRESHOLD)[1].sort().values == true_centres.sort().values
    ).all()
    poses, scores = decode_dekr(false, offsets, STRIDE, max_people=cap)
    assert len(poses) == n and oks_ap(gt, poses, scores) > 0.99


def test_false_centres_follow_their_seed_and_check_their_arguments():
    heat = render_dekr(random_poses(3, 256, 256), (64, 64), STRIDE)[0]
    one, again, other = (add_false_centres(heat, 10, STRIDE, seed=s) for s in (0, 0, 1))
    assert torch.equal(one, again) and not torch.equal(one, other)
    assert torch.equal(add_false_centres(heat, 0, STRIDE), heat)
    for bad in ({"count": -1}, {"count": 5, "peak": (0.0, 0.1)}, {"count": 5, "peak": (0.2, 0.1)}):
        with pytest.raises(ValueError, match="count must be"):
            add_false_centres(heat, stride=STRIDE, **bad)


def test_dekr_keeps_centres_above_its_threshold_only():
    """Two people, one centre peak at 0.005: below DEKR's 0.01, found at a threshold of 0.001."""
    hw = (192, 320)
    gt = random_poses(2, *hw, seed=12)
    heat, offsets = render_dekr(gt, (hw[0] // STRIDE, hw[1] // STRIDE), STRIDE)
    faint = render_dekr(gt[1:], (hw[0] // STRIDE, hw[1] // STRIDE), STRIDE)[0][-1]
    heat[-1] = torch.maximum(
        render_dekr(gt[:1], (hw[0] // STRIDE, hw[1] // STRIDE), STRIDE)[0][-1], 0.005 * faint
    )
    assert decode_dekr(heat, offsets, STRIDE)[0].shape[0] == 1
    assert decode_dekr(heat, offsets, STRIDE, centre_threshold=0.001)[0].shape[0] == 2


def _upsampled_at(heat: np.ndarray, x: int, y: int, stride: int) -> float:
    """DEKR's bilinear upsampling by ``stride`` (map pixel j on image pixel stride * j, edges
    repeated) read at image pixel (x, y)."""
    h, w = heat.shape
    sx, sy = min(x / stride, w - 1.0), min(y / stride, h - 1.0)
    x0, y0 = int(np.floor(sx)), int(np.floor(sy))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = sx - x0, sy - y0
    top = heat[y0, x0] * (1 - fx) + heat[y0, x1] * fx
    bottom = heat[y1, x0] * (1 - fx) + heat[y1, x1] * fx
    return float(top * (1 - fy) + bottom * fy)


def test_dekr_joint_score_is_centre_times_upsampled_heat():
    """On a non-square map: joint k scores the centre's peak value times keypoint k's heat upsampled
    to the image, read at the pixel under the regressed joint (computed here by hand)."""
    hw = (160, 320)
    gt = _one_person(hw, seed=13)
    heat, offsets = render_dekr(gt, (hw[0] // STRIDE, hw[1] // STRIDE), STRIDE)
    heat = (0.9 * heat).clamp(0, 1)
    poses, scores = decode_dekr(heat, offsets, STRIDE)
    centre = float(heat[-1].max())
    maps = heat.numpy()
    for k, (x, y, score) in enumerate(poses[0].tolist()):
        expected = centre * _upsampled_at(maps[k], int(np.floor(x)), int(np.floor(y)), STRIDE)
        assert score == pytest.approx(expected, rel=1e-4), k
    assert float(scores[0]) == pytest.approx(float(poses[0, :, 2].mean()), rel=1e-6)  # the joints' mean


def test_dekr_joint_heat_is_one_on_the_joints_the_maps_peak_at():
    """Joints on map grid points read the heat of their own peak: 1 (it was 0.914 with the
    upsampling that maps pixel j to image pixel 4j + 1.5)."""
    hw = (160, 320)
    gt = _one_person(hw, seed=13)
    gt[..., :2] = (gt[..., :2] / STRIDE).round() * STRIDE
    heat, offsets = render_dekr(gt, (hw[0] // STRIDE, hw[1] // STRIDE), STRIDE)
    poses, _ = decode_dekr(heat, offsets, STRIDE)
    centre = float(heat[-1].max())
    torch.testing.assert_close(poses[0, :, 2], torch.full((17,), centre), atol=1e-5, rtol=0)


def test_dekr_pose_nms_keeps_the_best_joint_heat_not_the_best_centre():
    """Two centres of one person: the stronger centre's offsets land a pixel off the joints (less
    heat), the weaker's on them. DEKR keeps the pose of the best keypoint heat, the weaker centre's."""
    hw, (h, w) = (192, 320), (48, 80)
    gt = _one_person(hw)
    heat, offsets = render_dekr(gt, (h, w), STRIDE)
    cy, cx = np.unravel_index(int(heat[-1].argmax()), (h, w))
    y2, x2 = (cy + 10) % h, (cx + 10) % w
    heat[-1, y2, x2] = 0.6
    offsets[0::2, y2, x2] = gt[0, :, 0] / STRIDE - x2
    offsets[1::2, y2, x2] = gt[0, :, 1] / STRIDE - y2
    offsets[0::2, cy, cx] += 0.5  # two image pixels right of every joint
    poses, scores = decode_dekr(heat, offsets, STRIDE)
    assert poses.shape[0] == 1
    torch.testing.assert_close(poses[0, :, :2], gt[0, :, :2], atol=1e-3, rtol=0)


def test_dekr_pose_nms_merges_two_centres_of_a_person_with_few_labelled_joints():
    """A person with 8 labelled joints: the unlabelled ones are regressed to one point from either
    centre, so the two poses agree on all 17 joints and merge (more than 8 must agree)."""
    hw, (h, w) = (192, 320), (48, 80)
    gt = _one_person(hw)
    gt[0, 8:, 2] = 0
    heat, offsets = render_dekr(gt, (h, w), STRIDE)
    cy, cx = np.unravel_index(int(heat[-1].argmax()), (h, w))
    heat[-1, (cy + 10) % h, (cx + 10) % w] = 0.8  # the offsets there point at the same person
    assert decode_dekr(heat, offsets, STRIDE)[0].shape[0] == 1


@pytest.mark.parametrize("tag_dims", [1, 2])
def test_associative_embedding_refinement_fills_a_faint_joint_from_its_own_tag(tag_dims):
    """Person 1's left wrist peaks at 0.05, below the 0.1 detection threshold, while the others' are
    strong: refinement finds it where heat minus rounded tag distance peaks, at person 1's own wrist
    (tags off their integers by noise, which the rounding absorbs). With two tag dimensions (flip
    testing) the first is the same for everyone, so the people are told apart by the second alone."""
    hw, joint = (256, 384), 9
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    gt = random_poses(3, *hw, seed=14)
    heat = render_heatmaps(gt, out_hw, STRIDE)
    others = render_heatmaps(gt[[0, 2]], out_hw, STRIDE)[joint]
    heat[joint] = torch.maximum(others, 0.05 * render_heatmaps(gt[1:2], out_hw, STRIDE)[joint])
    tags = add_noise(render_tags(gt, out_hw, STRIDE), 0.1, seed=3)
    if tag_dims == 2:
        tags = torch.stack([torch.zeros_like(tags), tags], -1)
    poses, _ = decode_associative_embedding(heat, tags, STRIDE)
    assert poses.shape[0] == 3
    person = int((poses[:, 0, :2] - gt[1, 0, :2]).norm(dim=-1).argmin())  # matched by the nose
    assert (poses[person, joint, :2] - gt[1, joint, :2]).norm() < STRIDE
    assert poses[person, joint, 2] == pytest.approx(0.05, abs=0.01)


def test_associative_embedding_refinement_leaves_a_joint_without_heat_missing():
    """HigherHRNet fills a missing joint only where the heat is above 0: a joint type with no heat at
    all stays at (0, 0) with score 0, wherever the person's tag matches best."""
    hw = (192, 256)
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    gt = random_poses(2, *hw, seed=23)
    heat, tags = render_heatmaps(gt, out_hw, STRIDE), render_tags(gt, out_hw, STRIDE) + 3.0
    heat[16] = 0
    poses, _ = decode_associative_embedding(heat, tags, STRIDE)
    assert poses.shape == (2, 17, 3)
    assert (poses[:, 16] == 0).all() and (poses[:, :16, 2] > 0.9).all()


def test_associative_embedding_refinement_in_chunks_matches_one_pass(monkeypatch):
    """Missing joints filled one at a time (the chunk a crowd at 800x1333 needs) as all at once."""
    hw = (256, 384)
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    gt = random_poses(4, *hw, seed=21)
    heat = render_heatmaps(gt, out_hw, STRIDE)
    heat[3:9] *= 0.05  # six joints under the detection threshold: refinement fills 24
    tags = add_noise(render_tags(gt, out_hw, STRIDE), 0.1, seed=5)
    whole = decode_associative_embedding(heat, tags, STRIDE)
    monkeypatch.setitem(associative_embedding.REFINE_CHUNK_VALUES, "cpu", 1)
    chunked = decode_associative_embedding(heat, tags, STRIDE)
    assert whole[0].shape == (4, 17, 3)
    assert (whole[0][:, 3:9, 2] > 0).all()
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_associative_embedding_defaults_are_higherhrnets_coco_test():
    """HigherHRNet's COCO test settings: peaks of one joint two map pixels apart (8 image pixels on
    the projected maps) both survive NMS over 5 image pixels, where a 17-pixel window or NMS over 5 map
    pixels keeps one; at most 30 peaks a joint (31 lone noses give 30 people)."""
    heat, tags = torch.zeros(17, 16, 24), torch.zeros(17, 16, 24)
    heat[0, 8, 10], heat[0, 8, 12], tags[0, 8, 12] = 0.9, 0.8, 5.0  # two people's noses
    assert decode_associative_embedding(heat, tags, STRIDE)[0].shape[0] == 2
    assert decode_associative_embedding(heat, tags, STRIDE, nms_kernel=17)[0].shape[0] == 1
    assert decode_associative_embedding(heat, tags, STRIDE, project_to_image=False)[0].shape[0] == 1
    heat, tags = torch.zeros(17, 16, 24), torch.zeros(17, 16, 24)
    for person in range(31):
        row, col = 2 * (person // 8) + 1, 3 * (person % 8) + 1
        heat[0, row, col], tags[0, row, col] = 0.9 - 0.01 * person, 3.0 * person
    assert decode_associative_embedding(heat, tags, STRIDE)[0].shape[0] == 30
    assert decode_associative_embedding(heat, tags, STRIDE, max_people=31)[0].shape[0] == 31


def test_associative_embedding_groups_the_higher_peak_of_equal_tag_distance():
    """Joint 1 has two peaks within a tag unit of person 0 (rounded distance 0): the higher joins it
    (cost round(distance) * 100 - heat), the lower starts a new person, whichever comes first."""
    vals = np.array([[0.9, 0.0], [0.3, 0.9]])
    tags = np.array([[0.0, 0.0], [0.2, 0.3]])[..., None]  # one tag dimension
    xy = np.arange(8, dtype=float).reshape(2, 2, 2)
    people = _group(vals, tags, xy, (0, 1), threshold=0.1, tag_threshold=1.0)
    assert people.shape == (2, 2, 4)
    assert people[0, 1].tolist() == [6.0, 7.0, 0.9, 0.3] and people[1, 1].tolist() == [4.0, 5.0, 0.3, 0.2]


def test_associative_embedding_groups_in_higherhrnets_joint_order():
    """HigherHRNet's ``joint_order`` (1-based there: head, shoulders, hips, then limbs outward) is the
    decoder's for COCO, and the order decides who is who. Lone peaks of tag 1.7 (left elbow, 7), 0.9
    (left hip, 11) and 0.0 (right hip, 12): in HigherHRNet's order the hips group (mean tag 0.45) and
    the elbow, 1.25 from them, starts a second person; in index order the elbow and the left hip group
    (mean 1.3) and the right hip starts the second. Refinement then gives each first person the faint
    left-ear peak nearer its mean tag: 0.4 (x = 8) or 1.3 (x = 48)."""
    published = [1, 2, 3, 4, 5, 6, 7, 12, 13, 8, 9, 10, 11, 14, 15, 16, 17]
    assert COCO_JOINT_ORDER == tuple(joint - 1 for joint in published)
    heat, tags = torch.zeros(17, 16, 16), torch.zeros(17, 16, 16)
    for joint, x, value, tag in ((7, 2, 0.9, 1.7), (11, 8, 0.9, 0.9), (12, 14, 0.9, 0.0)):
        heat[joint, 2, x], tags[joint, 2, x] = value, tag
    for x, tag in ((2, 0.4), (12, 1.3)):
        heat[3, 10, x], tags[3, 10, x] = 0.05, tag  # below the detection threshold: found by refinement
    default, _ = decode_associative_embedding(heat, tags, STRIDE)
    explicit, _ = decode_associative_embedding(heat, tags, STRIDE, joint_order=COCO_JOINT_ORDER)
    by_index, _ = decode_associative_embedding(heat, tags, STRIDE, joint_order=tuple(range(17)))
    assert torch.equal(default, explicit)
    assert default[:, 3, 0].tolist() == [8.0, 48.0] and by_index[:, 3, 0].tolist() == [48.0, 8.0]


@pytest.mark.parametrize("project_to_image", [True, False])
def test_associative_embedding_moves_each_peak_a_quarter_pixel_to_its_higher_neighbour(project_to_image):
    """One person: a joint at map coordinate m peaks at round(m) and moves a quarter pixel towards m, in
    each axis: an image pixel on the maps upsampled to the image (HigherHRNet), else a map pixel."""
    hw = (192, 320)
    gt = _one_person(hw, seed=15)
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    poses, _ = decode_associative_embedding(
        render_heatmaps(gt, out_hw, STRIDE),
        render_tags(gt, out_hw, STRIDE),
        STRIDE,
        project_to_image=project_to_image,
    )
    m = gt[0, :, :2] / STRIDE
    step = 0.25 if project_to_image else 0.25 * STRIDE
    expected = m.round() * STRIDE + step * torch.sign(m - m.round())
    torch.testing.assert_close(poses[0, :, :2], expected, atol=1e-4, rtol=0)


def test_associative_embedding_projects_the_maps_to_the_image_as_higherhrnet():
    """Two people: on the maps upsampled to the image each joint keeps its map peak, an image pixel
    finer; a stray joint peak on the border row is one peak, not one per repeated edge pixel."""
    hw = (192, 256)
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    gt = random_poses(2, *hw, seed=4)
    gt[0, 16, 1] = hw[0] - 1.0  # past the last map row's image position
    heat, tags = render_heatmaps(gt, out_hw, STRIDE), render_tags(gt, out_hw, STRIDE)
    projected, _ = decode_associative_embedding(heat, tags, STRIDE)
    on_maps, _ = decode_associative_embedding(heat, tags, STRIDE, project_to_image=False)
    assert projected.shape == on_maps.shape == (2, 17, 3)
    assert (projected[..., :2] - on_maps[..., :2]).abs().max() <= 0.75 * STRIDE
    assert oks_ap(gt, projected, projected[..., 2].mean(1)) > 0.95


# ---------------------------------------------------------------------------------------------------
# The rendered maps and the decoders' limits
# ---------------------------------------------------------------------------------------------------


def test_rendered_maps_have_their_gaussians_and_centres():
    """A joint on map pixel (5, 3) peaks at 1 there and falls to exp(-1 / (2 sigma^2)) one pixel off
    (sigma 2 map pixels); centres and areas take the labelled joints only."""
    poses = torch.zeros(1, 17, 3)
    poses[0, :3] = torch.tensor([[5 * STRIDE, 3 * STRIDE, 2], [9 * STRIDE, 7 * STRIDE, 1], [40.0, 40.0, 2]])
    heat = render_heatmaps(poses, (12, 16), STRIDE)
    assert heat[0, 3, 5] == 1 and heat[0, 3, 6] == pytest.approx(np.exp(-1 / 8)) and heat[3:].max() == 0
    torch.testing.assert_close(pose_centres(poses), torch.tensor([[(20 + 36 + 40) / 3, (12 + 28 + 40) / 3]]))
    assert pose_areas(poses).tolist() == [(40.0 - 20.0) * (40.0 - 12.0)]


@pytest.mark.parametrize("shift", [3.0, 5.5, 9.0])
def test_oks_ap_of_one_shifted_person_counts_the_thresholds_its_oks_passes(shift):
    """One person, one pose shifted ``shift`` px: AP is the share of the thresholds 0.50:0.05:0.95 its
    OKS reaches, the OKS at COCO's sigmas on the scale of the keypoint box's area."""
    from kernels.oks import COCO_SIGMAS

    gt = random_poses(1, 200, 300, seed=4)
    pose = gt.clone()
    pose[..., 0] += shift
    area = float(pose_areas(gt)[0])
    oks = np.exp(-(shift**2) / (2 * area * (2 * COCO_SIGMAS.double().numpy()) ** 2)).mean()
    thresholds = np.linspace(0.5, 0.95, 10)
    assert np.abs(thresholds - oks).min() > 0.005  # not on a threshold, where rounding would decide
    assert oks_ap(gt, pose, torch.ones(1)) == pytest.approx(float((oks >= thresholds).mean()))


def test_tags_and_offsets_are_the_nearest_persons_far_from_every_joint_too():
    """Person 0 at the map's left edge, person 1 at x = 600 px: at the right edge, some 200 px from
    every joint, all Gaussians underflow to zero, and the tag and DEKR's offsets are still person
    1's, not person 0's."""
    poses = torch.zeros(2, 17, 3)
    poses[0] = torch.tensor([8.0, 8.0, 2])
    poses[1] = torch.tensor([600.0, 8.0, 2])
    out_hw = (12, 200)  # 48 x 800 px
    heat, offsets = render_dekr(poses, out_hw, STRIDE)
    assert heat[:, :, -1].max() == 0
    tags = render_tags(poses, out_hw, STRIDE)
    assert tags[:, :, 0].eq(0).all() and tags[:, :, -1].eq(1).all()
    far_x = STRIDE * (out_hw[1] - 1)
    torch.testing.assert_close(offsets[0::2, 2, -1], torch.full((17,), (600.0 - far_x) / STRIDE))


@pytest.mark.parametrize("n", [1, 5, 10, 20, 50])
def test_crowd_grid_cells_are_about_square(n):
    """At the GPU suite's 800x1333 the crowd's grid holds ``n`` people in cells of width / height
    within [0.6, 1.7] (the first grid's cells were 2.5 times wider than tall at 50 people)."""
    rows, cols = _grid(n, 800, 1333)
    assert rows * cols >= n
    assert 0.6 <= (1333 / cols) / (800 / rows) <= 1.7


def test_add_noise_follows_its_seed():
    maps = torch.zeros(3, 8, 8)
    assert torch.equal(add_noise(maps, 0.1, seed=1), add_noise(maps, 0.1, seed=1))
    assert not torch.equal(add_noise(maps, 0.1, seed=1), add_noise(maps, 0.1, seed=2))
    assert add_noise(maps, 0.1, seed=1).std() == pytest.approx(0.1, rel=0.2)


def test_load_people_skips_crowds_and_sparse_people(tmp_path):
    import json

    keypoints = [1.0, 2.0, 2] * 17
    annotations = [
        {"keypoints": keypoints, "num_keypoints": 17, "iscrowd": 0},
        {"keypoints": keypoints, "num_keypoints": 17, "iscrowd": 1},
        {"keypoints": keypoints, "num_keypoints": 5, "iscrowd": 0},
    ]
    (tmp_path / "ann.json").write_text(json.dumps({"annotations": annotations}))
    people = load_people(tmp_path / "ann.json")
    assert len(people) == 1 and people[0].shape == (17, 3)


@pytest.mark.parametrize(
    ("hw", "apart", "survives"),
    [((1280, 1600), 3, False), ((800, 1200), 3, True), ((800, 1200), 2, False), ((320, 480), 2, True)],
)
def test_dekr_centre_pool_grows_with_the_map(hw, apart, survives):
    """DEKR pools centres over 7 map pixels where the map's mean side passes 300, 5 past 200, 3 below:
    a second centre ``apart`` pixels from the first (its pose elsewhere, so pose NMS keeps it) survives
    a pool that does not reach it."""
    h, w = hw[0] // STRIDE, hw[1] // STRIDE
    gt = random_poses(1, *hw, seed=16)
    heat, offsets = render_dekr(gt, (h, w), STRIDE)
    cy, cx = np.unravel_index(int(heat[-1].argmax()), (h, w))
    heat[-1, cy, cx + apart] = 0.9
    offsets[0::2, cy, cx + apart] += 200 / STRIDE
    assert decode_dekr(heat, offsets, STRIDE)[0].shape[0] == (2 if survives else 1)


def test_dekr_returns_at_most_max_people():
    hw = (256, 384)
    gt = random_poses(5, *hw, seed=17)
    heat, offsets = render_dekr(gt, (hw[0] // STRIDE, hw[1] // STRIDE), STRIDE)
    assert decode_dekr(heat, offsets, STRIDE, max_people=3)[0].shape[0] == 3
    assert decode_dekr(heat, offsets, STRIDE)[0].shape[0] == 5


def test_associative_embedding_ignores_peaks_below_its_threshold():
    """A stray blob at 0.09 with its own tag (below the 0.1 detection threshold) starts no person."""
    hw = (256, 384)
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    gt = random_poses(2, *hw, seed=18)
    heat, tags = render_heatmaps(gt, out_hw, STRIDE), render_tags(gt, out_hw, STRIDE)
    heat[4, 2, 2], tags[4, 2, 2] = 0.09, 7.0
    assert decode_associative_embedding(heat, tags, STRIDE)[0].shape[0] == 2


# ---------------------------------------------------------------------------------------------------
# Flip testing
# ---------------------------------------------------------------------------------------------------


def test_mirrored_dekr_maps_merge_back_into_the_images():
    """The mirror's maps, mirrored back (columns, left/right joints, the sign of x offsets), are the
    image's: merging them changes nothing."""
    hw = (256, 384)
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    gt = random_poses(4, *hw, seed=21)
    heat, offsets = render_dekr(gt, out_hw, STRIDE)
    # the mirror's people in reverse order: offsets everywhere point to the nearest person, whatever
    # the order (far from every centre too, where all the centre Gaussians are zero)
    mirrored = render_dekr(_mirrored(gt, out_hw), out_hw, STRIDE)
    merged_heat, merged_offsets = merge_dekr((heat, offsets), mirrored)
    torch.testing.assert_close(merged_heat, heat, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged_offsets, offsets, atol=1e-4, rtol=0)
    halved = merge_dekr((heat, offsets), (torch.zeros_like(heat), torch.zeros_like(offsets)))  # averages
    torch.testing.assert_close(halved, (heat / 2, offsets / 2))
    # batched maps [B, C, h, w] merge the same way
    batched = merge_dekr((heat[None], offsets[None]), (merged_heat[None].flip(-1), offsets[None].flip(-1)))
    assert batched[0].shape == (1, *heat.shape) and batched[1].shape == (1, *offsets.shape)


def test_mirrored_associative_embedding_maps_merge_back_into_the_images():
    """Heatmaps average back to the image's; each pixel's tag pair is (the image's tag, the mirror's
    tag of the same person), the mirror numbering the people in reverse."""
    hw = (256, 384)
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    gt = random_poses(4, *hw, seed=22)
    heat, tags = render_heatmaps(gt, out_hw, STRIDE), render_tags(gt, out_hw, STRIDE)
    mirrored = _mirrored(gt, out_hw)
    merged_heat, merged_tags = merge_associative_embedding(
        (heat, tags), (render_heatmaps(mirrored, out_hw, STRIDE), render_tags(mirrored, out_hw, STRIDE))
    )
    torch.testing.assert_close(merged_heat, heat, atol=1e-5, rtol=0)
    assert merged_tags.shape == (*tags.shape, 2) and torch.equal(merged_tags[..., 0], tags)
    assert torch.equal(merged_tags[..., 1], 3 - tags)  # everywhere: the nearest person's tag
    halved, _ = merge_associative_embedding((heat, tags), (torch.zeros_like(heat), tags))  # averages
    torch.testing.assert_close(halved, heat / 2)


def test_mirror_poses_reflects_map_columns_and_swaps_sides():
    poses = torch.zeros(1, 17, 3)
    poses[0, 1] = torch.tensor([2 * STRIDE, 5.0, 2])  # left eye on map column 2
    mirrored = mirror_poses(poses, map_width=10, stride=STRIDE)
    assert mirrored[0, 2].tolist() == [7 * STRIDE, 5.0, 2] and mirrored[0, 1, 2] == 0  # now the right eye
    torch.testing.assert_close(mirror_poses(mirrored, 10, STRIDE), poses)


@pytest.mark.parametrize("method", ["associative_embedding", "dekr"])
def test_flip_test_runs_image_and_mirror_as_one_batch_and_merges(method):
    """One call of the network on 2B images: the images, then their mirrors shifted as the published
    test code shifts them (DEKR: ``image[..., :-3] = image[..., 3:]`` after the flip; HigherHRNet: no
    shift); the halves of its output merged."""
    seen = []

    class Recorder(nn.Module):
        def forward(self, images):
            seen.append(images)
            k = 17 if method == "associative_embedding" else 18
            first = images[:, :1].expand(-1, k, -1, -1)[..., ::STRIDE, ::STRIDE]
            second = images[:, 1:2].expand(-1, 2 * 17 if method == "dekr" else 17, -1, -1)[
                ..., ::STRIDE, ::STRIDE
            ]
            return first, second

    merge, shift = FLIP_TESTS[method]
    images = torch.randn(2, 3, 16, 24)
    out = FlipTest(Recorder(), merge, shift)(images)
    mirror = images.flip(3).clone()
    if shift:
        mirror[..., :-shift] = mirror[..., shift:].clone()
    assert len(seen) == 1 and torch.equal(seen[0], torch.cat([images, mirror]))
    direct, mirrored = Recorder()(images), Recorder()(mirror)
    for got, want in zip(out, merge(direct, mirrored), strict=True):
        torch.testing.assert_close(got, want)
    assert (shift == 3) == (method == "dekr")
    with pytest.raises(ValueError, match="shifted"):
        FlipTest(Recorder(), merge, shift=24)(images)
    with pytest.raises(ValueError, match="shift"):
        FlipTest(Recorder(), merge, shift=-1)


@pytest.mark.parametrize("flip", [False, True], ids=["single", "flip"])
@pytest.mark.parametrize("method", HEADS)
def test_compiled_networks_hold_no_tensor_made_on_the_host_and_match_eager(method, flip):
    """What the crowd suite compiles and replays as a CUDA graph, flip tests included: none of its
    graphs holds a host constant (:func:`tests.compiled_graphs.host_constant_recorder`), which would
    cost a blocking copy a call and the CUDA graph."""
    network = _small_head(HEADS[method]).eval()
    if flip:
        network = FlipTest(network, *FLIP_TESTS[method])
    images = torch.randn(2, 3, 64, 96)
    backend, constants = host_constant_recorder()
    torch._dynamo.reset()
    with torch.no_grad():
        eager = network(images)
        compiled = torch.compile(network, fullgraph=True, backend=backend)(images)
    torch._dynamo.reset()
    assert not constants
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want)


def test_one_dimensional_tags_decode_alike_with_or_without_their_last_axis():
    hw = (256, 384)
    out_hw = (hw[0] // STRIDE, hw[1] // STRIDE)
    gt = random_poses(3, *hw, seed=23)
    heat, tags = render_heatmaps(gt, out_hw, STRIDE), add_noise(render_tags(gt, out_hw, STRIDE), 0.1, 2)
    flat, vector = (
        decode_associative_embedding(heat, tags),
        decode_associative_embedding(heat, tags[..., None]),
    )
    assert all(torch.equal(a, b) for a, b in zip(flat, vector, strict=True))
    with pytest.raises(ValueError, match="tags"):
        decode_associative_embedding(heat, tags[..., None, None])
