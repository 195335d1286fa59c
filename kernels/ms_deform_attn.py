"""Multi-scale deformable attention (Deformable-DETR), fused in Triton, beside its PyTorch reference.

Layout (Deformable-DETR's):
    value               [N, S, M, D]        S = sum over levels of H_l * W_l, M heads of D channels
    spatial_shapes      [L, 2]  (H, W)      int64 tensor, or a sequence of (H, W) Python ints
    level_start_index   [L]                 offset of each level in S
    sampling_locations  [N, Lq, M, L, P, 2] (x, y) normalised to [0, 1] over each level's map
    attention_weights   [N, Lq, M, L, P]
    output              [N, Lq, M * D]

Sampling convention: bilinear, pixel = loc * size - 0.5, zeros outside the map; exactly
``grid_sample(value_l, 2 * loc - 1, align_corners=False, padding_mode="zeros")`` for finite locations.
The kernels also sample zeros, with zero gradients, at non-finite ones (NaN, +-inf), on GPUs and
under the interpreter alike, where grid_sample (the reference) gives NaN; the decoder's
``sample_map`` does the same.

The file reads top to bottom: reference, Triton kernels, launchers, custom-op registration, public
function.
"""

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.dispatch import device_table, use_triton

Shapes = tuple[tuple[int, int], ...]


# ----------------------------------------------------------------------------------------------------
# 1. Reference (the CPU path and the benchmark baseline)
# ----------------------------------------------------------------------------------------------------
def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: Sequence[Sequence[int]] | torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Pure-PyTorch multi-scale deformable attention, one ``grid_sample`` per level.

    Computes in fp32 (fp64 stays fp64) and returns the value's dtype. Shapes as in the module
    docstring; ``spatial_shapes`` may be a tensor or Python ints (ints keep ``torch.compile`` graphs
    whole).
    """
    shapes = _as_shapes(spatial_shapes)
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    compute = _reference_dtype(value)
    sampled = [
        F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        for v, g in _levels_and_grids(value, shapes, sampling_locations)
    ]
    # [N*M, D, Lq, L*P] weighted by [N*M, 1, Lq, L*P], summed over levels and points
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.to(compute).transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (stacked * weights).sum(-1).view(N, M * D, Lq)
    return out.transpose(1, 2).contiguous().to(value.dtype)


def ms_deform_attn_reference_backward(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: Sequence[Sequence[int]] | torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of :func:`ms_deform_attn_reference` wrt value, locations and weights (each in its
    input's dtype, contiguous), in closed form: aten's ``grid_sampler_2d_backward`` per level, no
    autograd, so it runs where the custom op's backward does (below the autograd key in compiled
    graphs) and under any dispatch mode (FLOP counters, loggers)."""
    shapes = _as_shapes(spatial_shapes)
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    compute = _reference_dtype(value)
    upstream = grad_output.to(compute).view(N, Lq, M, D).permute(0, 2, 3, 1).reshape(N * M, D, Lq, 1)
    weights = attention_weights.to(compute).transpose(1, 2).reshape(N * M, 1, Lq, L, P)
    grad_value, grad_grid, grad_weights = [], [], []
    for lvl, (v, g) in enumerate(_levels_and_grids(value, shapes, sampling_locations)):
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        grad_weights.append((sampled * upstream).sum(1))  # [N*M, Lq, P]
        # bilinear (0), zero padding (0), align_corners False: grid_sample's arguments above
        gv, gg = torch.ops.aten.grid_sampler_2d_backward(
            upstream * weights[..., lvl, :], v, g, 0, 0, False, [True, True]
        )
        h, w = shapes[lvl]  # not -1 in the view: N = 0 leaves no size to infer
        grad_value.append(gv.view(N, M, D, h * w).permute(0, 3, 1, 2))  # [N, H*W, M, D]
        grad_grid.append(gg.view(N, M, Lq, P, 2).transpose(1, 2))  # [N, Lq, M, P, 2]
    grad_loc = 2 * torch.stack(grad_grid, 3)  # grid = 2 * location - 1
    grad_attn = torch.stack(grad_weights, 2).view(N, M, Lq, L, P).transpose(1, 2)
    return (
        torch.cat(grad_value, 1).to(value.dtype).contiguous(),
        grad_loc.to(sampling_locations.dtype).contiguous(),
        grad_attn.to(attention_weights.dtype).contiguous(),
    )


