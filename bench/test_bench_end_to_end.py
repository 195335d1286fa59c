"""End to end, image batch in to COCO records out: JCRA against bottom-up baselines, in one run.

Inputs are real photos (``../shared/data/unlabelled-coco-photos``; random images when absent),
resized to 800x1333 on GPU (288x480 on CPU) and normalised like the evaluation pipeline. JCRA's cost
does not depend on how many people an image holds (a fixed query set, top-k, no grouping, no NMS);
the bottom-up baselines' post-processing does, so their end-to-end time is measured per crowd size
in ``test_bench_bottom_up.py`` and the report combines both against the number of people.

Providers: ``jcra`` (fused kernels + torch.compile of the whole forward at a fixed size, replayed as one
CUDA graph (``mode="reduce-overhead"``: a fixed query set makes every shape static, so nothing of the
forward needs the host), Dynamo checking the inputs only (``module_guards=False``, as
:class:`jcra.PoseEstimator` compiles and the baselines' networks are compiled) + bf16 autocast; on CPU
plain eager fp32, since the fused op then runs its reference), ``jcra+freezing`` (GPU only: ``jcra``
compiled with Inductor's freezing, which makes the weights constants, so their casts to bf16 fold at
compile time instead of running every call; the timed graph ran at least 183 cast kernels a call on the
H200 of 49d74a0, and on the CPU freezing cut the tiny model's compiled inference from 115 kernel calls
to 44; an experiment beside ``jcra``, since the bottom-up networks are not frozen: the crowd comparison
takes ``jcra``) and ``jcra-reference`` (reference ops, eager, fp32). All use the ResNet in its
ImageNet-weights layout (frozen batch norm) with random weights, the network the bottom-up baselines
time too: what a model trained from ImageNet weights deploys. (The from-scratch layout's GroupNorm is
the demo's, not a deployed model's.)
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import triton
from PIL import Image

from bench.profiling import CROWD_GPU_ROUNDS, PEOPLE_KEPT, device_name
from jcra import build_model
from jcra.postprocess import PostProcess

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
MODEL, IMAGE = ("jcra_r50", (800, 1333)) if CUDA else ("jcra_r18", (288, 480))
BATCHES = (1, 8) if CUDA else (1, 2)
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "unlabelled-coco-photos"
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def photos_at_hand(batch: int) -> bool:
    """Whether ``batch`` photos are there (else :func:`load_batch` gives random pixels)."""
    return len(sorted(PHOTOS.glob("*.jpg"))[:batch]) == batch


def load_batch(batch: int) -> torch.Tensor:
    """[batch, 3, H, W] normalised photos at IMAGE (random pixels when the photos are absent)."""
    files = sorted(PHOTOS.glob("*.jpg"))[:batch]
    if len(files) < batch:
        pixels = torch.rand(batch, 3, *IMAGE, generator=torch.Generator().manual_seed(0))
    else:
        h, w = IMAGE
        arrays = [np.asarray(Image.open(f).convert("RGB").resize((w, h), Image.BILINEAR)) for f in files]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return ((pixels - MEAN[:, None, None]) / STD[:, None, None]).to(DEVICE)


COMPILED = ("jcra", "jcra+freezing")
"""Providers with the fused kernels, compiled (on a GPU) and run under bf16 autocast (on a GPU)."""

STAGES = ("backbone", "neck", "encoder", "decoder")
"""JCRA's stage modules, in call order (the rest of the forward is glue: token flattening, proposals
and top-k, the keypoint heads' local maps)."""


def build(provider: str, compile_stages_apart: bool = False):
    """The provider's model in eval mode. ``compile_stages_apart``: compile each of :data:`STAGES` on
    its own instead of the whole forward, so hooks around them can time each (the profiler's view)."""
    compiled = provider in COMPILED
    model = build_model(MODEL, use_fused_kernels=compiled, frozen_backbone=True)
    model = model.to(DEVICE).eval()
    if compiled and CUDA:
        if compile_stages_apart:
            for name in STAGES:
                module = getattr(model, name)
                module.forward = torch.compile(module.forward, fullgraph=True)
        else:
            model.compile_model(mode="reduce-overhead", module_guards=False)
    return model


def inference(provider: str, batch: int, model=None):
    """A no-argument function: one batch of photos through the model (``build(provider)`` unless
    given) and post-processing to COCO records (ends in a host copy, so it is synchronised)."""
    model = build(provider) if model is None else model
    postprocess = PostProcess(top_k=PEOPLE_KEPT)
    images = load_batch(batch)
    orig_sizes = torch.tensor([IMAGE] * batch)
    autocast = provider in COMPILED and CUDA

    @torch.inference_mode()  # as the bottom-up networks are timed
    def infer():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            outputs = model(images)
        return postprocess(outputs, orig_sizes, list(range(batch)))

    return infer


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")  # -k b1 picks batch 1
@pytest.mark.parametrize("provider", ["jcra", "jcra+freezing", "jcra-reference"])
def test_end_to_end(benchmark, provider, batch):
    if provider == "jcra+freezing" and not CUDA:
        pytest.skip("on the CPU jcra runs eager: there is no compiled graph to freeze")
    benchmark.group = f"end to end batch {batch} {IMAGE[0]}x{IMAGE[1]}"
    torch._dynamo.utils.counters.clear()
    infer = inference(provider, batch)
    # Freezing is read from Inductor's global config when the graph compiles, on the first call
    # (torch.compile's options={"freezing": True} does not turn it on)
    with torch._inductor.config.patch(freezing=provider == "jcra+freezing"):
        for _ in range(2):  # compile, then record the CUDA graph, outside the timed rounds
            records = infer()
    assert len(records) == 100 * batch
    benchmark.pedantic(infer, rounds=CROWD_GPU_ROUNDS if CUDA else 3, warmup_rounds=1)
    benchmark.extra_info.update(
        provider=provider,
        model=MODEL,
        batch=batch,
        image=IMAGE,
        source="unlabelled-coco-photos" if photos_at_hand(batch) else "random pixels",
        dtype="bf16 autocast" if provider in COMPILED and CUDA else "fp32",
        cuda_graph_skips=torch._dynamo.utils.counters["inductor"]["cudagraph_skips"],
        # Inductor split the graph around ops it left eager, each piece its own CUDA graph
        cuda_graph_partitions=torch._dynamo.utils.counters["inductor"]["cudagraph_partitions"],
        device=device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        images_per_second=batch / benchmark.stats.stats.median,
    )
