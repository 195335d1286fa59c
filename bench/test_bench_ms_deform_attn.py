"""ms_deform_attn: Triton against the eager and the compiled PyTorch reference, at the model's shapes.

Shapes (GPU): encoder self-attention over an 800x1333 image at strides 8/16/32/64 (S = Lq = 22223),
batch 2 and 8, 8 heads of 32 channels, 4 points, at uniform random locations, and at batch 2 with
the clustered locations of an initialised encoder (``clustered-b2``: neighbouring queries share cells,
so the backward's atomic adds collide); pose decoder cross-attention, 300 and 1800 queries, 17 points
(one per keypoint) on each of the 4 levels. On CPU the same layouts at a quarter of the
resolution, reference providers only (the Triton interpreter is a correctness tool, not a timer).

Reported in extra_info: achieved GB/s under two byte models,
  minimal: value, locations, weights and output each moved once (backward adds grad_out in and the
           three gradients out);
  gather:  every sample reads its four corners of D channels (backward also writes them as
           value-gradient updates), plus locations, weights and output;
and peak device memory on CUDA.
"""

import math

import pytest
import torch
import triton

from bench.profiling import device_name, static_compile
from kernels.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference, tuned_tiles

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
M, D = 8, 32


def level_shapes(height: int, width: int) -> tuple[tuple[int, int], ...]:
    """Feature-map sizes at strides 8, 16, 32, 64 (each a stride-2 conv with padding: ceil)."""
    shapes, h, w = [], math.ceil(height / 8), math.ceil(width / 8)
    for _ in range(4):
        shapes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return tuple(shapes)


IMAGE = (800, 1333) if CUDA else (200, 333)
SHAPES = {  # name: (N, Lq or None for Lq = S, P)
    "encoder-b2": (2, None, 4),
    "clustered-b2": (2, None, 4),  # the encoder's locations as initialised, not uniform: see make_inputs
    "encoder-b8": (8, None, 4),
    "decoder-q300": (2, 300, 17),
    "decoder-q1800": (2, 1800, 17),
}
if not CUDA:
    SHAPES = {name: SHAPES[name] for name in ("encoder-b2", "clustered-b2", "decoder-q300")}
PROVIDERS = ["triton", "reference", "reference+compile"] if CUDA else ["reference", "reference+compile"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_inputs(name, dtype):
    N, Lq, P = SHAPES[name]
    shapes = level_shapes(*IMAGE)
    S = sum(h * w for h, w in shapes)
    Lq = Lq or S
    gen = torch.Generator().manual_seed(0)
    value = torch.randn(N, S, M, D, generator=gen).to(DEVICE, dtype)
    if name.startswith("clustered"):
        loc = clustered_locations(shapes, N, P, gen).to(DEVICE)
    else:
        loc = torch.rand(N, Lq, M, 4, P, 2, generator=gen).to(DEVICE)
    attn = torch.rand(N, Lq, M, 4, P, generator=gen).to(DEVICE, dtype)
    return value, shapes, loc, attn


def clustered_locations(shapes, N: int, P: int, gen: torch.Generator) -> torch.Tensor:
    """[N, S, M, L, P, 2] encoder locations as Deformable-DETR initialises them: each token samples
    every level around its own centre, head m along direction 2 pi m / M, point p at p + 1 pixels of
    that level, with a quarter-pixel jitter. Neighbouring queries then read and, backward, add to the
    same cells (on coarse levels hundreds of queries share a cell), which uniform locations never do:
    the atomic adds of the value gradient collide."""
    centres = torch.cat(
        [
            torch.stack(
                torch.meshgrid((torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h, indexing="xy"), -1
            ).reshape(-1, 2)
            for h, w in shapes
        ]
    )  # [S, 2] (x, y) in [0, 1]
    angle = 2 * math.pi * torch.arange(M) / M
    ring = torch.stack([angle.cos(), angle.sin()], -1)[:, None, None] * torch.arange(1, P + 1)[:, None]
    pixel = 1.0 / torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)[:, None]  # [L, 1, 2]
    offsets = (ring + 0.25 * torch.randn(N, 1, M, len(shapes), P, 2, generator=gen)) * pixel
    return centres[None, :, None, None, None] + offsets


def byte_models(value, loc, attn, backward: bool) -> dict[str, int]:
    """Bytes moved under the two documented models (module docstring)."""
    N, S, _, _ = value.shape
    Lq, samples = loc.shape[1], attn.numel()
    out = N * Lq * M * D * value.element_size()
    inputs = value.numel() * value.element_size() + loc.numel() * 4 + attn.numel() * attn.element_size()
    corners = samples * 4 * D * value.element_size()
    minimal = inputs + out
    gather = corners + loc.numel() * 4 + attn.numel() * attn.element_size() + out
    if backward:  # grad_out in, three gradients out; gather also re-reads and scatters the corners
        grads = value.numel() * 4 + loc.numel() * 4 + attn.numel() * 4
        minimal += out + grads
        gather += out + grads + 2 * corners
    return {"minimal": minimal, "gather": gather}


def provider_fn(provider):
    if provider == "triton":
        return lambda v, s, lc, a: ms_deform_attn(v, s, None, lc, a)
    if provider == "reference":
        return ms_deform_attn_reference
    return static_compile(ms_deform_attn_reference)


def sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_ms_deform_attn(benchmark, provider, shape, mode, dtype):
    benchmark.group = f"ms_deform_attn {shape} {mode} {dtype}"
    value, shapes, loc, attn = make_inputs(shape, DTYPES[dtype])
    backward = mode == "forward+backward"
    fn = provider_fn(provider)
    if backward:
        for t in (value, loc, attn):
            t.requires_grad_()
        grad = torch.randn(loc.shape[0], loc.shape[1], M * D, device=DEVICE, dtype=value.dtype)

    def step():
        out = fn(value, shapes, loc, attn)
        if backward:
            out.backward(grad)
            value.grad = loc.grad = attn.grad = None
        sync()

    step()  # compile and autotune outside the timed rounds
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=5 if not CUDA else 20, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    bytes_moved = byte_models(value, loc, attn, backward)
    benchmark.extra_info.update(
        provider=provider,
        shape=shape,
        mode=mode,
        dtype=dtype,
        device=device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        image=IMAGE,
        N=value.shape[0],
        Lq=loc.shape[1],
        S=value.shape[1],
        heads=M,
        channels=D,
        levels=len(shapes),
        points=loc.shape[4],
        gbps_minimal=bytes_moved["minimal"] / seconds / 1e9,
        gbps_gather=bytes_moved["gather"] / seconds / 1e9,
        peak_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if CUDA else None,
        tiles=tuned_tiles() if provider == "triton" else None,
    )
