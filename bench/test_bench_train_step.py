"""One JCRA training step as the trainer runs it (forward, matching, losses, backward, gradient clipping,
the trainer's fused AdamW in PETR's three groups): fused kernels + torch.compile against the eager
reference ops, timed side by side in one run.

GPU: ``jcra_r50`` at batch 2 of 800x1333 images under bf16 autocast, 10 people an image, the ResNet
in its ImageNet-weights layout (frozen batch norm, stem and stage 1 frozen: the COCO recipe's
network, with random weights). Providers:

- ``fused+compile``: fused kernels, the whole forward compiled at the step's fixed size
  (``JCRA.compile_model()``), what fixed-size batches train with;
- ``fused+compile+cudagraphs`` (GPU only; on a CPU it would be ``fused+compile``): the same, its
  forward and backward graphs replayed as CUDA graphs (``mode="reduce-overhead"``). On the H200 of
  6e72eeb the compiled step ran 33 ms of kernels in a 112 ms step, host-bound: some 3,000 launches a
  step, the calls of its two compiled graphs 93 of the 131 ms of profiled host time, where a replayed
  CUDA graph is one launch;
- ``fused+compile-transformer``: fused kernels, the encoder and decoder compiled with symbolic sizes
  and the rest eager, what ``train.compile=true`` runs for randomly resized batches;
- ``fused+compile-dynamic`` (GPU only: Inductor takes minutes to compile it on the CPU): the whole
  forward compiled with symbolic sizes (``JCRA.compile_model(dynamic=True)``), what
  ``train.compile_whole=true`` runs for randomly resized batches: does it run as fast as the whole
  forward at a fixed size, where the transformer compile leaves the backbone, neck and glue eager
  (H200 of 49d74a0: 105.5 against 159.9 ms a step)?
- ``reference``: eager, with the attention's plain-PyTorch reference (the matcher's Triton cost
  kernel and solver run in every provider on a GPU, so the ratio is the model's part of the step).

CPU: the tiny configuration at batch 2 of 128x160, fp32 (the fused op then runs its reference path,
so the CPU numbers only keep the suite working). Reported: median step time, images/s, peak CUDA
memory above what was allocated before the provider's model was built. The batch starts on the host,
as the data loader gives it: images copied each step, targets moved by the criterion in one copy. As in
the trainer, the step reads the logged losses and the gradient norm on the host (two waits for the
device) before the optimizer steps.
"""

import gc
from collections.abc import Callable

import pytest
import torch
import triton

from bench.profiling import device_name
from jcra import build_model
from jcra.criterion import SetCriterion
from jcra.matcher import HungarianMatcher
from kernels.dispatch import to_device
from kernels.oks import COCO_SIGMAS
from train.config import TrainConfig
from train.distributed import reduce_means
from train.train import build_optimizer, logged

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
MODEL, IMAGE, PEOPLE = ("jcra_r50", (800, 1333), 10) if CUDA else ("jcra_tiny", (128, 160), 3)
BATCH = 2
PROVIDERS = {  # use_fused_kernels, compile_model arguments or None for eager; run in this order, so a
    # run stopped at a time limit still has the headline ratio (the trainer's compile against the reference)
    "reference": (False, None),
    "fused+compile-transformer": (True, {"transformer_only": True, "dynamic": True}),
    "fused+compile": (True, {}),
    "fused+compile+cudagraphs": (True, {"mode": "reduce-overhead"}),
    "fused+compile-dynamic": (True, {"dynamic": True}),
}
GPU_ONLY = {
    "fused+compile+cudagraphs": "CUDA graphs need a GPU; on the CPU this provider is fused+compile",
    "fused+compile-dynamic": "Inductor takes about 7 minutes to compile it on the CPU (torch 2.11; "
    "torch 2.13's fails): too long for CI",
}


