"""Exact batched linear assignment (minimum-cost matching) in Triton beside scipy's solver.

Each image's problem is solved by shortest augmenting paths with dual potentials, the
Jonker-Volgenant family that scipy's ``linear_sum_assignment`` (Crouse's algorithm) implements: rows
are added one at a time, a Dijkstra search over reduced costs ``cost[i, j] - u[i] - v[j]`` finds the
cheapest augmenting path to a free column, the duals are updated so every matched edge stays tight,
and the path is flipped. The optimum is exact (no epsilon, unlike an auction), so totals equal
scipy's up to floating-point rounding; with ties the assignment itself may differ.

The smaller side of each image is the row side (the ground truths when ``num_gt <= Q``, as in the
model; otherwise the queries), so every row is assigned and at most ``min(Q, num_gt)`` pairs exist.
"""

import numbers
from collections.abc import Sequence

import numpy as np
import torch
import triton
import triton.language as tl
from scipy.optimize import linear_sum_assignment

from kernels.dispatch import eager_or_op, to_device, use_triton

# ---------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------


def _empty_outputs(b: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded outputs with every entry invalid: query_index, gt_index ``[b, n]`` of -1, valid False."""
    query_index = torch.full((b, n), -1, dtype=torch.int64, device=device)
    return query_index, query_index.clone(), torch.zeros((b, n), dtype=torch.bool, device=device)


def linear_assignment_reference(
    cost: torch.Tensor, num_gt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scipy's ``linear_sum_assignment`` image by image, in the padded format of :func:`linear_assignment`.

    One copy of ``cost`` to the host (in fp64); images whose used block ``cost[b, :, :num_gt[b]]``
    holds NaN or inf are left all-invalid (the public function turns that into a ValueError).
    """
    b, q, g = cost.shape
    query_index, gt_index, valid = _empty_outputs(b, min(q, g), torch.device("cpu"))
    cost_np = cost.detach().cpu().double().numpy()
    for image, n_gt in enumerate(num_gt.cpu().clamp(0, g).tolist()):
        block = cost_np[image, :, :n_gt]  # [Q, n_gt]
        if block.size == 0 or not np.isfinite(block).all():
            continue
        rows, cols = linear_sum_assignment(block)
        order = np.argsort(cols, kind="stable")  # sorted by ground truth
        n = len(order)
        query_index[image, :n] = torch.from_numpy(rows[order])
        gt_index[image, :n] = torch.from_numpy(cols[order])
        valid[image, :n] = True
    return query_index.to(cost.device), gt_index.to(cost.device), valid.to(cost.device)


# ---------------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------------


# A search step is a chain of warp-wide reductions, each waiting on the one before. On sm_80+ a 32-bit
# integer reduction is one instruction (REDUX), a float one a tree of five shuffles, so fp32
# reductions run on integer images of the floats: their bit patterns to pick a lane, order-preserving
# ones to take a minimum. Both give exactly the floats a float reduction would. (fp64 has no 64-bit
# REDUX to gain: its reductions stay float ones.)


@triton.jit
def _pick(vec, offs, j):
    """``vec[j]`` as a scalar: the other lanes are zeroed, so the sum is exact."""
    if vec.dtype == tl.float32:
        bits = tl.sum(tl.where(offs == j, vec.to(tl.int32, bitcast=True), 0), axis=0)
        return bits.to(tl.float32, bitcast=True)
    else:
        return tl.sum(tl.where(offs == j, vec, 0), axis=0)


@triton.jit
def _min(vec):
    """``tl.min(vec)`` of a vector without NaN. An fp32's bits, read as an int32, order the
    non-negative floats; flipping all but the sign bit of a negative one orders those too (-0.0 then
    sorts below +0.0, an equal value)."""
    if vec.dtype == tl.float32:
        bits = vec.to(tl.int32, bitcast=True)
        low = tl.min(tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits), axis=0)
        return tl.where(low < 0, low ^ 0x7FFFFFFF, low).to(tl.float32, bitcast=True)
    else:
        return tl.min(vec, axis=0)


# Rows the finiteness check reads per round trip to memory when the columns are contiguous: 4 x 16
# values a thread in flight, which fp64 still holds in registers. Strided columns read one row a trip:
# each row's 64-bit addresses would take as many registers again and spill them
# (`python -m bench.sm90_resources`).
_FINITE_ROWS = tl.constexpr(4)


