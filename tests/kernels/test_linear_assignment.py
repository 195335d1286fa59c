"""kernels.linear_assignment: the Triton solver (its interpreter on CPU) against scipy's optimum.

Assignments may legitimately differ from scipy's where costs tie, so every check compares totals (in
fp64 from the original costs), which images have which number of pairs, and that the pairs form a
valid partial permutation sorted by ground truth.
"""

import importlib
import math

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from scipy.optimize import linear_sum_assignment

from kernels.dispatch import use_triton
from kernels.linear_assignment import linear_assignment, linear_assignment_reference

# the module itself (the package re-exports the function under the same name)
la_module = importlib.import_module("kernels.linear_assignment")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# (dtype, absolute tolerance on totals of costs in [0, 1) over at most 12 pairs)
DTYPES = [(torch.float32, 1e-5), (torch.float64, 1e-12)]


@pytest.fixture(autouse=True)
def _triton_runs():
    if not use_triton(torch.empty(0, device=DEVICE)):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py without CUDA)")


def _random_problem(b, q, g, seed, dtype=torch.float32, ties=False):
    """Cost ``[b, q, g]`` on DEVICE (integers 0..3 when ``ties``) and num_gt ``[b]`` covering 0 and g."""
    gen = torch.Generator().manual_seed(seed)
    if ties:
        cost = torch.randint(0, 4, (b, q, g), generator=gen).to(dtype)
    else:
        cost = torch.rand(b, q, g, generator=gen, dtype=torch.float64).to(dtype)
    num_gt = torch.randint(0, g + 1, (b,), generator=gen)
    num_gt[0] = g
    if b > 1:
        num_gt[1] = 0
    return cost.to(DEVICE), num_gt


def _scipy_totals(cost: torch.Tensor, num_gt: torch.Tensor) -> tuple[list[float], list[int]]:
    """scipy's optimal total (fp64) and number of pairs of every image."""
    totals, counts = [], []
    for image, n_gt in enumerate(num_gt.tolist()):
        block = cost[image, :, :n_gt].double().cpu().numpy()
        rows, cols = linear_sum_assignment(block) if block.size else ([], [])
        totals.append(float(block[rows, cols].sum()))
        counts.append(len(rows))
    return totals, counts


def _check(cost, num_gt, result, atol):
    """Valid padded partial permutations, sorted by ground truth, with scipy's optimal totals."""
    query_index, gt_index, valid = result
    b, q, g = cost.shape
    n = min(q, g)
    for t, dtype in zip(result, (torch.int64, torch.int64, torch.bool), strict=True):
        assert t.shape == (b, n) and t.dtype == dtype and t.device == cost.device
    totals, counts = _scipy_totals(cost, num_gt)
    cost64 = cost.double().cpu()
    for image in range(b):
        m = counts[image]
        qi, gi, ok = query_index[image].cpu(), gt_index[image].cpu(), valid[image].cpu()
        assert ok[:m].all() and not ok[m:].any(), f"image {image}: valid {ok.tolist()}, expected {m} pairs"
        assert (qi[m:] == -1).all() and (gi[m:] == -1).all(), f"image {image}: padding not -1"
        qi, gi = qi[:m], gi[:m]
        assert (gi[1:] > gi[:-1]).all(), f"image {image}: gt_index {gi.tolist()} not strictly increasing"
        assert ((0 <= gi) & (gi < num_gt[image])).all(), f"image {image}: gt_index {gi.tolist()}"
        assert ((0 <= qi) & (qi < q)).all() and len(set(qi.tolist())) == m, f"image {image}: {qi.tolist()}"
        total = float(cost64[image, qi, gi].sum())
        assert total == pytest.approx(totals[image], abs=atol), (
            f"image {image}: {total} vs scipy {totals[image]}"
        )


