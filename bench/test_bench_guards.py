"""Dynamo's host time before each compiled call, with and without its guards on the model's modules.

A compiled call first checks Dynamo's guards (the inputs, and the modules' attributes and parameters,
as they were when it compiled) and gathers the graph's inputs; only then does the graph start (at
batch 1 on a GPU, one CUDA graph launch), so the GPU waits through this host work. 49d74a0's H200
profile put "Dynamo's guard check and pre-graph code" at 0.57 ms of the 7.0 ms inference at batch 1
(torch 2.11), far above what this suite times on our CPU with torch 2.11; why is not known.

Providers: ``module_guards`` (Dynamo's default) and ``input_guards`` (``compile_model(module_guards=
False)``, as :class:`jcra.PoseEstimator` and the crowd suites compile: the inputs checked, not the
modules). Both compile the end-to-end suite's model (JCRA-R50, ImageNet layout) whole, with a backend
that returns the outputs of the graph's one run at compile time: no kernel runs in a timed call, so its
time is Dynamo's own (guards, pre-graph code, a Python call). Called as ``PoseEstimator(precision=
"bf16")`` calls it: without gradients, under bf16 autocast, with a padding mask. Host work: the image
size does not change it, the host's speed and torch's version do (the GPU machines' hosts are not
this one). Run: ``pytest bench/test_bench_guards.py``.
"""

import pytest
import torch

from bench.profiling import device_name
from jcra import build_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL, IMAGE = "jcra_r50", (256, 384)


def replaying_backend(graph, example_inputs):
    """A Dynamo backend whose compiled graph returns the outputs of its one run here."""
    outputs = graph(*example_inputs)
    return lambda *args: outputs


@pytest.mark.parametrize("provider", ["module_guards", "input_guards"])
def test_bench_dynamo_host_time_a_call(benchmark, provider):
    benchmark.group = f"Dynamo's host time a call, {MODEL}"
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = build_model(MODEL, frozen_backbone=True).to(DEVICE).eval()
    model.compile_model(backend=replaying_backend, module_guards=provider == "module_guards")
    images = torch.randn(1, 3, *IMAGE, device=DEVICE)
    padding_mask = torch.zeros(1, *IMAGE, dtype=torch.bool, device=DEVICE)
    # as PoseEstimator(precision="bf16") calls it: no grad, under autocast, with a padding mask
    with torch.no_grad(), torch.autocast(DEVICE, torch.bfloat16):
        model(images, padding_mask)  # compiles
        benchmark.pedantic(model, (images, padding_mask), rounds=200, warmup_rounds=10)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # no call recompiled
    benchmark.extra_info.update(
        provider=provider,
        model=MODEL,
        image=IMAGE,
        device=device_name(),
        torch=torch.__version__,
        # True in torch 2.11 (Dynamo then skips the guards of modules whose attributes did not
        # change), False in 2.13: the module guards' cost differs between the two
        recursive_dict_tags=torch._dynamo.config.use_recursive_dict_tags_for_guards,
    )
    torch._dynamo.reset()
