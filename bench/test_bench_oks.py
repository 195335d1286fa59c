"""Pose matching cost and the whole Hungarian matcher: fused Triton kernel against PyTorch baselines.

Cost providers: ``triton`` (the fused kernel, CUDA only), ``reference`` (the broadcast PyTorch
formulation DETR-family pose codebases use, materialising ``[B, Q, G, K]``), ``reference+compile``
(the same under ``torch.compile``) and ``per_image`` (a Python loop over images of the reference, as
matchers that build the cost image by image do). Matcher providers: ``padded`` (what the training
step runs: the targets padded and moved in one copy, then :meth:`jcra.matcher.HungarianMatcher.match`,
one cost call over all stages and images and the batched solver, the matches gathered on the device),
``batched`` (the same through the per-image interface, :class:`jcra.matcher.HungarianMatcher` called)
and ``per_image`` (cost, copy and scipy per stage and image). ``test_bench_matcher_host_time`` times
``padded`` and ``batched`` at the issue's sizes on any machine with the two kernels' launches stubbed:
their host time alone, which on the H100 looked like most of the matcher's time.

GPU sizes follow the issue (B = 8, Q = 300, G in {1, 5, 20, 100}, K = 17, seven stages for the
matcher); on CPU the sizes are small and only the reference providers run (Triton would be its
interpreter). Median time comes from pytest-benchmark; ``extra_info`` holds shapes, dtype, device,
versions and, on CUDA, the peak memory of one call. Run: ``pytest bench/test_bench_oks.py``.
"""

import importlib

import pytest
import torch
import triton
from scipy.optimize import linear_sum_assignment

from bench.profiling import device_name, static_compile
from jcra.matcher import HungarianMatcher
from jcra.targets import pad_targets
from kernels.oks import COCO_SIGMAS, pose_matching_cost, pose_matching_cost_reference

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
B, Q, K, STAGES = (8, 300, 17, 7) if CUDA else (2, 60, 17, 7)
GS = (1, 5, 20, 100) if CUDA else (1, 5, 20)
WEIGHTS = {"w_class": 2.0, "w_kpt": 70.0, "w_oks": 2.0, "alpha": 0.25, "gamma": 2.0}


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _inputs(b, q, g, dtype=torch.float32, seed=0):
    """Logits [b, q], predictions [b, q, K, 2], padded ground truth [b, g, K, 3] and areas [b, g]."""
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, g, K, 3, generator=gen)
    gt[..., 2] = torch.randint(0, 3, (b, g, K), generator=gen).float()
    tensors = (
        torch.randn(b, q, generator=gen),
        torch.rand(b, q, K, 2, generator=gen),
        gt,
        0.01 + 0.3 * torch.rand(b, g, generator=gen),
    )
    return [t.to(DEVICE, dtype) for t in tensors]


def _per_image(logits, pred, gt, area, sigmas, **weights):
    return torch.stack(
        [
            pose_matching_cost_reference(
                logits[i : i + 1], pred[i : i + 1], gt[i : i + 1], area[i : i + 1], sigmas, **weights
            )[0]
            for i in range(logits.shape[0])
        ]
    )


COST_PROVIDERS = {
    "triton": lambda: pose_matching_cost,
    "reference": lambda: pose_matching_cost_reference,
    "reference+compile": lambda: static_compile(pose_matching_cost_reference),
    "per_image": lambda: _per_image,
}
"""Each provider as a factory: a compiled one compiles afresh for each benchmark's shapes."""


def _extra_info(benchmark, provider, fn, args, shape, dtype):
    benchmark.extra_info.update(
        provider=provider,
        shape=shape,
        dtype=str(dtype),
        device=device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
    )
    if CUDA:
        # a warm-up call (a compiled provider compiles there), then one outside the timed rounds, so
        # the peak is that of the op alone
        fn(*args)
        _sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(*args)
        _sync()
        benchmark.extra_info["peak_mem_bytes"] = torch.cuda.max_memory_allocated() - base


@pytest.mark.parametrize("g", GS)
@pytest.mark.parametrize("provider", list(COST_PROVIDERS))
def test_bench_pose_matching_cost(benchmark, provider, g):
    if provider == "triton" and not CUDA:
        pytest.skip("Triton runs only as its interpreter without CUDA")
    benchmark.group = f"pose_matching_cost B={B} Q={Q} G={g} K={K}"
    cost_fn = COST_PROVIDERS[provider]()
    sigmas = COCO_SIGMAS.to(DEVICE, torch.float32)
    args = (*_inputs(B, Q, g), sigmas)

    def target():
        out = cost_fn(*args, **WEIGHTS)
        _sync()
        return out

    shape = {"B": B, "Q": Q, "G": g, "K": K}
    _extra_info(benchmark, provider, lambda *a: cost_fn(*a, **WEIGHTS), args, shape, torch.float32)
    benchmark.pedantic(target, rounds=20 if CUDA else 5, warmup_rounds=3 if CUDA else 1)