@pytest.mark.parametrize(("dtype", "atol"), DTYPES)
@pytest.mark.parametrize(
    ("q", "g"),
    [(12, 8), (9, 3), (7, 7), (4, 7), (1, 5), (11, 1)],
    ids=["Q>G", "odd", "Q=G", "Q<G", "Q=1", "G=1"],
)
def test_random_costs_match_scipy(q, g, dtype, atol):
    cost, num_gt = _random_problem(6, q, g, seed=q * 100 + g, dtype=dtype)
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol)


def test_larger_random_costs_match_scipy():
    """Longer augmenting paths and more dual updates than the small shapes: a solver that skips the
    dual update is suboptimal on about a third of these."""
    for b, q, g, seed in ((16, 20, 20, 31), (8, 16, 12, 32)):
        cost, _ = _random_problem(b, q, g, seed=seed)
        num_gt = torch.full((b,), g)
        _check(cost, num_gt, linear_assignment(cost, num_gt), atol=1e-5)


@pytest.mark.parametrize(
    ("q", "g", "ties"), [(3000, 5, False), (5, 3000, False), (4096, 7, True), (7, 4096, True)]
)
def test_widest_block_matches_scipy(q, g, ties):
    """At the solver's widest block (4096 columns) the column part of the search's argmin key (column
    and row packed into one int32) is at its largest."""
    cost, num_gt = _random_problem(2, q, g, seed=q + g, ties=ties)
    assert la_module._block(q, g) == la_module._MAX_BLOCK
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol=1e-4)


@pytest.mark.parametrize(
    "rows",
    [[[1.0, 1.0 + 1e-9], [1.0 + 1e-9, 1.0 + 3e-9]], [[1e8, 1e8 + 1.0], [1e8 + 1.0, 1e8 + 3.0]]],
    ids=["near-ties", "large-offset"],
)
def test_fp64_costs_are_solved_in_fp64(rows):
    """Differences fp32 cannot hold (1e-9 at 1, or 1 at 1e8): the anti-diagonal is the optimum."""
    cost = torch.tensor([rows], dtype=torch.float64, device=DEVICE)
    query_index, gt_index, valid = linear_assignment(cost, [2])
    assert query_index.tolist() == [[1, 0]] and gt_index.tolist() == [[0, 1]] and valid.all()


@pytest.mark.parametrize("seed", range(4))
def test_ties_match_scipy(seed):
    """Integer costs from {0..3}: many optimal assignments and tied Dijkstra steps; totals are exact."""
    q, g = (10, 6) if seed % 2 == 0 else (5, 8)
    cost, num_gt = _random_problem(8, q, g, seed=seed, ties=True)
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol=0.0)


def test_constant_costs():
    """Every assignment ties; the solver must still return a full, valid one."""
    cost = torch.full((2, 6, 4), 2.5, device=DEVICE)
    num_gt = torch.tensor([4, 3])
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol=0.0)


@pytest.mark.parametrize(("q", "g"), [(5, 0), (0, 3), (0, 0)])
def test_empty_sides(q, g):
    cost = torch.rand(3, q, g, device=DEVICE)
    num_gt = torch.full((3,), g)
    query_index, gt_index, valid = linear_assignment(cost, num_gt)
    assert query_index.shape == gt_index.shape == valid.shape == (3, 0)


def test_empty_batch():
    result = linear_assignment(torch.rand(0, 5, 3, device=DEVICE), torch.zeros(0, dtype=torch.int64))
    assert all(t.shape == (0, 3) for t in result)


def test_solver_clamps_a_device_num_gt_out_of_range():
    """A device ``num_gt`` with ``check_finite=False`` is never read back, so the solver itself clamps
    it to [0, G]: it must solve what the clamped counts give, never read past an image's block."""
    cost, _ = _random_problem(4, 6, 4, seed=21)
    num_gt = torch.tensor([7, -2, 4, 100], device=DEVICE)
    solved = la_module._launch(cost, num_gt)
    clamped = la_module._launch(cost, num_gt.clamp(0, 4))
    for got, want in zip(solved, clamped, strict=True):
        assert torch.equal(got, want)
    _check(cost, num_gt.clamp(0, 4).cpu(), solved, atol=1e-5)


