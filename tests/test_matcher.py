"""jcra.matcher: optimal assignments, batch equals each image alone, crowd and empty images."""

import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from jcra.matcher import HungarianMatcher
from jcra.targets import pad_targets
from kernels.oks import COCO_SIGMAS, pose_matching_cost_reference

K = 17
# all different, and focal parameters other than the defaults: a weight passed as another, or a default
# used for a given one, changes the cost
WEIGHTS = {"w_class": 2.0, "w_kpt": 70.0, "w_oks": 7.0, "alpha": 0.3, "gamma": 1.5}


def _targets(counts, gen, crowd_every=0):
    """One target dict per image with ``counts[b]`` people in [0, 1] coordinates of an image of random,
    non-square size; with crowd_every = n, every n-th person is a crowd region."""
    targets = []
    for g in counts:
        kpts = torch.rand(g, K, 3, generator=gen)
        kpts[..., 2] = torch.randint(0, 3, (g, K), generator=gen).float()
        area = 0.02 + 0.2 * torch.rand(g, generator=gen)
        size = torch.randint(200, 1333, (2,), generator=gen)
        target = {"keypoints": kpts, "area": area, "size": size}
        if crowd_every:
            target["iscrowd"] = (torch.arange(g) % crowd_every == crowd_every - 1).long()
        targets.append(target)
    return targets


def _predictions(s, b, q, gen):
    return 3 * torch.randn(s, b, q, generator=gen), torch.rand(s, b, q, K, 2, generator=gen)


def _image_cost(logits, keypoints, target):
    """Reference cost ``[Q, G]`` (fp64) of one image's predictions against all its targets as given."""
    return pose_matching_cost_reference(
        logits[None].double(),
        keypoints[None].double(),
        target["keypoints"][None].double(),
        target["area"][None].double(),
        COCO_SIGMAS,
        **WEIGHTS,
        image_size=target["size"].flip(0)[None].double(),
    )[0]


def _brute_force_min(cost):
    """Smallest total cost over all one-to-one assignments of min(Q, G) pairs."""
    q, g = len(cost), len(cost[0])
    if q >= g:
        return min(
            sum(cost[r][c] for c, r in enumerate(rows)) for rows in itertools.permutations(range(q), g)
        )
    return min(sum(cost[r][c] for r, c in enumerate(cols)) for cols in itertools.permutations(range(g), q))


def test_cost_of_every_stage_and_image_is_the_reference_cost_with_the_matchers_weights():
    gen = torch.Generator().manual_seed(11)
    logits, keypoints = _predictions(2, 3, 6, gen)
    targets = _targets([2, 4, 1], gen)
    cost = HungarianMatcher(COCO_SIGMAS, **WEIGHTS)._cost(logits, keypoints, pad_targets(targets, K, "cpu"))
    for stage, image in itertools.product(range(2), range(3)):
        g = len(targets[image]["area"])
        expected = _image_cost(logits[stage, image], keypoints[stage, image], targets[image])
        torch.testing.assert_close(cost[stage * 3 + image, :, :g].double(), expected, rtol=1e-5, atol=1e-4)


def test_assignment_is_optimal_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher(COCO_SIGMAS, **WEIGHTS)
    for q, counts in [(4, [0, 1, 3, 4]), (3, [5, 2]), (5, [3, 3, 1]), (1, [2, 1])]:
        logits, keypoints = _predictions(1, len(counts), q, gen)
        targets = _targets(counts, gen)
        matches = matcher(logits, keypoints, targets)
        for b, (qi, ti) in enumerate(matches[0]):
            cost = _image_cost(logits[0, b], keypoints[0, b], targets[b])
            assert len(qi) == len(ti) == min(q, counts[b])
            assert len(set(qi.tolist())) == len(qi) and len(set(ti.tolist())) == len(ti)
            if len(qi):
                # kernel cost in fp32, brute force in fp64
                total = cost[qi, ti].sum().item()
                assert total == pytest.approx(_brute_force_min(cost.tolist()), abs=1e-4)


