"""Batched linear assignment: the Triton solver against scipy per image and a public GPU peer.

Providers: ``triton`` (:func:`kernels.linear_assignment` without the finite check, as the matcher runs it
inside a training step: no host sync; CUDA only, since on CPU it would be Triton's interpreter),
``triton_queries_adjacent`` (the same on the cost laid out, before the clock, with each ground truth's
queries adjacent, as the solver reads them and as :func:`kernels.pose_matching_cost` writes them: what
the matcher solves; the solver then skips its transposing copy, so the two rows differ by that copy),
``scipy`` (one copy of the padded cost to the host, then ``linear_sum_assignment`` per image: what
:class:`jcra.matcher.HungarianMatcher` does) and ``torch_linear_assignment`` (the public
torch-linear-assignment package's ``batch_linear_assignment``, when installed; it takes one G for the
whole batch, which these inputs have).

Sizes follow the issue on CUDA: S * B = 7 * 8 problems (the issue's seven matchings a step, eight images) of
Q = 300 queries by G in {5, 20, 100} people, fp32 costs uniform in [0, 1). Target on H100/H200: the
Triton solver at least 20x scipy at G = 20. On CPU the sizes are small and scipy alone runs.

The encoder's proposals are the seventh matching of a training step: one query per token, B = 8
problems of 22223 queries (800 x 1333: 100x167 + 50x84 + 25x42 + 13x21 tokens) by G = 20, past the
solver's 4096 columns, so it solves on each column's 20 cheapest rows (``test_bench_encoder_proposals``).
Run: ``pytest bench/test_bench_linear_assignment.py``, then ``python -m bench.report``.
"""

import pytest
import scipy
import torch
import triton
from scipy.optimize import linear_sum_assignment

from bench.profiling import device_name
from kernels.linear_assignment import linear_assignment

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
STAGES, B, Q = (7, 8, 300) if CUDA else (7, 2, 60)
GS = (5, 20, 100) if CUDA else (5, 20)
TOKENS = 22223 if CUDA else 2000


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _inputs(g: int, seed: int = 0, n: int = STAGES * B, q: int = Q) -> tuple[torch.Tensor, torch.Tensor]:
    """Cost ``[n, q, g]`` on DEVICE and num_gt ``[n]`` (all g, so the peer can run too)."""
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(n, q, g, generator=gen).to(DEVICE)
    return cost, torch.full((n,), g, dtype=torch.int64, device=DEVICE)


def _triton(cost, num_gt):
    return linear_assignment(cost, num_gt, check_finite=False)


def _queries_adjacent(cost: torch.Tensor) -> torch.Tensor:
    """The same ``[n, q, g]`` values laid out with each ground truth's queries adjacent (stride 1 over
    q), as the solver reads them: given such a cost, it skips its transposing copy."""
    return cost.transpose(1, 2).contiguous().transpose(1, 2)


def _scipy(cost, num_gt):
    cost_np = cost.cpu().numpy()
    return [linear_sum_assignment(cost_np[i, :, :n]) for i, n in enumerate(num_gt.tolist())]


def _peer(cost, num_gt):
    from torch_linear_assignment import batch_linear_assignment

    # rows are the ground truths (fewer than queries), as the peer wants workers <= tasks
    return batch_linear_assignment(cost.transpose(1, 2))


PROVIDERS = {
    "triton": _triton,
    "triton_queries_adjacent": _triton,
    "scipy": _scipy,
    "torch_linear_assignment": _peer,
}


@pytest.mark.parametrize("g", GS)
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_bench_linear_assignment(benchmark, provider, g):
    cost, num_gt = _inputs(g)
    if provider == "triton_queries_adjacent":  # laid out before the clock: what the copy costs
        cost = _queries_adjacent(cost)
    _bench(benchmark, provider, cost, num_gt)


@pytest.mark.parametrize("provider", ["triton", "scipy"])
def test_bench_encoder_proposals(benchmark, provider):
    _bench(benchmark, provider, *_inputs(20, n=B, q=TOKENS), name="linear_assignment encoder proposals")


def _bench(benchmark, provider: str, cost, num_gt, name: str = "linear_assignment") -> None:
    if provider.startswith("triton") and not CUDA:
        pytest.skip("Triton runs only as its interpreter without CUDA")
    if provider == "torch_linear_assignment":
        peer = pytest.importorskip("torch_linear_assignment")
        peer_version = getattr(peer, "__version__", "installed")
    n, q, g = cost.shape
    benchmark.group = f"{name} N={n} Q={q} G={g}"
    fn = PROVIDERS[provider]

    def target():
        out = fn(cost, num_gt)
        _sync()
        return out

    benchmark.extra_info.update(
        provider=provider,
        shape={"problems": n, "Q": q, "G": g},
        dtype=str(cost.dtype),
        device=device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        scipy=scipy.__version__,
    )
    if provider == "torch_linear_assignment":
        benchmark.extra_info["torch_linear_assignment"] = peer_version
    benchmark.pedantic(target, rounds=20 if CUDA else 5, warmup_rounds=3 if CUDA else 1)


@pytest.mark.skipif(not CUDA, reason="checks the compiled solver at benchmark sizes")
@pytest.mark.parametrize(("g", "n", "q"), [*((g, STAGES * B, Q) for g in GS), (20, B, TOKENS)])
def test_triton_totals_equal_scipy_at_benchmark_sizes(g, n, q):
    """What is timed is also right: the GPU solver's totals equal scipy's on the benchmark inputs."""
    cost, num_gt = _inputs(g, seed=1, n=n, q=q)
    query_index, gt_index, valid = _triton(cost, num_gt)
    assert bool(valid.all())
    rows = torch.arange(cost.shape[0], device=DEVICE)[:, None]
    totals = cost.double()[rows, query_index, gt_index].sum(1).cpu()
    cost_np = cost.double().cpu().numpy()
    expected = torch.tensor(
        [cost_np[i][linear_sum_assignment(cost_np[i])].sum() for i in range(len(cost_np))]
    )
    torch.testing.assert_close(totals, expected, rtol=0, atol=1e-4)