def test_batch_equals_each_image_alone():
    cost, num_gt = _random_problem(5, 9, 6, seed=7)
    batched = linear_assignment(cost, num_gt)
    for image in range(5):
        n_gt = int(num_gt[image])
        alone = linear_assignment(cost[image : image + 1, :, :n_gt].contiguous(), num_gt[image : image + 1])
        n = min(9, n_gt)
        for got, want in zip(alone, batched, strict=True):
            torch.testing.assert_close(got[0, :n], want[image, :n])


def test_strided_and_half_inputs():
    """A non-contiguous view and fp16 (solved in fp32) give the optimum of the values as stored."""
    base, num_gt = _random_problem(4, 7, 10, seed=3)
    cost = base.transpose(1, 2)  # [4, 10, 7], strides (70, 1, 10)
    num_gt = num_gt.clamp(max=7)
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol=1e-5)
    half = base.half()
    _check(half, num_gt.clamp(max=10), linear_assignment(half, num_gt.clamp(max=10)), atol=1e-3)


def test_triton_equals_reference_format():
    """The Triton solver and the scipy path give the same validity and totals on one batch."""
    cost, num_gt = _random_problem(6, 8, 5, seed=11, dtype=torch.float64)
    solver = linear_assignment(cost, num_gt)
    reference = linear_assignment_reference(cost, num_gt)
    assert torch.equal(solver[2], reference[2])
    rows = torch.arange(6, device=DEVICE)[:, None]
    totals = [
        (cost[rows, qi.clamp(min=0), gi.clamp(min=0)] * ok).sum(1) for qi, gi, ok in (solver, reference)
    ]
    torch.testing.assert_close(totals[0], totals[1], rtol=0, atol=1e-12)


def test_cpu_path_runs_scipy(monkeypatch):
    """Without Triton (plain CPU), the op runs the reference and keeps the format and device."""
    monkeypatch.setattr(la_module, "use_triton", lambda tensor: False)
    cost, num_gt = _random_problem(4, 5, 7, seed=5)
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol=1e-5)


def test_wide_problems_fall_back_to_scipy(monkeypatch):
    monkeypatch.setattr(la_module, "_MAX_BLOCK", 4)
    monkeypatch.setattr(la_module, "_MIN_BLOCK", 2)  # too wide for its 7 columns, not for any block
    monkeypatch.setattr(la_module, "_launch", None)  # would raise if called
    cost, num_gt = _random_problem(3, 7, 3, seed=12)
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol=1e-5)


@pytest.fixture
def narrow_solver(monkeypatch):
    """A solver 2 to 16 columns wide, so that small problems are tall ones."""
    monkeypatch.setattr(la_module, "_MAX_BLOCK", 16)
    monkeypatch.setattr(la_module, "_MIN_BLOCK", 2)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("q", "g"), [(40, 3), (40, 4), (30, 1), (20, 0)])
def test_tall_problems_solve_on_the_cheapest_rows(monkeypatch, narrow_solver, q, g, ties):
    """Past the solver's width with G * G rows within it (the encoder's proposals), the solver runs on
    each column's G cheapest rows: still the optimum, without scipy."""
    monkeypatch.setattr(la_module, "linear_assignment_reference", None)  # would raise if called
    cost, num_gt = _random_problem(5, q, g, seed=q + g, ties=ties)
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol=1e-5)


def test_tall_problems_reach_each_columns_gth_cheapest_row(narrow_solver):
    """Three ground truths whose three cheapest rows are the same, at the end of 40 queries: the
    optimum needs each column's third cheapest row (a solver on fewer rows per column pays 1 for the
    third); the other rows tie at 1."""
    cost = torch.ones(2, 40, 3, device=DEVICE)
    cost[0, 37:] = torch.tensor([0.0, 0.1, 0.2], device=DEVICE)[:, None]
    cost[1, :3] = torch.tensor([0.2, 0.1, 0.0], device=DEVICE)[:, None]
    num_gt = torch.tensor([3, 3])
    result = linear_assignment(cost, num_gt)
    _check(cost, num_gt, result, atol=1e-6)
    assert sorted(result[0][0].tolist()) == [37, 38, 39] and sorted(result[0][1].tolist()) == [0, 1, 2]