def random_targets(gen: torch.Generator) -> list[dict]:
    """People with keypoints inside a box each (given as their ``boxes``), some keypoints unlabelled, in
    input pixels, on the host."""
    h, w = IMAGE
    targets = []
    for _ in range(BATCH):
        corner = torch.rand(PEOPLE, 1, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
        extent = (0.1 + 0.2 * torch.rand(PEOPLE, 1, 2, generator=gen)) * torch.tensor([w, h])
        xy = corner + torch.rand(PEOPLE, 17, 2, generator=gen) * extent
        v = 2.0 * (torch.rand(PEOPLE, 17, 1, generator=gen) > 0.2)
        targets.append(
            {
                "keypoints": torch.cat([xy, v], -1),
                "area": extent.prod(-1).squeeze(-1),
                "boxes": torch.cat([corner, corner + extent], -1).squeeze(1),
                "size": torch.tensor([h, w]),
            }
        )
    return targets


def forget_earlier_providers() -> None:
    """A precaution before each provider's step is built: Dynamo forgets the graphs compiled so far and
    a collection frees what they held, so no earlier provider's model or graphs stay in the process
    (on the CPU none were seen to without it; the H200 run of 49d74a0 timed the trainer's compile
    third, after the whole-forward compile, at 1.17x the reference against 2.05x where it ran second)."""
    torch._dynamo.reset()
    gc.collect()


def _no_mark(phase: str) -> None:
    pass


def make_step(provider: str, mark: Callable[[str], None] = _no_mark) -> Callable[[], None]:
    """The provider's training step as a no-argument function (synchronised on CUDA): model, criterion,
    optimizer and one batch built here. ``mark(phase)`` is called as each phase ends: "forward",
    "matching" (each matcher call), "losses" (the rest of the criterion), "backward", "optimizer"."""
    fused, compile_args = PROVIDERS[provider]
    torch.manual_seed(0)
    model = build_model(MODEL, use_fused_kernels=fused, frozen_backbone=True).to(DEVICE).train()
    if compile_args is not None:
        model.compile_model(**compile_args)

    class MarkedMatcher(HungarianMatcher):
        def match(self, *args):
            mark("losses")
            matches = super().match(*args)
            mark("matching")
            return matches

    # the training configs' heatmap target (PETR's)
    criterion = SetCriterion(17, COCO_SIGMAS, MarkedMatcher(COCO_SIGMAS), heatmap_target="box")
    optimizer = build_optimizer(model)
    gen = torch.Generator().manual_seed(1)
    # the batch on the host, as the loader gives it, copied each step as the trainer copies it
    images = torch.randn(BATCH, 3, *IMAGE, generator=gen)
    mask = torch.zeros(BATCH, *IMAGE, dtype=torch.bool)
    targets = random_targets(gen)
    device = torch.device(DEVICE)

    def step():
        torch.compiler.cudagraph_mark_step_begin()  # a new step for CUDA-graph replays; else nothing
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=CUDA):
            outputs = model(to_device(images, device), to_device(mask, device))
            mark("forward")
            losses = criterion(outputs, targets)
            mark("losses")
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        mark("backward")
        # the trainer's two reads on the host: the logged losses (checked finite) and the gradient norm
        reduce_means(logged(losses), world=1)
        float(torch.nn.utils.clip_grad_norm_(model.parameters(), TrainConfig.clip_grad))
        optimizer.step()
        mark("optimizer")
        if CUDA:
            torch.cuda.synchronize()

    return step


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_train_step(benchmark, provider):
    benchmark.group = f"train step {MODEL} batch {BATCH} {IMAGE[0]}x{IMAGE[1]}"
    if provider in GPU_ONLY and not CUDA:
        pytest.skip(GPU_ONLY[provider])
    forget_earlier_providers()
    torch._dynamo.utils.counters.clear()
    before = torch.cuda.memory_allocated() if CUDA else 0  # what earlier providers may still have left
    step = make_step(provider)
    for _ in range(2):  # compile and warm up outside the timed rounds
        step()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=10 if CUDA else 3, warmup_rounds=1)
    benchmark.extra_info.update(
        provider=provider,
        model=MODEL,
        batch=BATCH,
        image=IMAGE,
        people_per_image=PEOPLE,
        dtype="bf16 autocast" if CUDA else "fp32",
        device=device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        images_per_second=BATCH / benchmark.stats.stats.median,
        peak_memory_mb=(torch.cuda.max_memory_allocated() - before) / 2**20 if CUDA else None,
        # fused+compile+cudagraphs: graphs run outside CUDA graphs, or split around ops left eager
        cuda_graph_skips=torch._dynamo.utils.counters["inductor"]["cudagraph_skips"],
        cuda_graph_partitions=torch._dynamo.utils.counters["inductor"]["cudagraph_partitions"],
    )
