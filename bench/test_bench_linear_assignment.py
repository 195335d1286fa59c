"""Batched linear assignment: the Triton solver against scipy per image and a public GPU peer.

Providers: ``triton`` (:func:`kernels.linear_assignment` without the finite check, as the matcher runs
it inside a training step: no host sync; CUDA only, since on CPU it would be Triton's interpreter),
``scipy`` (one copy of the padded cost to the host, then ``linear_sum_assignment`` per image: what
:class:`jcra.matcher.HungarianMatcher` does) and ``torch_linear_assignment`` (the public
torch-linear-assignment package's ``batch_linear_assignment``, when installed; it takes one G for the
whole batch, which these inputs have).

Sizes follow the issue on CUDA: S * B = 7 * 8 problems (seven decoder stages, eight images) of
Q = 300 queries by G in {5, 20, 100} people, fp32 costs uniform in [0, 1). Target on H100/H200: the
Triton solver at least 20x scipy at G = 20. On CPU the sizes are small and scipy alone runs.
Run: ``pytest bench/test_bench_linear_assignment.py``, then ``python -m bench.report``.
"""

import platform

import pytest
import scipy
import torch
import triton
from scipy.optimize import linear_sum_assignment

from kernels.linear_assignment import linear_assignment

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
STAGES, B, Q = (7, 8, 300) if CUDA else (7, 2, 60)
GS = (5, 20, 100) if CUDA else (5, 20)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _inputs(g: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cost ``[S * B, Q, g]`` on DEVICE and num_gt ``[S * B]`` (all g, so the peer can run too)."""
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(STAGES * B, Q, g, generator=gen).to(DEVICE)
    return cost, torch.full((STAGES * B,), g, dtype=torch.int64, device=DEVICE)


def _triton(cost, num_gt):
    return linear_assignment(cost, num_gt, check_finite=False)


def _scipy(cost, num_gt):
    cost_np = cost.cpu().numpy()
    return [linear_sum_assignment(cost_np[i, :, :n]) for i, n in enumerate(num_gt.tolist())]


def _peer(cost, num_gt):
    from torch_linear_assignment import batch_linear_assignment

    # rows are the ground truths (fewer than queries), as the peer wants workers <= tasks
    return batch_linear_assignment(cost.transpose(1, 2))


PROVIDERS = {"triton": _triton, "scipy": _scipy, "torch_linear_assignment": _peer}


@pytest.mark.parametrize("g", GS)
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_bench_linear_assignment(benchmark, provider, g):
    if provider == "triton" and not CUDA:
        pytest.skip("Triton runs only as its interpreter without CUDA")
    if provider == "torch_linear_assignment":
        peer = pytest.importorskip("torch_linear_assignment")
        peer_version = getattr(peer, "__version__", "installed")
    benchmark.group = f"linear_assignment N={STAGES * B} Q={Q} G={g}"
    fn = PROVIDERS[provider]
    cost, num_gt = _inputs(g)

    def target():
        out = fn(cost, num_gt)
        _sync()
        return out

    benchmark.extra_info.update(
        provider=provider,
        shape={"problems": STAGES * B, "Q": Q, "G": g},
        dtype=str(cost.dtype),
        device=torch.cuda.get_device_name() if CUDA else platform.processor() or "cpu",
        torch=torch.__version__,
        triton=triton.__version__,
        scipy=scipy.__version__,
    )
    if provider == "torch_linear_assignment":
        benchmark.extra_info["torch_linear_assignment"] = peer_version
    benchmark.pedantic(target, rounds=20 if CUDA else 5, warmup_rounds=3 if CUDA else 1)


@pytest.mark.skipif(not CUDA, reason="checks the compiled solver at benchmark sizes")
@pytest.mark.parametrize("g", GS)
def test_triton_totals_equal_scipy_at_benchmark_sizes(g):
    """What is timed is also right: the GPU solver's totals equal scipy's on the benchmark inputs."""
    cost, num_gt = _inputs(g, seed=1)
    query_index, gt_index, valid = _triton(cost, num_gt)
    assert bool(valid.all())
    rows = torch.arange(cost.shape[0], device=DEVICE)[:, None]
    totals = cost.double()[rows, query_index, gt_index].sum(1).cpu()
    cost_np = cost.double().cpu().numpy()
    expected = torch.tensor(
        [cost_np[i][linear_sum_assignment(cost_np[i])].sum() for i in range(len(cost_np))]
    )
    torch.testing.assert_close(totals, expected, rtol=0, atol=1e-4)