def test_tall_problems_keep_every_candidate_row(narrow_solver):
    """G = 2 with four distinct candidate rows (30 to 33), two of which the optimum (0) needs: the
    first two in one image, the last two in the other, so dropping any candidate costs an image 0.5."""
    cost = torch.ones(2, 40, 2, device=DEVICE)
    for image, (x, z, y, w) in enumerate([(30, 31, 32, 33), (32, 33, 30, 31)]):
        cost[image, [x, y], 0] = torch.tensor([0.0, 0.5], device=DEVICE)
        cost[image, [z, w], 1] = torch.tensor([0.0, 0.5], device=DEVICE)
    num_gt = torch.tensor([2, 2])
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol=1e-6)


def test_tall_problems_keep_non_finite_images_unsolved(narrow_solver):
    """A NaN outside the cheapest rows still fails its image; NaN in padding columns still does not."""
    cost, _ = _random_problem(3, 40, 3, seed=21)
    num_gt = torch.tensor([3, 2, 3])
    cost[0, 7, 1] = float("nan")
    cost[1, :, 2] = float("nan")  # padding of image 1
    cost[2, 11, 2] = float("inf")
    query_index, gt_index, valid = linear_assignment(cost, num_gt, check_finite=False)
    for image in (0, 2):
        assert not valid[image].any() and (query_index[image] == -1).all() and (gt_index[image] == -1).all()
    _check(cost[1:2], num_gt[1:2], tuple(t[1:2] for t in (query_index, gt_index, valid)), atol=1e-5)
    with pytest.raises(ValueError, match=r"image\(s\) \[0, 2\]"):
        linear_assignment(cost, num_gt)


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes_sweep(seed):
    """Eight problems per seed of random Q <= 12, G <= 8, float or tied costs, fp32 or fp64."""
    gen = torch.Generator().manual_seed(1000 + seed)
    q, g = (int(torch.randint(1, hi + 1, (1,), generator=gen)) for hi in (12, 8))
    dtype, atol = DTYPES[seed % 2]
    cost, num_gt = _random_problem(8, q, g, seed=seed, dtype=dtype, ties=seed % 3 == 0)
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_cost_names_image(bad):
    cost, _ = _random_problem(3, 6, 4, seed=2)
    num_gt = torch.tensor([4, 2, 3])
    cost[1, 5, 0] = bad
    with pytest.raises(ValueError, match=r"image\(s\) \[1\]"):
        linear_assignment(cost, num_gt)
    # Unchecked: the image comes back without pairs, the others are solved.
    query_index, gt_index, valid = linear_assignment(cost, num_gt, check_finite=False)
    assert not valid[1].any() and (query_index[1] == -1).all() and (gt_index[1] == -1).all()
    keep = torch.tensor([0, 2])
    _check(cost[keep], num_gt[keep], tuple(t[keep] for t in (query_index, gt_index, valid)), atol=1e-5)


@pytest.mark.parametrize(("q", "where"), [(6, (5, 3)), (3, (2, 3))], ids=["gt-rows", "query-rows"])
def test_non_finite_cost_in_the_last_row_names_image(q, where):
    """The finiteness scan reaches the last row of either side: the last ground truth (Q >= num_gt)
    or the last query (Q < num_gt)."""
    cost, _ = _random_problem(2, q, 5, seed=5)
    num_gt = torch.tensor([4, 4])
    cost[1, where[0], where[1]] = float("nan")
    with pytest.raises(ValueError, match=r"image\(s\) \[1\]"):
        linear_assignment(cost, num_gt)