def _reference_dtype(value: torch.Tensor) -> torch.dtype:
    return torch.float64 if value.dtype == torch.float64 else torch.float32


def _levels_and_grids(value: torch.Tensor, shapes: Shapes, sampling_locations: torch.Tensor):
    """Per level, its value map [N*M, D, H, W] and its sampling grid [N*M, Lq, P, 2] in grid_sample's
    [-1, 1], both in the reference's compute dtype."""
    N, _, M, D = value.shape
    compute = _reference_dtype(value)
    levels = value.to(compute).split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations.to(compute) - 1
    for lvl, (h, w) in enumerate(shapes):
        yield (
            levels[lvl].permute(0, 2, 3, 1).reshape(N * M, D, h, w),
            grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1),
        )


def _as_shapes(spatial_shapes: Sequence[Sequence[int]] | torch.Tensor) -> Shapes:
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    shapes = tuple((h, w) for h, w in spatial_shapes)
    # integers (numpy's, symbolic ones under torch.compile), never 2.5 silently truncated, nor True
    if not all(
        isinstance(n, numbers.Integral | torch.SymInt) and not isinstance(n, bool)
        for hw in shapes
        for n in hw
    ):
        raise ValueError(f"sizes must be integers, got {shapes}")
    return tuple((int(h), int(w)) for h, w in shapes)