def test_batch_and_stages_equal_each_image_alone():
    gen = torch.Generator().manual_seed(1)
    s, q, counts = 3, 12, [4, 0, 7, 1]
    logits, keypoints = _predictions(s, len(counts), q, gen)
    targets = _targets(counts, gen, crowd_every=3)
    matcher = HungarianMatcher(COCO_SIGMAS, **WEIGHTS)
    batched = matcher(logits, keypoints, targets)
    assert len(batched) == s and all(len(stage) == len(counts) for stage in batched)
    for stage, b in itertools.product(range(s), range(len(counts))):
        alone = matcher(
            logits[stage : stage + 1, b : b + 1], keypoints[stage : stage + 1, b : b + 1], [targets[b]]
        )
        for got, want in zip(batched[stage][b], alone[0][0], strict=True):
            assert got.dtype == torch.int64 and got.device.type == "cpu"
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_batch_equals_each_image_alone_when_oks_decides():
    """Stages and images batched take each image's own area and size: predictions near crowded people
    of different areas on images of different sizes, matched by OKS alone, as each image alone."""
    gen = torch.Generator().manual_seed(7)
    s, q, counts = 3, 9, [5, 3, 6]
    targets = []
    for g in counts:
        centre = 0.3 + 0.4 * torch.rand(1, 1, 2, generator=gen)
        xy = centre + 0.06 * torch.randn(g, K, 2, generator=gen)  # people overlap: OKS decides
        kpts = torch.cat([xy, torch.full((g, K, 1), 2.0)], -1)
        area = 0.005 + 0.05 * torch.rand(g, generator=gen)
        size = torch.randint(200, 1333, (2,), generator=gen)
        targets.append({"keypoints": kpts, "area": area, "size": size})
    logits = torch.zeros(s, len(counts), q)
    keypoints = torch.rand(s, len(counts), q, K, 2, generator=gen)
    for stage, (b, target) in itertools.product(range(s), enumerate(targets)):
        person = torch.randint(0, counts[b], (q,), generator=gen)
        keypoints[stage, b] = target["keypoints"][person, :, :2] + 0.02 * torch.randn(q, K, 2, generator=gen)
    matcher = HungarianMatcher(COCO_SIGMAS, w_class=0.0, w_kpt=0.0, w_oks=1.0)
    batched = matcher(logits, keypoints, targets)
    for stage, b in itertools.product(range(s), range(len(counts))):
        alone = matcher(
            logits[stage : stage + 1, b : b + 1], keypoints[stage : stage + 1, b : b + 1], [targets[b]]
        )
        for got, want in zip(batched[stage][b], alone[0][0], strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_crowd_regions_are_never_matched_and_indices_refer_to_targets_as_given():
    gen = torch.Generator().manual_seed(2)
    counts = [6, 3]
    logits, keypoints = _predictions(2, 2, 10, gen)
    targets = _targets(counts, gen, crowd_every=2)
    targets.append({**_targets([2], gen)[0], "iscrowd": torch.ones(2, dtype=torch.long)})  # all crowd
    logits, keypoints = torch.cat([logits, logits[:, :1]], 1), torch.cat([keypoints, keypoints[:, :1]], 1)
    matches = HungarianMatcher(COCO_SIGMAS, **WEIGHTS)(logits, keypoints, targets)
    for s, stage in enumerate(matches):
        for b, (qi, ti) in enumerate(stage[:2]):
            crowd = targets[b]["iscrowd"].bool()
            assert not crowd[ti].any()
            assert sorted(ti.tolist()) == torch.nonzero(~crowd).reshape(-1).tolist()
            # the optimum over the non-crowd people, reached through indices into the targets as given
            cost = _image_cost(logits[s, b], keypoints[s, b], targets[b])
            people = cost[:, ~crowd]
            rows, cols = linear_sum_assignment(people.numpy())
            assert cost[qi, ti].sum().item() == pytest.approx(people[rows, cols].sum().item(), abs=1e-4)
        assert len(stage[2][0]) == 0


def test_triton_solver_matches_scipy_optimum_with_crowd_and_empty_images():
    """solver="triton" (the CUDA path; the interpreter here) gives scipy's optimal totals, and its
    target indices refer to the targets as given (crowd entries skipped)."""
    gen = torch.Generator().manual_seed(5)
    counts = [5, 0, 3, 12]
    logits, keypoints = _predictions(2, len(counts), 9, gen)
    targets = _targets(counts, gen, crowd_every=4)
    scipy_matches = HungarianMatcher(COCO_SIGMAS, **WEIGHTS, solver="scipy")(logits, keypoints, targets)
    triton_matches = HungarianMatcher(COCO_SIGMAS, **WEIGHTS, solver="triton")(logits, keypoints, targets)
    for stage, b in itertools.product(range(2), range(len(counts))):
        (qs, ts), (qt, tt) = scipy_matches[stage][b], triton_matches[stage][b]
        assert len(qt) == len(tt) == len(qs)
        assert len(set(qt.tolist())) == len(qt)
        assert not targets[b].get("iscrowd", torch.zeros(counts[b]))[tt].bool().any()
        cost = _image_cost(logits[stage, b], keypoints[stage, b], targets[b])
        assert cost[qt, tt].sum().item() == pytest.approx(cost[qs, ts].sum().item(), abs=1e-4)


@pytest.mark.parametrize("solver", ["scipy", "triton"])
def test_match_gives_the_per_image_matches_as_one_batch_per_stage(solver):
    """match() on padded targets: (batch, query, column) with image 0's pairs first, each stage a row,
    equal to the per-image interface's pairs once columns are mapped back through the kept indices."""
    gen = torch.Generator().manual_seed(8)
    counts = [5, 0, 3, 12]
    logits, keypoints = _predictions(3, len(counts), 9, gen)
    targets = _targets(counts, gen, crowd_every=4)
    matcher = HungarianMatcher(COCO_SIGMAS, **WEIGHTS, solver=solver)
    padded = pad_targets(targets, K, torch.device("cpu"))
    per_image = matcher(logits, keypoints, targets)
    batch, query, column = matcher.match(logits, keypoints, padded)
    pairs = [min(9, c) for c in padded.counts]
    assert batch.tolist() == [b for b, n in enumerate(pairs) for _ in range(n)]
    assert query.shape == column.shape == (3, sum(pairs))
    assert batch.dtype == query.dtype == column.dtype == torch.int64
    for stage, b in itertools.product(range(3), range(len(counts))):
        qi, ti = per_image[stage][b]
        mine = batch == b
        assert query[stage, mine].tolist() == qi.tolist()
        kept = padded.kept[b]
        assert (column[stage, mine] if kept is None else kept[column[stage, mine]]).tolist() == ti.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("targets_on", ["cpu", "cuda"])
def test_matching_on_cuda_never_synchronises_with_the_host(targets_on):
    """What a training step runs, pad_targets then match(), from host targets (as the data pipeline
    gives them) or device targets, crowd entries included: after the first call has moved the sigmas,
    no call waits for the GPU (CUDA's sync debug mode raises on any synchronising call), and the
    matches are scipy's. (The per-image interface checks the cost is finite: one sync by design.)"""
    gen = torch.Generator().manual_seed(6)
    counts = [5, 0, 3, 12]
    logits, keypoints = _predictions(7, len(counts), 30, gen)
    targets = _targets(counts, gen, crowd_every=4)
    on_device = [{k: v if k == "iscrowd" else v.to(targets_on) for k, v in t.items()} for t in targets]
    matcher = HungarianMatcher(COCO_SIGMAS, **WEIGHTS)
    logits_cuda, keypoints_cuda = logits.cuda(), keypoints.cuda()

    def match():
        return matcher.match(logits_cuda, keypoints_cuda, pad_targets(on_device, K, "cuda"))

    match()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch, query, column = match()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.is_cuda and query.is_cuda and column.is_cuda
    kept = pad_targets(targets, K, "cpu").kept
    batch, query, column = batch.cpu(), query.cpu(), column.cpu()
    expected = HungarianMatcher(COCO_SIGMAS, **WEIGHTS, solver="scipy")(logits, keypoints, targets)
    for stage, b in itertools.product(range(7), range(len(counts))):
        qs, ts = expected[stage][b]
        mine = batch == b
        qt, ct = query[stage, mine], column[stage, mine]
        tt = ct if kept[b] is None else kept[b][ct]
        assert len(qt) == len(qs)
        cost = _image_cost(logits[stage, b], keypoints[stage, b], targets[b])
        assert cost[qt, tt].sum().item() == pytest.approx(cost[qs, ts].sum().item(), abs=1e-4)


def test_default_weights_are_petrs():
    """The training config leaves matcher_weights empty: these defaults are what a run matches with
    (reconstructed from PETR's assigner: class 2, keypoint L1 70, OKS 7; focal alpha 0.25, gamma 2)."""
    matcher = HungarianMatcher(COCO_SIGMAS)
    assert (matcher.w_class, matcher.w_kpt, matcher.w_oks) == (2.0, 70.0, 7.0)
    assert (matcher.alpha, matcher.gamma, matcher.solver) == (0.25, 2.0, "auto")


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf")])
def test_sigmas_must_be_finite_and_positive(bad):
    """A sigma of 0 would make an exact keypoint's OKS 0 / 0: refused where the matcher is built."""
    sigmas = COCO_SIGMAS.clone()
    sigmas[3] = bad
    with pytest.raises(ValueError, match=r"sigmas must be finite and > 0"):
        HungarianMatcher(sigmas)
    with pytest.raises(ValueError, match=r"sigmas must be \[K\], got \(1, 17\)"):
        HungarianMatcher(COCO_SIGMAS[None])


def test_unknown_solver_is_rejected():
    with pytest.raises(ValueError, match="solver"):
        HungarianMatcher(COCO_SIGMAS, solver="auction")


def test_one_cost_padded_to_the_largest_image():
    """All stages and images go to the assignment as one [S * B, Q, max G] cost."""
    seen = []

    class Recording(HungarianMatcher):
        def _assign(self, cost, num_gt, check_finite):
            seen.append((tuple(cost.shape), list(num_gt)))
            return super()._assign(cost, num_gt, check_finite)

    gen = torch.Generator().manual_seed(3)
    logits, keypoints = _predictions(7, 3, 8, gen)
    Recording(COCO_SIGMAS)(logits, keypoints, _targets([2, 5, 0], gen))
    assert seen == [((21, 8, 5), [2, 5, 0] * 7)]


def test_images_without_people_give_empty_matches():
    gen = torch.Generator().manual_seed(4)
    logits, keypoints = _predictions(2, 2, 5, gen)
    matches = HungarianMatcher(COCO_SIGMAS)(logits, keypoints, _targets([0, 0], gen))
    for qi, ti in itertools.chain.from_iterable(matches):
        assert qi.shape == ti.shape == (0,) and qi.dtype == ti.dtype == torch.int64


@pytest.mark.parametrize(
    "name,mutate",
    [
        ("logits", lambda lg, kp, tg: (lg[0], kp, tg)),
        ("keypoints", lambda lg, kp, tg: (lg, kp[..., :14, :], tg)),
        ("targets", lambda lg, kp, tg: (lg, kp, tg[:1])),
        (
            "keypoints",
            lambda lg, kp, tg: (lg, kp, [{**tg[0], "keypoints": tg[0]["keypoints"][:, :14]}, tg[1]]),
        ),
        ("area", lambda lg, kp, tg: (lg, kp, [{**tg[0], "area": tg[0]["area"][:1]}, tg[1]])),
        ("iscrowd", lambda lg, kp, tg: (lg, kp, [{**tg[0], "iscrowd": torch.zeros(1)}, tg[1]])),
        ("size", lambda lg, kp, tg: (lg, kp, [{**tg[0], "size": torch.tensor([480])}, tg[1]])),
        ("size", lambda lg, kp, tg: (lg, kp, [tg[0], {k: v for k, v in tg[1].items() if k != "size"}])),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(name, mutate):
    gen = torch.Generator().manual_seed(5)
    logits, keypoints = _predictions(1, 2, 4, gen)
    with pytest.raises(ValueError, match=name):
        HungarianMatcher(COCO_SIGMAS)(*mutate(logits, keypoints, _targets([3, 2], gen)))


def test_oks_cost_is_taken_in_pixels_on_a_landscape_image():
    """On a 1280 x 480 image, a prediction 12 px off along x (COCO OKS 0.71) against one 9 px off along
    y (0.81): the OKS cost prefers the second, as COCO does. In normalised units it would not (0.86
    against 0.63: x errors count h / w times, y errors w / h times)."""
    h, w, area = 480, 1280, 20000.0
    gen = torch.Generator().manual_seed(7)
    person = torch.cat([torch.rand(1, K, 2, generator=gen) * 200 + 400, torch.full((1, K, 1), 2.0)], -1)
    offsets = torch.tensor([[12.0, 0.0], [0.0, 9.0]])  # pixels
    pixels = person[:, :, :2] + offsets[:, None]  # [2, K, 2]
    keypoints = (pixels / torch.tensor([w, h]))[None, None]  # [S=1, B=1, Q=2, K, 2]
    target = {
        "keypoints": person / torch.tensor([w, h, 1.0]),
        "area": torch.tensor([area / (w * h)]),
        "size": torch.tensor([h, w]),
    }
    matcher = HungarianMatcher(COCO_SIGMAS, w_class=0.0, w_kpt=0.0, w_oks=1.0)
    ((query, _),) = matcher(torch.zeros(1, 1, 2), keypoints, [target])[0]
    assert query.tolist() == [1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("solver", ["scipy", "triton", "auto"])
def test_non_finite_predictions_raise_naming_the_problem(solver, bad):
    """Per image, either solver raises (scipy would take inf, the Triton solver would give -1 pairs);
    the batched match() of training then gives scipy's error or the Triton solver's -1 pairs. "auto"
    solves CPU costs with scipy."""
    gen = torch.Generator().manual_seed(11)
    logits, keypoints = _predictions(2, 2, 6, gen)
    targets = _targets([2, 3], gen)
    keypoints[1, 0, 4, 3, 0] = bad  # stage 1, image 0: problem 1 * B + 0 = 2
    matcher = HungarianMatcher(COCO_SIGMAS, solver=solver)
    with pytest.raises(ValueError, match=r"image\(s\) \[2\]"):
        matcher(logits, keypoints, targets)
    padded = pad_targets(targets, 17, "cpu").normalised()
    if solver in ("scipy", "auto"):
        with pytest.raises(ValueError, match=r"image\(s\) \[2\]"):
            matcher.match(logits, keypoints, padded)
    else:
        _, query, column = matcher.match(logits, keypoints, padded)
        assert (query[1, :2] == -1).all() and (column[1, :2] == -1).all() and (query[0] >= 0).all()


def test_match_indices_cap_each_image_at_the_rows_width():
    """Image 0 has more people (5) than pairs a row holds (3): its three pairs, then image 1's one; the
    solver's counts for two stages are the images' counts twice."""
    from jcra.matcher import _match_indices

    num_gt, batch, position = _match_indices([5, 1, 0], 2, 3, torch.device("cpu"))
    assert num_gt.tolist() == [5, 1, 0, 5, 1, 0]
    assert batch.tolist() == [0, 0, 0, 1] and position.tolist() == [0, 1, 2, 3]