def test_non_finite_padding_is_ignored():
    """Columns past num_gt are padding: NaN there is never read."""
    cost, _ = _random_problem(2, 6, 4, seed=4)
    num_gt = torch.tensor([2, 4])
    cost[0, :, 2:] = float("nan")
    _check(cost, num_gt, linear_assignment(cost, num_gt), atol=1e-5)


@pytest.mark.parametrize(
    ("cost", "num_gt", "match"),
    [
        (torch.rand(6, 4), [4], "cost must be"),
        (torch.randint(0, 3, (1, 6, 4)), [4], "cost must be"),
        (torch.rand(2, 6, 4), [4], "num_gt must be"),
        (torch.rand(2, 6, 4), [4, 5], "num_gt must lie"),
        (torch.rand(2, 6, 4), [4, -1], "num_gt must lie"),
        (torch.rand(2, 6, 4), torch.tensor([4.0, 1.0]), "num_gt must hold integers"),
        (torch.rand(2, 6, 4), [3.9, 2.2], "num_gt must be a .B. tensor or a list of integers"),
        (torch.rand(2, 6, 4), [True, 2], "num_gt must be a .B. tensor or a list of integers"),
        (torch.rand(2, 6, 4), None, "num_gt must be a .B. tensor or a list of integers"),
        (torch.rand(2, 6, 4), 4, "num_gt must be a .B. tensor or a list of integers"),
        (
            torch.rand(2, 6, 4),
            torch.tensor([1, 2], device="meta"),
            "num_gt must be on the host or the cost's",
        ),
    ],
)
def test_bad_arguments(cost, num_gt, match):
    with pytest.raises(ValueError, match=match):
        linear_assignment(cost.to(DEVICE), num_gt)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a GPU num_gt is range-checked after the solve")
@pytest.mark.parametrize("bad", [-1, 5])
def test_num_gt_on_the_gpu_out_of_range_raises(bad):
    cost, _ = _random_problem(2, 6, 4, seed=3)
    with pytest.raises(ValueError, match="num_gt must lie"):
        linear_assignment(cost.cuda(), torch.tensor([2, bad], device="cuda"))


def test_num_gt_on_device_and_as_list():
    cost, num_gt = _random_problem(3, 6, 4, seed=9)
    want = linear_assignment(cost, num_gt)
    numpy_ints = [np.int32(n) for n in num_gt.tolist()]
    strided = torch.stack([num_gt, torch.zeros_like(num_gt)], 1)[:, 0]  # stride 2: read by index, not offset
    same = num_gt[:1].expand(3)  # stride 0
    same_want = linear_assignment(cost, same.contiguous())
    for got, expected in zip(linear_assignment(cost, same.to(DEVICE)), same_want, strict=True):
        assert torch.equal(got, expected)
    for other in (num_gt.to(DEVICE), num_gt.tolist(), num_gt.int(), numpy_ints, strided.to(DEVICE)):
        for got, expected in zip(linear_assignment(cost, other), want, strict=True):
            assert torch.equal(got, expected)


def test_opcheck():
    cost, num_gt = _random_problem(3, 6, 4, seed=6)
    torch.library.opcheck(torch.ops.jcra.linear_assignment, (cost, num_gt.to(DEVICE)))


def test_compiled_op_equals_eager():
    cost, num_gt = _random_problem(3, 6, 4, seed=8)
    num_gt = num_gt.to(DEVICE)
    compiled = torch.compile(torch.ops.jcra.linear_assignment, fullgraph=True)
    for got, want in zip(compiled(cost, num_gt), torch.ops.jcra.linear_assignment(cost, num_gt), strict=True):
        assert torch.equal(got, want)