# ----------------------------------------------------------------------------------------------------
# 2. Triton kernels
# One program gathers BLOCK_Q queries of one (image n, head m): for every level and point it loads the
# four bilinear corners as [BLOCK_Q, BLOCK_D] tiles (D channels contiguous in `value`, so each corner
# is one coalesced row read) and accumulates in fp32. Level tables (H, W, start) are read from a tiny
# device tensor, and the token counts Lq and S are not specialised (Triton would compile anew whenever
# one turned divisible by 16 or 1; for sm_90 the code is the same either way), so one compiled kernel
# serves every image size. Offsets are int64: N*S*M*D passes 2^31 at batch 8 of 1333x800 images with
# 256 channels.
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _program_tile(Lq, S, M, D, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's BLOCK_Q queries of one (image n, head m): the query mask, the channels and their
    mask, each query's row of loc/attn/out ``[BLOCK_Q]``, and the (n, m) base row of `value`."""
    pid_q = tl.program_id(0).to(tl.int64)
    pid_nm = tl.program_id(1).to(tl.int64)
    n = pid_nm // M
    m = pid_nm % M
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    return q < Lq, d, d < D, (n * Lq + q) * M + m, n * S * M + m


@triton.jit
def _level(levels_ptr, lvl):
    """Height, width and first token of level `lvl` in the [L, 3] level table."""
    return tl.load(levels_ptr + 3 * lvl), tl.load(levels_ptr + 3 * lvl + 1), tl.load(levels_ptr + 3 * lvl + 2)


@triton.jit
def _bilinear_setup(loc_ptr, idx, q_mask, w, h):
    """Corner (x0, y0) and fractions (fx, fy) of the sample at location index `idx` on a W x H map."""
    loc_x = tl.load(loc_ptr + 2 * idx, mask=q_mask, other=0.0)
    loc_y = tl.load(loc_ptr + 2 * idx + 1, mask=q_mask, other=0.0)
    # Clamp far-away points (all four corners stay outside) so the integer cast cannot overflow. NaN
    # goes off the map too: compiled, max and min drop a NaN (maxnum), but the interpreter keeps it.
    x = tl.minimum(tl.maximum(loc_x * w - 0.5, -2.0), w + 1.0)
    y = tl.minimum(tl.maximum(loc_y * h - 0.5, -2.0), h + 1.0)
    x = tl.where(x == x, x, -2.0)
    y = tl.where(y == y, y, -2.0)
    x0f = tl.floor(x)
    y0f = tl.floor(y)
    return x0f.to(tl.int64), y0f.to(tl.int64), x - x0f, y - y0f


@triton.jit
def _corner_offset(row_base, start, x, y, w, h, M, D, q_mask):
    """Element offset of corner (x, y) of the level starting at `start`, and whether it is on the map."""
    inside = q_mask & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    return (row_base + (start + y * w + x) * M) * D, inside


@triton.jit
def _corners(row_base, start, x0, y0, w, h, M, D, q_mask):
    """Offsets and on-map flags of the four bilinear corners, (x0, y0), (x0 + 1, y0), (x0, y0 + 1) and
    (x0 + 1, y0 + 1), in that order."""
    o00, in00 = _corner_offset(row_base, start, x0, y0, w, h, M, D, q_mask)
    o01, in01 = _corner_offset(row_base, start, x0 + 1, y0, w, h, M, D, q_mask)
    o10, in10 = _corner_offset(row_base, start, x0, y0 + 1, w, h, M, D, q_mask)
    o11, in11 = _corner_offset(row_base, start, x0 + 1, y0 + 1, w, h, M, D, q_mask)
    return o00, in00, o01, in01, o10, in10, o11, in11


@triton.jit
def _load_corner(value_ptr, offset, inside, d, d_mask):
    ptrs = value_ptr + offset[:, None] + d[None, :]
    return tl.load(ptrs, mask=inside[:, None] & d_mask[None, :], other=0.0).to(tl.float32)


@triton.jit(do_not_specialize=["Lq", "S"])
def _ms_deform_attn_fwd_kernel(
    # pointers
    value_ptr,  # [N, S, M, D]
    levels_ptr,  # [L, 3] int64: H, W, start
    loc_ptr,  # [N, Lq, M, L, P, 2] fp32
    attn_ptr,  # [N, Lq, M, L, P]
    out_ptr,  # [N, Lq, M, D]
    # sizes
    Lq,
    S,
    M,
    D,
    # meta
    L: tl.constexpr,  # levels and points are loop bounds: few distinct values, one compile each
    P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    q_mask, d, d_mask, query_row, row_base = _program_tile(Lq, S, M, D, BLOCK_Q, BLOCK_D)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for lvl in range(L):
        h, w, start = _level(levels_ptr, lvl)
        for p in range(P):
            idx = (query_row * L + lvl) * P + p
            a = tl.load(attn_ptr + idx, mask=q_mask, other=0.0).to(tl.float32)
            x0, y0, fx, fy = _bilinear_setup(loc_ptr, idx, q_mask, w, h)
            o00, in00, o01, in01, o10, in10, o11, in11 = _corners(row_base, start, x0, y0, w, h, M, D, q_mask)
            sample = (
                ((1 - fx) * (1 - fy))[:, None] * _load_corner(value_ptr, o00, in00, d, d_mask)
                + (fx * (1 - fy))[:, None] * _load_corner(value_ptr, o01, in01, d, d_mask)
                + ((1 - fx) * fy)[:, None] * _load_corner(value_ptr, o10, in10, d, d_mask)
                + (fx * fy)[:, None] * _load_corner(value_ptr, o11, in11, d, d_mask)
            )
            acc += a[:, None] * sample
    out_ptrs = out_ptr + query_row[:, None] * D + d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def _scatter_corner(scatter, entry, offset, inside, coef, g, d, d_mask, q_mask, D, DETERMINISTIC):
    """Add coef * g to one corner's value gradient, or, deterministic, record (destination, coef).
    ``scatter`` holds the pointers (grad_value, dst, coef) every corner's update shares."""
    grad_value_ptr, dst_ptr, coef_ptr = scatter
    if DETERMINISTIC:
        # Destination row (n*S + s)*M + m; off-map corners get -1, which sorts before every row.
        tl.store(dst_ptr + entry, tl.where(inside, offset // D, -1), mask=q_mask)
        tl.store(coef_ptr + entry, tl.where(inside, coef, 0.0), mask=q_mask)
    else:
        ptrs = grad_value_ptr + offset[:, None] + d[None, :]
        # Relaxed: a sum needs no ordering. The default (acq_rel) put a MEMBAR.ALL.GPU before every add;
        # on an H200 the encoder's forward+backward went from 2.89 to 1.83 ms without it.
        tl.atomic_add(ptrs, coef[:, None] * g, mask=inside[:, None] & d_mask[None, :], sem="relaxed")


@triton.jit(do_not_specialize=["Lq", "S"])
def _ms_deform_attn_bwd_kernel(
    # pointers
    grad_out_ptr,  # [N, Lq, M, D]
    value_ptr,  # [N, S, M, D]
    levels_ptr,  # [L, 3] int64
    loc_ptr,  # [N, Lq, M, L, P, 2] fp32
    attn_ptr,  # [N, Lq, M, L, P]
    grad_value_ptr,  # [N, S, M, D] fp32, zero-filled (atomic mode)
    grad_loc_ptr,  # [N, Lq, M, L, P, 2] fp32
    grad_attn_ptr,  # [N, Lq, M, L, P] fp32
    dst_ptr,  # [N, Lq, M, L, P, 4] int64 (deterministic mode)
    coef_ptr,  # [N, Lq, M, L, P, 4] fp32 (deterministic mode)
    # sizes
    Lq,
    S,
    M,
    D,
    # meta
    L: tl.constexpr,  # levels and points are loop bounds: few distinct values, one compile each
    P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
):
    q_mask, d, d_mask, query_row, row_base = _program_tile(Lq, S, M, D, BLOCK_Q, BLOCK_D)
    g_ptrs = grad_out_ptr + query_row[:, None] * D + d[None, :]
    g = tl.load(g_ptrs, mask=q_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
    scatter = (grad_value_ptr, dst_ptr, coef_ptr)
    for lvl in range(L):
        h, w, start = _level(levels_ptr, lvl)
        for p in range(P):
            idx = (query_row * L + lvl) * P + p
            a = tl.load(attn_ptr + idx, mask=q_mask, other=0.0).to(tl.float32)
            x0, y0, fx, fy = _bilinear_setup(loc_ptr, idx, q_mask, w, h)
            o00, in00, o01, in01, o10, in10, o11, in11 = _corners(row_base, start, x0, y0, w, h, M, D, q_mask)
            v00 = _load_corner(value_ptr, o00, in00, d, d_mask)
            v01 = _load_corner(value_ptr, o01, in01, d, d_mask)
            v10 = _load_corner(value_ptr, o10, in10, d, d_mask)
            v11 = _load_corner(value_ptr, o11, in11, d, d_mask)
            w00 = (1 - fx) * (1 - fy)
            w01 = fx * (1 - fy)
            w10 = (1 - fx) * fy
            w11 = fx * fy
            sample = w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 + w11[:, None] * v11
            tl.store(grad_attn_ptr + idx, tl.sum(g * sample, axis=1), mask=q_mask)
            # d sample / d fx and d fy, then the chain rule through x = loc_x * W - 0.5.
            dx = (1 - fy)[:, None] * (v01 - v00) + fy[:, None] * (v11 - v10)
            dy = (1 - fx)[:, None] * (v10 - v00) + fx[:, None] * (v11 - v01)
            tl.store(grad_loc_ptr + 2 * idx, a * w * tl.sum(g * dx, axis=1), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * idx + 1, a * h * tl.sum(g * dy, axis=1), mask=q_mask)
            entry = 4 * idx
            _scatter_corner(scatter, entry, o00, in00, a * w00, g, d, d_mask, q_mask, D, DETERMINISTIC)
            _scatter_corner(scatter, entry + 1, o01, in01, a * w01, g, d, d_mask, q_mask, D, DETERMINISTIC)
            _scatter_corner(scatter, entry + 2, o10, in10, a * w10, g, d, d_mask, q_mask, D, DETERMINISTIC)
            _scatter_corner(scatter, entry + 3, o11, in11, a * w11, g, d, d_mask, q_mask, D, DETERMINISTIC)


@triton.jit
def _gather_grad_value_kernel(
    # pointers
    grad_out_ptr,  # [N*Lq*M, D]
    order_ptr,  # [E] entries sorted (stably) by destination row
    segment_ptr,  # [R + 1] first sorted entry of each destination row
    coef_ptr,  # [E] fp32
    grad_value_ptr,  # [R, D]
    # sizes
    D,
    ENTRIES_PER_ROW,  # L * P * 4 entries come from one grad_out row
    # meta
    BLOCK_D: tl.constexpr,
):
    """Deterministic value gradient: each row sums its contributions in one fixed order, no atomics."""
    row = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    begin = tl.load(segment_ptr + row)
    end = tl.load(segment_ptr + row + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    i = begin
    while i < end:  # a while loop: Triton's interpreter cannot range() over loaded bounds
        entry = tl.load(order_ptr + i)
        coef = tl.load(coef_ptr + entry)
        src = entry // ENTRIES_PER_ROW
        acc += coef * tl.load(grad_out_ptr + src * D + d, mask=d_mask, other=0.0).to(tl.float32)
        i += 1
    tl.store(grad_value_ptr + row * D + d, acc.to(grad_value_ptr.dtype.element_ty), mask=d_mask)


# ----------------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------------
# BLOCK_D covers D in one tile (D is 32 in the model). BLOCK_Q and num_warps set how many elements of
# a [BLOCK_Q, BLOCK_D] corner tile a thread holds. The level and point loops are unrolled, so several
# corner tiles are in flight at once and registers grow with that count. For L = 4, D = 32, 8 heads
# on sm_90, compiled as the runtime specialises the launch (ptxas of Triton 3.6; `python -m
# bench.sm90_resources` prints them), the forward takes ~55 registers at 4 elements a thread, 64-80
# at 8 and 104 (bf16) to 168 (fp32) at 16; in fp32 its tiles of 8 and 16 elements spill 2 to 13
# values. The backward, which also holds grad_out and two derivative tiles, takes 72-80 at 4 and
# 128-158 at 8 (2 spill stores in fp32 with 8 warps), and 210-239 without spills at 16, where it was
# held out when a compile without the runtime's specialisation spilled; not retimed since. So a
# config is a candidate for a given BLOCK_D when a thread holds 4 to 16 elements (4 to 8 backward). Fewer
# registers leave room for more resident warps to hide gather latency; more elements put more loads in
# flight per warp. Which wins is the GPU's call: on CUDA a launch of at least _TUNE_MIN_ROWS
# query-heads autotunes over the candidates once per (L, P, D, dtypes). Smaller launches (tests, small
# decoders: launch-bound anyway) and the interpreter take the first candidate, the one with the most
# elements a thread.
_CANDIDATES = ((128, 4), (64, 4), (32, 4), (16, 4), (8, 4), (4, 4), (64, 8), (32, 8))  # (BLOCK_Q, warps)
_MAX_PER_THREAD = {"forward": 16, "backward": 8}
_TUNE_MIN_ROWS = 1 << 14


def _candidates(block_d: int, direction: str) -> list[tuple[int, int]]:
    fits = [
        (block_q, warps)
        for block_q, warps in _CANDIDATES
        if 4 <= block_q * block_d // (32 * warps) <= _MAX_PER_THREAD[direction]
    ]
    return fits or [(4, 4)]  # D so wide that even 4 rows exceed the budget: the smallest tile


def _bench_config(kernel_call, quantiles):
    """Time one candidate in 10 ms of warm-up and 40 of repeats (Triton: 25 and 100): ~1 s a tuning."""
    return triton.testing.do_bench(kernel_call, warmup=10, rep=40, quantiles=quantiles)


def _autotuned(kernel, direction: str, key: tuple[str, ...] = (), **options):
    """``kernel`` wrapped by triton.autotune over the candidates that fit its BLOCK_D, tuned once per
    (L, P, D, dtypes) and ``key``."""

    def prune(configs, named_args, **kwargs):
        fits = _candidates(kwargs["BLOCK_D"], direction)
        return [c for c in configs if (c.kwargs["BLOCK_Q"], c.num_warps) in fits]

    return triton.autotune(
        [triton.Config({"BLOCK_Q": block_q}, num_warps=warps) for block_q, warps in _CANDIDATES],
        key=["L", "P", "D", *key],
        prune_configs_by={"early_config_prune": prune},
        do_bench=_bench_config,
        **options,
    )(kernel)


_fwd_tuned = _autotuned(_ms_deform_attn_fwd_kernel, "forward")
# the deterministic backward writes its value gradient another way (no atomics): a tuning of its own
_bwd_tuned = _autotuned(
    _ms_deform_attn_bwd_kernel, "backward", key=("DETERMINISTIC",), reset_to_zero=["grad_value_ptr"]
)


def tuned_tiles() -> dict[str, dict[str, str]]:
    """The tiles the autotuner picked in this process, per direction: {tuning key (L, P, D, dtypes...):
    "BLOCK_Q=.. warps=.."}; empty before a large CUDA launch (benchmarks record it)."""
    return {
        direction: {
            str(key): f"BLOCK_Q={config.kwargs['BLOCK_Q']} warps={config.num_warps}"
            for key, config in tuned.cache.items()
        }
        for direction, tuned in (("forward", _fwd_tuned), ("backward", _bwd_tuned))
    }


MAX_BATCH_HEADS = 65535
"""CUDA's limit on a grid's second axis, which runs over N * M."""


def _launch(kernel, tuned, direction: str, lq: int, batch_heads: int, *args, **meta) -> None:
    """Grid (Lq blocks, N * M); autotuned on large CUDA launches, else the first fitting candidate."""
    if batch_heads > MAX_BATCH_HEADS:
        raise ValueError(f"value: N * M = {batch_heads} exceeds {MAX_BATCH_HEADS}, the kernels' grid limit")

    def grid(cfg):
        return (triton.cdiv(lq, cfg["BLOCK_Q"]), batch_heads)

    if args[0].is_cuda and lq * batch_heads >= _TUNE_MIN_ROWS:
        tuned[grid](*args, **meta)
    else:
        block_q, warps = _candidates(meta["BLOCK_D"], direction)[0]
        kernel[grid({"BLOCK_Q": block_q})](*args, **meta, BLOCK_Q=block_q, num_warps=warps)


def _level_table(shapes: Shapes, device: torch.device) -> torch.Tensor:
    """[L, 3] int64 (H, W, start), the kernels' view of the levels; built outside the opaque op, in
    the traced graph when compiled (see ``device_table``)."""
    starts, total = [], 0
    for h, w in shapes:
        starts.append(total)
        total += h * w
    return device_table([(h, w, s) for (h, w), s in zip(shapes, starts, strict=True)], torch.int64, device)


def _block_d(D: int) -> int:
    return max(triton.next_power_of_2(D), 4)


def _ms_deform_attn_forward_triton(value, levels, loc, attn):
    N, S, M, D = value.shape
    Lq, L, P = loc.shape[1], loc.shape[3], loc.shape[4]
    out = value.new_empty(N, Lq, M * D)
    _launch(
        _ms_deform_attn_fwd_kernel, _fwd_tuned, "forward", Lq, N * M,
        value, levels, loc, attn, out,
        Lq, S, M, D,
        L=L, P=P, BLOCK_D=_block_d(D),
    )  # fmt: skip
    return out


def _ms_deform_attn_backward_triton(grad_out, value, levels, loc, attn, deterministic):
    N, S, M, D = value.shape
    Lq, L, P = loc.shape[1], loc.shape[3], loc.shape[4]
    grad_loc = torch.empty_like(loc, dtype=torch.float32)
    grad_attn = torch.empty_like(attn, dtype=torch.float32)
    entries = N * Lq * M * L * P * 4
    if deterministic:
        grad_value = torch.empty(N, S, M, D, dtype=torch.float32, device=value.device)
        dst = torch.empty(entries, dtype=torch.int64, device=value.device)
        coef = torch.empty(entries, dtype=torch.float32, device=value.device)
    else:
        grad_value = torch.zeros(N, S, M, D, dtype=torch.float32, device=value.device)
        dst = coef = grad_value  # unused
    block_d = _block_d(D)
    _launch(
        _ms_deform_attn_bwd_kernel, _bwd_tuned, "backward", Lq, N * M,
        grad_out, value, levels, loc, attn,
        grad_value, grad_loc, grad_attn, dst, coef,
        Lq, S, M, D,
        L=L, P=P, BLOCK_D=block_d, DETERMINISTIC=deterministic,
    )  # fmt: skip
    if deterministic:
        rows = N * S * M
        # Off-map corners carry destination -1: the stable sort puts them first, outside every segment.
        sorted_dst, order = torch.sort(dst, stable=True)
        segments = torch.searchsorted(sorted_dst, torch.arange(rows + 1, device=dst.device))
        _gather_grad_value_kernel[(rows,)](
            grad_out, order, segments, coef, grad_value, D, L * P * 4, BLOCK_D=block_d, num_warps=1
        )
    return grad_value.to(value.dtype), grad_loc, grad_attn


# ----------------------------------------------------------------------------------------------------
# 4. Registration: an opaque custom op that picks Triton or the reference inside (kernels.dispatch),
# so torch.compile(fullgraph=True) traces it on GPUs and on CPU-only machines alike.
# ----------------------------------------------------------------------------------------------------
def _unflatten(spatial_shapes: list[int]) -> Shapes:
    flat = [int(size) for size in spatial_shapes]
    return tuple(zip(flat[0::2], flat[1::2], strict=True))


def _triton_path(value: torch.Tensor) -> bool:
    """The kernels sum in fp32: fp64 values take the reference, so fp64 means fp64 on every device
    (what gradcheck needs)."""
    return use_triton(value) and value.dtype != torch.float64


@torch.library.custom_op("jcra::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(
    value: torch.Tensor,
    spatial_shapes: list[int],
    levels: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    deterministic: bool,
) -> torch.Tensor:
    if _triton_path(value):
        return _ms_deform_attn_forward_triton(
            value.contiguous(), levels, sampling_locations.contiguous(), attention_weights.contiguous()
        )
    return ms_deform_attn_reference(value, _unflatten(spatial_shapes), sampling_locations, attention_weights)


@_ms_deform_attn_op.register_fake
def _(value, spatial_shapes, levels, sampling_locations, attention_weights, deterministic):
    N, _, M, D = value.shape
    return value.new_empty(N, sampling_locations.shape[1], M * D)


@torch.library.custom_op("jcra::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: list[int],
    levels: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _triton_path(value):
        grad_value, grad_loc, grad_attn = _ms_deform_attn_backward_triton(
            grad_output.contiguous(), value.contiguous(), levels,
            sampling_locations.contiguous(), attention_weights.contiguous(), deterministic,
        )  # fmt: skip
        return grad_value, grad_loc.to(sampling_locations.dtype), grad_attn.to(attention_weights.dtype)
    return ms_deform_attn_reference_backward(
        grad_output, value, _unflatten(spatial_shapes), sampling_locations, attention_weights
    )


@_ms_deform_attn_backward_op.register_fake
def _(grad_output, value, spatial_shapes, levels, sampling_locations, attention_weights, deterministic):
    # Contiguous gradients, as both implementations return them.
    return tuple(t.new_empty(t.shape) for t in (value, sampling_locations, attention_weights))


def _setup_context(ctx, inputs, output):
    value, spatial_shapes, levels, sampling_locations, attention_weights, deterministic = inputs
    ctx.save_for_backward(value, levels, sampling_locations, attention_weights)
    ctx.spatial_shapes, ctx.deterministic = spatial_shapes, deterministic


def _backward(ctx, grad_output):
    value, levels, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_loc, grad_attn = _ms_deform_attn_backward_op(
        grad_output, value, ctx.spatial_shapes, levels, sampling_locations, attention_weights,
        ctx.deterministic,
    )  # fmt: skip
    return grad_value, None, None, grad_loc, grad_attn, None


_ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------
# 5. Public function
# ----------------------------------------------------------------------------------------------------
def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    level_start_index: torch.Tensor | Sequence[int] | None,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    deterministic: bool | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention; returns [N, Lq, M * D] in the value's dtype.

    Shapes and the sampling convention are in the module docstring. Differentiable in value,
    sampling_locations and attention_weights, once: no second derivatives (``create_graph``,
    ``gradgradcheck`` and ``torch.func.grad`` raise). Accumulates in fp32; locations are used in fp32
    whatever their dtype, except with fp64 values, which run the fp64 reference on fp64 locations.
    ``spatial_shapes`` and ``level_start_index`` may be tensors (Deformable-DETR's interface: read once
    to the host, a sync on CUDA) or Python ints (no sync, and what keeps
    ``torch.compile(fullgraph=True)`` graphs whole); ``level_start_index=None`` derives it.
    ``deterministic`` (default: ``torch.are_deterministic_algorithms_enabled()``) makes the value
    gradient atomic-free and bitwise reproducible, at the cost of a sort.
    """
    shapes = _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if deterministic is not None and not isinstance(deterministic, bool):
        raise ValueError(f"deterministic must be True, False or None, got {deterministic!r}")
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    flat = [size for hw in shapes for size in hw]
    levels = _level_table(shapes, value.device)
    loc = sampling_locations if value.dtype == torch.float64 else sampling_locations.float()
    return _ms_deform_attn_op(value, flat, levels, loc, attention_weights, bool(deterministic))


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> Shapes:
    """Validate every argument; raise ValueError naming the first bad one. Returns (H, W) per level."""
    for name, t in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != value.device:
            raise ValueError(f"{name} is on {t.device} but value is on {value.device}")
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got shape {tuple(value.shape)}")
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f"spatial_shapes must be [L, 2], got shape {tuple(spatial_shapes.shape)}")
        if spatial_shapes.is_floating_point() or spatial_shapes.dtype == torch.bool:
            raise ValueError(f"spatial_shapes must hold integers, got {spatial_shapes.dtype}")
    try:
        shapes = _as_shapes(spatial_shapes)
    except (TypeError, ValueError) as err:
        raise ValueError(f"spatial_shapes must be [L, 2] integers (H, W): {err}") from None
    if not shapes or any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f"spatial_shapes must hold at least one level of positive sizes, got {shapes}")
    N, S, M, _ = value.shape
    L = len(shapes)
    total = sum(h * w for h, w in shapes)
    if S != total:
        raise ValueError(f"value has S={S} positions but spatial_shapes {shapes} sum to {total}")
    if level_start_index is not None:
        if isinstance(level_start_index, torch.Tensor):
            level_start_index = level_start_index.tolist()
        if not isinstance(level_start_index, Sequence):
            raise ValueError(f"level_start_index must be [L] integers, got {level_start_index!r}")
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
        if list(level_start_index) != starts:
            raise ValueError(
                f"level_start_index {list(level_start_index)} is inconsistent with spatial_shapes {shapes}: "
                f"expected {starts}"
            )
    loc = sampling_locations
    if loc.dim() != 6 or loc.shape[0] != N or loc.shape[2] != M or loc.shape[3] != L or loc.shape[5] != 2:
        raise ValueError(
            f"sampling_locations must be [N={N}, Lq, M={M}, L={L}, P, 2], got shape {tuple(loc.shape)}"
        )
    expected = tuple(loc.shape[:5])
    if tuple(attention_weights.shape) != expected:
        raise ValueError(
            f"attention_weights must be [N, Lq, M, L, P] = {expected}, "
            f"got shape {tuple(attention_weights.shape)}"
        )
    return shapes