def _matcher_inputs(g, b=B, q=Q):
    logits, pred, _, _ = _inputs(STAGES * b, q, 0, seed=1)
    _, _, gt, area = _inputs(b, q, g, seed=2)
    size = torch.tensor([800, 1333])  # (h, w) pixels: the OKS term scales coordinates back to them
    targets = [{"keypoints": gt[i].cpu(), "area": area[i].cpu(), "size": size} for i in range(b)]
    return logits.reshape(STAGES, b, q), pred.reshape(STAGES, b, q, K, 2), targets


def _matcher_per_image(logits, keypoints, targets, sigmas):
    """Cost, host copy and scipy for every stage and image separately."""
    matches = []
    for s in range(logits.shape[0]):
        stage = []
        for b, target in enumerate(targets):
            cost = pose_matching_cost_reference(
                logits[s, b][None],
                keypoints[s, b][None],
                target["keypoints"][None].to(DEVICE),
                target["area"][None].to(DEVICE),
                sigmas,
                **WEIGHTS,
                image_size=target["size"].flip(0)[None].to(DEVICE, torch.float32),
            )[0].cpu()
            stage.append(linear_sum_assignment(cost.numpy()))
        matches.append(stage)
    return matches


MATCHER_PROVIDERS = ("padded", "batched", "per_image")


def matcher_provider(provider: str, sigmas: torch.Tensor, solver: str = "auto"):
    """A matcher provider as a function of (logits, keypoints, targets)."""
    matcher = HungarianMatcher(sigmas, **WEIGHTS, solver=solver)
    if provider == "padded":
        return lambda logits, keypoints, targets: matcher.match(
            logits, keypoints, pad_targets(targets, K, DEVICE)
        )
    if provider == "batched":
        return matcher
    return lambda *args: _matcher_per_image(*args, sigmas)


@pytest.mark.parametrize("g", GS)
@pytest.mark.parametrize("provider", MATCHER_PROVIDERS)
def test_bench_matcher(benchmark, provider, g):
    benchmark.group = f"matcher S={STAGES} B={B} Q={Q} G={g} K={K}"
    sigmas = COCO_SIGMAS.to(DEVICE, torch.float32)
    args = _matcher_inputs(g)
    fn = matcher_provider(provider, sigmas)

    def target():
        out = fn(*args)
        _sync()
        return out

    shape = {"S": STAGES, "B": B, "Q": Q, "G": g, "K": K}
    _extra_info(benchmark, provider, fn, args, shape, torch.float32)
    benchmark.pedantic(target, rounds=50 if CUDA else 3, warmup_rounds=5 if CUDA else 1)


@pytest.mark.parametrize("g", (5, 20, 100))
@pytest.mark.parametrize("provider", MATCHER_PROVIDERS[:2])
def test_bench_matcher_host_time(benchmark, provider, g, monkeypatch):
    """The matcher's host time: the issue's sizes (seven stages of 8 images, Q = 300) on any machine,
    the cost kernel's and the solver's launches replaced by outputs made beforehand, so what is timed
    is the rest (padding, checks, dispatch, allocations, the small ops around the kernels, their
    launches on a GPU). Not synchronised: a GPU would only run those small ops."""
    # (the package's linear_assignment is the function; the module is read from sys.modules)
    solver_module = importlib.import_module("kernels.linear_assignment")
    oks_module = importlib.import_module("kernels.oks")
    b, q, n = 8, 300, min(300, g)
    cost = torch.rand(STAGES * b, q, g, device=DEVICE)
    index = torch.arange(n, device=DEVICE).expand(STAGES * b, n)
    solved = (index.clone(), index.clone(), torch.ones(STAGES * b, n, dtype=torch.bool, device=DEVICE))
    for module, launch in ((oks_module, lambda *args: cost), (solver_module, lambda *args: solved)):
        monkeypatch.setattr(module, "_launch", launch)
        monkeypatch.setattr(module, "use_triton", lambda tensor: True)
    benchmark.group = f"matcher host time, device work stubbed S={STAGES} B={b} Q={q} G={g}"
    fn = matcher_provider(provider, COCO_SIGMAS.to(DEVICE, torch.float32), solver="triton")
    args = _matcher_inputs(g, b, q)
    _extra_info(benchmark, provider, fn, args, {"S": STAGES, "B": b, "Q": q, "G": g, "K": K}, torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # without a GPU the small ops run on the CPU: no thread hand-offs in the timing
    try:
        benchmark.pedantic(fn, args, rounds=200, warmup_rounds=20)
    finally:
        torch.set_num_threads(threads)