# Sizes and strides are not specialised: Triton would compile anew for each of their patterns (== 1,
# divisible by 16), mid-training, where a batch brings a new number of people.
@triton.jit(do_not_specialize=["Q", "G", "N", "stride_cb", "stride_cq", "stride_cg", "stride_ob"])
def _linear_assignment_kernel(
    # pointers
    cost_ptr,
    num_gt_ptr,
    query_out_ptr,
    gt_out_ptr,
    valid_out_ptr,
    # sizes
    Q,
    G,
    N,
    # strides (elements)
    stride_cb,
    stride_cq,
    stride_cg,
    stride_ob,
    # meta
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    COLUMNS_CONTIGUOUS: tl.constexpr,
):
    """One program per image; the column side lives in registers as ``[BLOCK]`` vectors.

    Column state: ``v`` (column duals), ``row4col`` (-1 when free), and per Dijkstra search ``shortest``
    (tentative path lengths), ``path`` (the row that reached the column) and ``open_col`` (not yet
    scanned). Row duals are not stored: a matched row's ``u[i] = cost[i, col4row[i]] - v[col4row[i]]``
    (its edge is tight) and the row being added has ``u = 0``, so each search step derives the dual of
    the row it expands.
    """
    tl.static_assert(2 * BLOCK * BLOCK < 2**31, "the search's argmin key must fit an int32")
    pid = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    inf = float("inf")

    n_gt = tl.minimum(tl.maximum(tl.load(num_gt_ptr + pid), 0), G).to(tl.int32)
    # The smaller side is the row side; when Q < num_gt the queries are rows and the ground truths columns.
    transposed = n_gt > Q
    n_rows = tl.minimum(n_gt, Q)
    n_cols = tl.maximum(n_gt, Q)
    stride_row = tl.where(transposed, stride_cq, stride_cg).to(tl.int64)
    stride_col = tl.where(transposed, stride_cg, stride_cq).to(tl.int64)
    col_valid = offs < n_cols
    # int64 offsets: B * Q * G can exceed 2^31
    image_ptr = cost_ptr + pid * stride_cb
    if COLUMNS_CONTIGUOUS:  # stride_col is 1: constant offsets, which the loads' addresses absorb
        col_offs = offs.to(tl.int64)
    else:
        col_offs = offs.to(tl.int64) * stride_col

    # Every entry the solver may read must be finite; an image that is not stays all-invalid. The rows
    # are independent loads: a trip issues several before waiting on any.
    # (while loops rather than range: the interpreter cannot take a loaded scalar as a range bound)
    finite = tl.full((BLOCK,), 1, tl.int1)
    rows_per_trip: tl.constexpr = _FINITE_ROWS if COLUMNS_CONTIGUOUS else 1
    row = 0
    while row < n_rows:
        for r in tl.static_range(rows_per_trip):
            in_image = col_valid & (row + r < n_rows)
            c = tl.load(image_ptr + (row + r) * stride_row + col_offs, mask=in_image, other=0.0).to(DTYPE)
            finite = finite & (c == c) & (tl.abs(c) != inf)
        row += rows_per_trip
    all_finite = tl.min(finite.to(tl.int32), axis=0) > 0
    n_pairs = tl.where(all_finite, n_rows, 0)

    v = tl.zeros((BLOCK,), DTYPE)
    row4col = tl.full((BLOCK,), -1, tl.int32)
    cur_row = 0
    while cur_row < n_pairs:
        shortest = tl.full((BLOCK,), inf, DTYPE)
        path = tl.full((BLOCK,), -1, tl.int32)
        open_col = col_valid  # not yet scanned
        row = cur_row
        via = -1  # the column through which `row` was reached (-1 for the row being added)
        min_val = tl.zeros((), DTYPE)
        sink = -1
        while sink < 0:
            c = tl.load(image_ptr + row * stride_row + col_offs, mask=col_valid, other=inf).to(DTYPE)
            u_row = _pick(c - v, offs, via)  # 0 for via = -1
            reduced = min_val + c - u_row - v
            better = open_col & (reduced < shortest)
            path = tl.where(better, row, path)
            shortest = tl.where(better, reduced, shortest)
            lowest = _min(tl.where(open_col, shortest, inf))
            # Among ties prefer a free column (it ends the search now), then the lowest index. The
            # key also carries the column's row, so one reduction gives both (2 * BLOCK^2 <= 2^25).
            tie = open_col & (shortest == lowest)
            order = tl.where(row4col < 0, offs, offs + BLOCK)
            key = tl.min(tl.where(tie, order * BLOCK + tl.maximum(row4col, 0), 2 * BLOCK * BLOCK), axis=0)
            j = (key // BLOCK) % BLOCK
            owner = tl.where(key < BLOCK * BLOCK, -1, key % BLOCK)
            min_val = lowest
            open_col = open_col & (offs != j)
            sink = tl.where(owner < 0, j, -1)
            row = owner
            via = j
        # Dual update keeps matched edges tight and reduced costs non-negative.
        v = tl.where(col_valid & ~open_col, v - (min_val - shortest), v)
        # Augment: flip the path from the sink back to cur_row.
        j = sink
        i = -1
        while i != cur_row:
            i = _pick(path, offs, j)
            previous = tl.min(tl.where(row4col == i, offs, BLOCK), axis=0)
            row4col = tl.where(offs == j, i, row4col)
            j = previous
        cur_row += 1

    # Outputs sorted by ground truth: rows are ground truths unless transposed, then the assigned
    # columns are compacted in index order.
    assigned = row4col >= 0
    rank = tl.cumsum(assigned.to(tl.int32), axis=0) - 1
    pos = tl.where(transposed, rank, row4col)
    out_ptr_offs = pid * stride_ob
    pad = (offs >= n_pairs) & (offs < N)
    tl.store(query_out_ptr + out_ptr_offs + offs, tl.full((BLOCK,), -1, tl.int64), mask=pad)
    tl.store(gt_out_ptr + out_ptr_offs + offs, tl.full((BLOCK,), -1, tl.int64), mask=pad)
    tl.store(valid_out_ptr + out_ptr_offs + offs, tl.zeros((BLOCK,), tl.int1), mask=pad)
    query = tl.where(transposed, row4col, offs).to(tl.int64)
    gt = tl.where(transposed, offs, row4col).to(tl.int64)
    tl.store(query_out_ptr + out_ptr_offs + pos, query, mask=assigned)
    tl.store(gt_out_ptr + out_ptr_offs + pos, gt, mask=assigned)
    tl.store(valid_out_ptr + out_ptr_offs + pos, tl.full((BLOCK,), 1, tl.int1), mask=assigned)


# ---------------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------------

# The column vectors stay in registers. The search is a serial chain of small reductions, so fewer
# warps are faster (one warp reduces within itself, without shared memory and barriers); a warp per
# 512 columns is 16 elements a thread: 168 to 227 registers on sm_90 for fp32 and up to 255 for fp64,
# without spills, up to 4096 columns and 8 warps (`python -m bench.sm90_resources`). Beyond
# _MAX_BLOCK columns registers would spill, and scipy runs instead.
_MAX_BLOCK = 4096
_COLS_PER_WARP = 512
# Each block is a compile of its own. The encoder's proposals are solved on G * G of them, which would
# bring a new block with each power of two up to G = 11; one warp searches 128 columns at 4 a thread.
_MIN_BLOCK = 128


def _block(q: int, g: int) -> int:
    return triton.next_power_of_2(max(q, g, _MIN_BLOCK))


def _num_warps(block: int) -> int:
    return min(8, max(1, block // _COLS_PER_WARP))


def _launch(cost: torch.Tensor, num_gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, q, g = cost.shape
    n = min(q, g)
    query_index = torch.empty((b, n), dtype=torch.int64, device=cost.device)
    gt_index = torch.empty_like(query_index)
    valid = torch.empty((b, n), dtype=torch.bool, device=cost.device)
    if b == 0 or n == 0:
        return query_index, gt_index, valid
    block = _block(q, g)
    if q >= g and cost.stride(1) != 1:
        # Rows are ground truths and each search step reads one across the queries: make those reads
        # contiguous with one copy rather than strided ones, repeated up to G^2 / 2 times.
        cost = cost.transpose(1, 2).contiguous().transpose(1, 2)
    _linear_assignment_kernel[(b,)](
        cost,
        num_gt,
        query_index,
        gt_index,
        valid,
        q,
        g,
        n,
        *cost.stride(),
        query_index.stride(0),
        DTYPE=tl.float64 if cost.dtype == torch.float64 else tl.float32,
        BLOCK=block,
        COLUMNS_CONTIGUOUS=q >= g,
        num_warps=_num_warps(block),
    )
    return query_index, gt_index, valid


# ---------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------


def _solve(cost: torch.Tensor, num_gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op's body: the Triton solver where it runs and fits, else scipy."""
    b, q, g = cost.shape
    if use_triton(cost) and _block(q, g) <= _MAX_BLOCK:
        return _launch(cost, num_gt)
    if use_triton(cost) and g * g < q and _block(g * g, g) <= _MAX_BLOCK:
        return _solve_tall(cost, num_gt)
    return linear_assignment_reference(cost, num_gt)


def _solve_tall(cost: torch.Tensor, num_gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A problem with far more queries than ground truths (the encoder's proposals: one query per token,
    22k at 800 x 1333), solved on G * G of its rows, on the device.

    Some optimal assignment uses only rows among each column's G cheapest: were ground truth j on
    another row, one of its G cheapest rows would be free (the other ground truths take at most G - 1
    of them), and moving j there costs no more. So the rows holding each column's G cheapest, topped
    up with other rows to exactly G * G, hold the optimum. An image whose used block is not finite is
    poisoned with NaN on those rows, so the solver leaves it without pairs as it would the whole block.
    """
    b, q, g = cost.shape
    cheapest = cost.topk(g, dim=1, largest=False).indices.flatten(1)  # [B, G * G]
    candidate = torch.zeros(b, q, device=cost.device).scatter_(1, cheapest, 1.0)
    rows = candidate.topk(g * g, dim=1).indices  # every candidate (at most G * G), then other rows
    reduced = cost.gather(1, rows[..., None].expand(-1, -1, g))
    used = torch.arange(g, device=cost.device) < num_gt[:, None]  # [B, G]
    finite = (cost.isfinite() | ~used[:, None, :]).flatten(1).all(1)
    reduced = torch.where(finite[:, None, None], reduced, torch.nan)
    query_index, gt_index, valid = _launch(reduced, num_gt)
    query_index = torch.where(valid, rows.gather(1, query_index.clamp(min=0)), -1)
    return query_index, gt_index, valid


_linear_assignment_op = torch.library.custom_op("jcra::linear_assignment", _solve, mutates_args=())


@_linear_assignment_op.register_fake
def _(cost, num_gt):
    b, q, g = cost.shape
    index = cost.new_empty((b, min(q, g)), dtype=torch.int64)
    return index, torch.empty_like(index), cost.new_empty((b, min(q, g)), dtype=torch.bool)


# ---------------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------------


def _as_num_gt(num_gt: torch.Tensor | Sequence[int], b: int, g: int, device: torch.device) -> torch.Tensor:
    """``num_gt`` as int64 ``[B]`` on ``device``, range-checked when it is on the host (as Python ints:
    no tensor op) and never read back when it is on the GPU (a host ``num_gt`` crosses by an
    asynchronous copy)."""
    if isinstance(num_gt, torch.Tensor):
        if num_gt.is_floating_point() or num_gt.is_complex() or num_gt.dtype == torch.bool:
            raise ValueError(f"num_gt must hold integers, got {num_gt.dtype}")
    elif isinstance(num_gt, Sequence) and all(
        # a Python int first: the abstract check costs ~1 us an image, a step's matcher has 56
        type(n) is int or (isinstance(n, numbers.Integral) and not isinstance(n, bool))
        for n in num_gt
    ):
        num_gt = torch.as_tensor(list(num_gt), dtype=torch.int64)
    else:
        raise ValueError(f"num_gt must be a [B] tensor or a list of integers, got {num_gt!r:.100}")
    if tuple(num_gt.shape) != (b,):
        raise ValueError(f"num_gt must be [B={b}], got {tuple(num_gt.shape)}")
    if num_gt.device.type not in ("cpu", device.type):
        raise ValueError(f"num_gt must be on the host or the cost's device ({device}), got {num_gt.device}")
    if num_gt.device.type == "cpu":
        values = num_gt.tolist()
        if values and (min(values) < 0 or max(values) > g):
            raise ValueError(f"num_gt must lie in [0, G={g}], got {values}")
    # contiguous: the solver reads image b's count at offset b
    return to_device(num_gt.to(torch.int64).contiguous(), device)


def linear_assignment(
    cost: torch.Tensor, num_gt: torch.Tensor | Sequence[int], *, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimum-cost assignment of each image's ground truths to distinct queries, batched.

    cost ``[B, Q, G]`` (fp32 or fp64; fp16/bf16 are solved in fp32), padded: image b uses
    ``cost[b, :, :num_gt[b]]``. num_gt ``[B]`` integers in ``[0, G]`` (tensor on any device, or a list).
    With ``n_b = min(Q, num_gt[b])`` pairs per image (every ground truth when ``Q >= num_gt[b]``,
    otherwise every query), returns, on the cost's device, int64 ``query_index`` and ``gt_index`` and
    bool ``valid``, all ``[B, min(Q, G)]``: the first ``n_b`` entries of row b are the image's pairs
    sorted by ``gt_index`` with ``valid`` True; the rest are -1 with ``valid`` False. The total cost of
    the pairs is the optimum (scipy's ``linear_sum_assignment`` total up to rounding).

    CUDA tensors run the Triton solver (one program per image), CPU tensors scipy, or the Triton
    solver under ``TRITON_INTERPRET=1``. The solve itself never synchronises with the host. Problems
    wider than 4096 (``max(Q, G)``) would spill the solver's registers: with ``G * G <= 4096`` (the
    encoder's 22k proposals for up to 64 people) the solver runs on the G * G rows that hold the
    optimum, on the device; otherwise scipy runs on the host. The
    solver adds and subtracts costs in the cost's precision (scipy in fp64): fp32 costs must stay well
    inside fp32's range (below about 1e37 in magnitude; at 2.4e38 the sums overflow and the result is
    no longer optimal); pass fp64 for larger ones.

    Non-finite costs: an image whose used block holds NaN or +-inf gets no pairs (all invalid). With
    ``check_finite`` (default) that raises a ValueError naming the image, and a CUDA ``num_gt`` is
    range-checked; both read one small flag tensor back, the one host synchronisation of the call.
    Callers that must not synchronise (the matcher inside a training step) pass ``check_finite=False``:
    non-finite images then come back all-invalid, and out-of-range CUDA ``num_gt`` is clamped to
    ``[0, G]``. Validating inside the solver rather than before it keeps that path free of syncs.

    Under ``torch.compile(fullgraph=True)`` call the custom op ``torch.ops.jcra.linear_assignment``
    (a tensor ``num_gt`` on the cost's device): this function reads a host ``num_gt``'s values to
    check them, which a graph cannot hold.
    """
    if not isinstance(cost, torch.Tensor) or not cost.is_floating_point():
        raise ValueError("cost must be a floating-point tensor")
    if cost.dim() != 3:
        raise ValueError(f"cost must be [B, Q, G], got {tuple(cost.shape)}")
    b, q, g = cost.shape
    range_checked = not isinstance(num_gt, torch.Tensor) or num_gt.device.type == "cpu"
    num_gt = _as_num_gt(num_gt, b, g, cost.device)
    query_index, gt_index, valid = eager_or_op(_solve, _linear_assignment_op, cost.detach(), num_gt)
    if check_finite and cost.device.type != "meta":  # a meta cost has shapes, no values to check
        # pairs expected (num_gt > 0 and Q > 0) but none found: the image's cost is not finite
        non_finite = (num_gt.clamp(max=q) > 0) & ~valid.any(dim=1)
        # the call's one host sync; a device num_gt is range-checked in the same copy (a host one was)
        if range_checked:
            flags = non_finite[None].cpu()
        else:
            flags = torch.stack([non_finite, (num_gt < 0) | (num_gt > g)]).cpu()
            if flags[1].any():
                raise ValueError(f"num_gt must lie in [0, G={g}], got {num_gt.tolist()}")
        if flags[0].any():
            images = torch.nonzero(flags[0]).reshape(-1).tolist()
            raise ValueError(f"cost of image(s) {images} holds NaN or inf in its first num_gt columns")
    return query_index, gt_index, valid