def test_compiled_function_holds_the_op_and_equals_eager():
    """Eager calls skip the op's dispatch; a compiled caller still traces the op. (A host num_gt is
    range-checked by reading it, where the trace breaks: the op is in the graph after the break.)"""
    cost, num_gt = _random_problem(3, 6, 4, seed=10)
    num_gt = num_gt.to(DEVICE)
    targets = []

    def backend(graph_module, example_inputs):
        targets.extend(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
        return graph_module.forward

    def solve(cost, num_gt):
        return linear_assignment(cost, num_gt, check_finite=False)

    compiled = torch.compile(solve, backend=backend)
    for got, want in zip(compiled(cost, num_gt), solve(cost, num_gt), strict=True):
        assert torch.equal(got, want)
    assert "jcra.linear_assignment.default" in targets, targets


def test_other_tracers_and_meta_tensors_see_the_op():
    """make_fx records the op, not one call's answer: its graph solves a new cost as eager does. Meta
    tensors get outputs shaped by the op's fake."""
    from torch.fx.experimental.proxy_tensor import make_fx

    cost, num_gt = _random_problem(3, 6, 4, seed=11)
    other, _ = _random_problem(3, 6, 4, seed=12)
    num_gt = num_gt.to(DEVICE)

    def solve(cost, num_gt):
        return linear_assignment(cost, num_gt, check_finite=False)

    graph = make_fx(solve)(cost, num_gt)
    assert "jcra.linear_assignment.default" in [str(node.target) for node in graph.graph.nodes]
    for got, want in zip(graph(other, num_gt), solve(other, num_gt), strict=True):
        assert torch.equal(got, want)
    outputs = solve(cost.to("meta"), num_gt.to("meta"))
    assert linear_assignment(cost.to("meta"), num_gt.to("meta"))[0].shape == (3, 4)  # no values to check
    assert [(t.device.type, tuple(t.shape), t.dtype) for t in outputs] == [
        ("meta", (3, 4), torch.int64),
        ("meta", (3, 4), torch.int64),
        ("meta", (3, 4), torch.bool),
    ]


def test_scipy_total_helper_can_fail():
    """The total check rejects a valid but suboptimal assignment (identity on a cost favouring a swap)."""
    cost = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], device=DEVICE)
    identity = (
        torch.tensor([[0, 1]], device=DEVICE),
        torch.tensor([[0, 1]], device=DEVICE),
        torch.ones(1, 2, dtype=torch.bool, device=DEVICE),
    )
    with pytest.raises(AssertionError):
        _check(cost, torch.tensor([2]), identity, atol=1e-6)
    assert np.isclose(_scipy_totals(cost, torch.tensor([2]))[0][0], 0.0)


@triton.jit
def _min_and_pick_kernel(x_ptr, out_ptr, j, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(out_ptr, la_module._min(x))
    tl.store(out_ptr + 1, la_module._pick(x, offs, j))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_search_reductions_are_exact(dtype, seed):
    """The solver's minimum and lane pick (fp32: over the floats' integer images) give the floats
    themselves: negatives, both zeros, subnormals, extremes and infinities, and the picked lane's sign of
    zero."""
    tiny, huge = torch.finfo(dtype).tiny, torch.finfo(dtype).max
    edges = [-math.inf, -huge, -1.5, -tiny / 4, -0.0, 0.0, tiny / 4, 2.0, huge, math.inf]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(8):
        x = torch.randn(64, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(
            -30, 30, (1,), generator=gen
        )
        chosen = torch.randint(0, 64, (int(torch.randint(0, 6, (1,), generator=gen)),), generator=gen)
        x[chosen] = torch.tensor(edges, dtype=torch.float64)[
            torch.randint(0, len(edges), (len(chosen),), generator=gen)
        ]
        x = x.to(dtype).to(DEVICE)
        j = int(torch.randint(0, 64, (1,), generator=gen))
        out = torch.empty(2, dtype=dtype, device=DEVICE)
        _min_and_pick_kernel[(1,)](x, out, j, BLOCK=64)
        assert out[0] == x.min(), (x.tolist(), out[0])
        bits = torch.int32 if dtype == torch.float32 else torch.int64
        assert out[1:].view(bits).item() == x[j : j + 1].view(bits).item()
