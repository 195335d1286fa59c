"""Batched object keypoint similarity (OKS) and the pose matching cost, in Triton beside PyTorch.

OKS follows COCOeval (``pycocotools.cocoeval.COCOeval.computeOks``) for a ground truth with at least
one labelled keypoint (``v > 0``): the mean over its labelled keypoints of
``exp(-d^2 / (2 * (area + eps) * (2 * sigma)^2))`` with ``eps = np.spacing(1)``. A ground truth with no
labelled keypoint, or with ``area <= 0`` (padding), gets OKS 0; COCOeval's bounding-box fallback for
unlabelled ground truth is not reproduced, since such people are never matching targets.

The matching cost is the DETR-family focal class cost plus keypoint L1 plus ``1 - OKS``, computed in
one kernel over ``[B, Q, G]`` without a ``[B, Q, G, K]`` temporary. Coordinates are whatever the
caller gives. The model uses ``[0, 1]`` image-normalised ones (x by the width, y by the height, area by
``w * h``) and passes ``image_size``: OKS is a distance in pixels, and in normalised units it would
weigh x errors by ``h / w`` and y errors by ``w / h`` (on a 1280 x 480 image, for a person of
20000 px², a 10 px error scores OKS 0.90 along x and 0.59 along y instead of 0.78 both), so OKS scales
the differences back to pixels while the L1 term stays in normalised units (PETR's convention).
Nothing here needs a gradient: the differentiable OKS loss is :mod:`jcra.oks_loss`, built on
:func:`keypoint_oks`.
"""

import math
import numbers

import numpy as np
import torch
import triton
import triton.language as tl

from kernels.dispatch import eager_or_op, use_triton


def _sigma_table(tenths: list[float]) -> torch.Tensor:
    """Sigmas from the tables as published (in tenths), in fp64 like COCOeval's."""
    return torch.tensor(tenths, dtype=torch.float64) / 10.0


COCO_SIGMAS = _sigma_table(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
)
"""Per-keypoint OKS sigmas of the 17 COCO keypoints (COCOeval's ``kpt_oks_sigmas``)."""

CROWDPOSE_SIGMAS = _sigma_table(
    [0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89, 0.79, 0.79]
)
"""Per-keypoint OKS sigmas of the 14 CrowdPose keypoints (CrowdPose's ``crowdposetools``)."""

AREA_EPS = float(np.spacing(1))
"""COCOeval's ``np.spacing(1)`` added to the area (negligible in fp32, kept for exactness in fp64)."""


# ---------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when any input is fp64 (so references can be upcast for testing)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def labelled_coordinates(gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gt`` [..., K, 3] (x, y, v): which keypoints are labelled [..., K] (v > 0), and their (x, y)
    [..., K, 2] with the unlabelled ones 0, so that whatever a file stores there (NaN too) reaches no
    value and no gradient (a masked NaN still gives 0 * NaN in the backward)."""
    labelled = gt[..., 2] > 0
    return labelled, torch.where(labelled[..., None], gt[..., :2], 0.0)


def keypoint_oks(
    pred: torch.Tensor,
    gt: torch.Tensor,
    area: torch.Tensor,
    sigmas: torch.Tensor,
    image_size: torch.Tensor | None = None,
) -> torch.Tensor:
    """OKS between aligned poses, broadcasting over leading dimensions; differentiable wrt ``pred``.

    pred ``[..., K, 2]`` (x, y); gt ``[..., K, 3]`` (x, y, v); area ``[...]`` in coordinate units
    squared; sigmas ``[K]``. image_size ``[..., 2]`` (w, h), optional: coordinates are normalised by
    it and area by ``w * h``, and OKS is taken in pixels. Returns ``[...]`` in fp32 (fp64 if any input
    is fp64). OKS is 0 where the ground truth has no labelled keypoint or ``area <= 0``.
    """
    dtype = _compute_dtype(pred, gt, area, sigmas)
    pred, gt, area, sigmas = pred.to(dtype), gt.to(dtype), area.to(dtype), sigmas.to(dtype)
    labelled, gt_xy = labelled_coordinates(gt)  # [..., K], [..., K, 2]
    diff = pred - gt_xy
    if image_size is not None:
        image_size = image_size.to(dtype)
        diff = diff * image_size.unsqueeze(-2)
        area = area * image_size.prod(-1)
    d2 = diff.square().sum(-1)  # [..., K]
    variances = (2.0 * sigmas).square()  # [K]
    # e = d^2 / vars / (area + eps) / 2, as COCOeval writes it
    # (padding areas are clamped so the masked-out terms stay finite and their gradients zero)
    e = d2 / variances / (area.clamp(min=0).unsqueeze(-1) + AREA_EPS) / 2.0  # [..., K]
    count = labelled.sum(-1)  # [...]
    oks = torch.where(labelled, torch.exp(-e), 0.0).sum(-1) / count.clamp(min=1)
    return torch.where((count > 0) & (area > 0), oks, 0.0)


def _each_image(b: int, *targets: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Targets ``[B', ...]`` repeated to ``[B, ...]`` (image b takes b % B'), for the reference."""
    return [
        t if t is None or t.shape[0] == b else t.repeat(b // t.shape[0], *[1] * (t.dim() - 1))
        for t in targets
    ]


def pairwise_oks_reference(
    pred_kpts: torch.Tensor,
    gt_kpts: torch.Tensor,
    gt_areas: torch.Tensor,
    sigmas: torch.Tensor,
    image_size: torch.Tensor | None = None,
) -> torch.Tensor:
    """OKS of every prediction against every ground truth by broadcasting: ``[B, Q, G]``; targets of
    B' images as in :func:`pairwise_oks`.

    This is the formulation DETR-family pose codebases use; it materialises ``[B, Q, G, K]``.
    """
    gt_kpts, gt_areas, image_size = _each_image(pred_kpts.shape[0], gt_kpts, gt_areas, image_size)
    # pred [B, Q, 1, K, 2] against gt [B, 1, G, K, 3] with areas [B, 1, G] and sizes [B, 1, 1, 2]
    size = None if image_size is None else image_size[:, None, None]
    return keypoint_oks(pred_kpts[:, :, None], gt_kpts[:, None], gt_areas[:, None], sigmas, size)


def focal_class_cost(logits: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """DETR-family focal class cost of the person class, same shape as ``logits``.

    ``alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` with ``p = sigmoid(logits)``; the
    logs are taken as softplus of the logit, which is exact where ``log(p + 1e-8)`` is not.
    """
    x = logits.to(_compute_dtype(logits))
    p = torch.sigmoid(x)
    pos = alpha * (1.0 - p).pow(gamma) * torch.nn.functional.softplus(-x)
    neg = (1.0 - alpha) * p.pow(gamma) * torch.nn.functional.softplus(x)
    return pos - neg


def keypoint_l1_reference(pred_kpts: torch.Tensor, gt_kpts: torch.Tensor) -> torch.Tensor:
    """Mean absolute coordinate error over each ground truth's labelled coordinates: ``[B, Q, G]``.

    The sum over labelled keypoints of ``|dx| + |dy|`` divided by ``2 * count`` (at least 1), as in
    PETR's ``KptL1Cost``; 0 for a ground truth with no labelled keypoint. Targets of B' images as in
    :func:`pairwise_oks`.
    """
    (gt_kpts,) = _each_image(pred_kpts.shape[0], gt_kpts)
    dtype = _compute_dtype(pred_kpts, gt_kpts)
    pred, gt = pred_kpts.to(dtype)[:, :, None], gt_kpts.to(dtype)[:, None]  # [B,Q,1,K,2], [B,1,G,K,3]
    labelled, gt_xy = labelled_coordinates(gt)  # [B, 1, G, K], [B, 1, G, K, 2]
    l1 = (pred - gt_xy).abs().sum(-1)  # [B, Q, G, K]
    count = labelled.sum(-1)  # [B, 1, G]
    return torch.where(labelled, l1, 0.0).sum(-1) / (2 * count).clamp(min=1)


def pose_matching_cost_reference(
    logits: torch.Tensor,
    pred_kpts: torch.Tensor,
    gt_kpts: torch.Tensor,
    gt_areas: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    w_class: float,
    w_kpt: float,
    w_oks: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
    image_size: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w_class * focal + w_kpt * L1 + w_oks * (1 - OKS)`` by broadcasting: ``[B, Q, G]``; targets of B'
    images as in :func:`pairwise_oks`."""
    cls = focal_class_cost(logits, alpha, gamma)[:, :, None]  # [B, Q, 1]
    l1 = keypoint_l1_reference(pred_kpts, gt_kpts)
    oks = pairwise_oks_reference(pred_kpts, gt_kpts, gt_areas, sigmas, image_size)
    return w_class * cls + w_kpt * l1 + w_oks * (1.0 - oks)


# ---------------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------------


# The sizes that follow the data (queries: one a token for the encoder's proposals; people) and the
# strides they set are not specialised: Triton would compile anew for each of their patterns (== 1,
# divisible by 16), mid-training, where a batch brings a new one.
@triton.jit(
    do_not_specialize=[
        "Q", "G", "GT_BATCH", "stride_lb", "stride_pb", "stride_gb", "stride_ab", "stride_ob", "stride_og"
    ]
)  # fmt: skip
def _pose_cost_kernel(
    # pointers
    logits_ptr,
    pred_ptr,
    gt_ptr,
    area_ptr,
    sigma_ptr,
    size_ptr,  # [B', 2] (w, h), read when HAS_SIZE
    out_ptr,
    # sizes
    Q,
    G,
    GT_BATCH,  # B': image b reads the ground truth, areas and size of b % B'
    # strides (elements)
    stride_lb,
    stride_lq,
    stride_pb,
    stride_pq,
    stride_pk,
    stride_pc,
    stride_gb,
    stride_gg,
    stride_gk,
    stride_gc,
    stride_ab,
    stride_ag,
    stride_s,
    stride_zb,
    stride_zc,
    stride_ob,
    stride_oq,
    stride_og,
    # cost weights and focal parameters
    w_class,
    w_kpt,
    w_oks,
    alpha,
    gamma,
    area_eps,
    # meta
    K: tl.constexpr,
    COORD_DTYPE: tl.constexpr,
    WITH_COST: tl.constexpr,
    HAS_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """One program per (image, block of queries, block of ground truths), looping over keypoints.

    K is a compile-time constant (17 or 14 in practice), but its loop is a plain ``range``: unrolled
    (``tl.static_range``), the compiler hoists all K keypoints' loads and, at 8 pairs a thread, ptxas
    for sm_90 fell to 32 registers and a 3.7 KB spill stack; rolled it takes up to 72, no spills.
    Everything is fp32 except the coordinate differences, taken in fp64 for fp64 inputs (COORD_DTYPE):
    in fp32, pixel coordinates lose the digits that COCOeval-exact OKS needs.

    WITH_COST False writes OKS; True writes the full matching cost. HAS_SIZE: coordinates are
    normalised by the image's (w, h) and OKS scales their differences back to pixels (L1 does not).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = pid_b % GT_BATCH
    offs_q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_g = tl.program_id(2) * BLOCK_G + tl.arange(0, BLOCK_G)
    mask_q = offs_q < Q
    mask_g = offs_g < G
    # int64 offsets: B * Q * G * K coordinates can exceed 2^31 for large batches
    pred_base = pred_ptr + pid_b * stride_pb + offs_q.to(tl.int64) * stride_pq  # [BLOCK_Q]
    gt_base = gt_ptr + pid_t * stride_gb + offs_g.to(tl.int64) * stride_gg  # [BLOCK_G]

    area = tl.load(area_ptr + pid_t * stride_ab + offs_g * stride_ag, mask=mask_g, other=0.0).to(tl.float32)
    area = tl.maximum(area, 0.0)  # padding (area <= 0) scores 0 below; clamping keeps e finite
    scale_x = 1.0
    scale_y = 1.0
    if HAS_SIZE:
        scale_x = tl.load(size_ptr + pid_t * stride_zb).to(tl.float32)
        scale_y = tl.load(size_ptr + pid_t * stride_zb + stride_zc).to(tl.float32)
        area = area * (scale_x * scale_y)
    # COCOeval's e = d^2 / vars / (area + eps) / 2, split into a per-ground-truth and a per-keypoint factor
    inv_area2 = 1.0 / ((area + area_eps) * 2.0)  # [BLOCK_G]

    exp_sum = tl.zeros((BLOCK_Q, BLOCK_G), dtype=tl.float32)
    l1_sum = tl.zeros((BLOCK_Q, BLOCK_G), dtype=tl.float32)
    count = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for k in range(K):
        sigma = tl.load(sigma_ptr + k * stride_s).to(tl.float32)
        inv_var = 1.0 / (4.0 * sigma * sigma)
        px = tl.load(pred_base + k * stride_pk, mask=mask_q, other=0.0).to(COORD_DTYPE)
        py = tl.load(pred_base + k * stride_pk + stride_pc, mask=mask_q, other=0.0).to(COORD_DTYPE)
        gx = tl.load(gt_base + k * stride_gk, mask=mask_g, other=0.0).to(COORD_DTYPE)
        gy = tl.load(gt_base + k * stride_gk + stride_gc, mask=mask_g, other=0.0).to(COORD_DTYPE)
        gv = tl.load(gt_base + k * stride_gk + 2 * stride_gc, mask=mask_g, other=0.0).to(tl.float32)
        labelled = gv > 0  # [BLOCK_G]
        dx = (px[:, None] - gx[None, :]).to(tl.float32)
        dy = (py[:, None] - gy[None, :]).to(tl.float32)
        e = ((dx * scale_x) * (dx * scale_x) + (dy * scale_y) * (dy * scale_y)) * inv_var * inv_area2[None, :]
        exp_sum += tl.where(labelled[None, :], tl.exp(-e), 0.0)
        if WITH_COST:
            l1_sum += tl.where(labelled[None, :], tl.abs(dx) + tl.abs(dy), 0.0)
        count += labelled.to(tl.float32)

    valid = (count > 0) & (area > 0)
    oks = tl.where(valid[None, :], exp_sum / tl.maximum(count, 1.0)[None, :], 0.0)
    if WITH_COST:
        x = tl.load(logits_ptr + pid_b * stride_lb + offs_q * stride_lq, mask=mask_q, other=0.0).to(
            tl.float32
        )
        # With p = sigmoid(x): -log p = softplus(-x) and -log(1 - p) = softplus(x), computed without
        # overflow; the focal powers follow as p^gamma = exp(-gamma * softplus(-x)), finite for any x.
        log1p_exp = tl.log(1.0 + tl.exp(-tl.abs(x)))
        softplus_pos = tl.maximum(x, 0.0) + log1p_exp
        softplus_neg = tl.maximum(-x, 0.0) + log1p_exp
        pos = alpha * tl.exp(-gamma * softplus_pos) * softplus_neg
        neg = (1.0 - alpha) * tl.exp(-gamma * softplus_neg) * softplus_pos
        l1 = l1_sum / tl.maximum(2.0 * count, 1.0)[None, :]
        result = w_class * (pos - neg)[:, None] + w_kpt * l1 + w_oks * (1.0 - oks)
    else:
        result = oks

    out_offs = pid_b * stride_ob + offs_q.to(tl.int64)[:, None] * stride_oq + offs_g[None, :] * stride_og
    tl.store(out_ptr + out_offs, result, mask=mask_q[:, None] & mask_g[None, :])


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------

# Tiles of at most 1024 (query, ground truth) pairs keep the fp32 accumulators in registers with the
# default 4 warps. G is small (1 to ~20 people, rarely 100), so the G block follows it (a power of two,
# at most 32) and the Q block takes the rest, instead of a fixed 32 x 32 tile that would be mostly
# padding at G = 1.
_TILE = 1024
_MAX_BLOCK_G = 32


def _blocks(g: int) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_G) for G ground truths per image."""
    block_g = min(_MAX_BLOCK_G, triton.next_power_of_2(max(g, 2)))
    return min(128, _TILE // block_g), block_g


def _check_inputs(
    pred_kpts: torch.Tensor,
    gt_kpts: torch.Tensor,
    gt_areas: torch.Tensor,
    sigmas: torch.Tensor,
    logits: torch.Tensor | None = None,
    image_size: torch.Tensor | None = None,
) -> None:
    """Raise ValueError naming the first argument whose shape, dtype or device is wrong."""
    named = {"pred_kpts": pred_kpts, "gt_kpts": gt_kpts, "gt_areas": gt_areas, "sigmas": sigmas}
    for name, t in (("logits", logits), ("image_size", image_size)):
        if t is not None:
            named[name] = t
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor")
        if t.device != pred_kpts.device:
            raise ValueError(f"{name} is on {t.device} but pred_kpts is on {pred_kpts.device}")
    if pred_kpts.dim() != 4 or pred_kpts.shape[-1] != 2:
        raise ValueError(f"pred_kpts must be [B, Q, K, 2], got {tuple(pred_kpts.shape)}")
    b, q, k, _ = pred_kpts.shape
    if gt_kpts.dim() != 4 or gt_kpts.shape[2:] != (k, 3) or not _divides(gt_kpts.shape[0], b):
        raise ValueError(
            f"gt_kpts must be [B', G, K={k}, 3] with B={b} a multiple of B', got {tuple(gt_kpts.shape)}"
        )
    bt, g = gt_kpts.shape[:2]
    if tuple(gt_areas.shape) != (bt, g):
        raise ValueError(f"gt_areas must be [B'={bt}, G={g}], got {tuple(gt_areas.shape)}")
    if tuple(sigmas.shape) != (k,):
        raise ValueError(f"sigmas must be [K={k}], got {tuple(sigmas.shape)}")
    if logits is not None and tuple(logits.shape) != (b, q):
        raise ValueError(f"logits must be [B={b}, Q={q}], got {tuple(logits.shape)}")
    if image_size is not None and tuple(image_size.shape) != (bt, 2):
        raise ValueError(f"image_size must be [B'={bt}, 2] (w, h), got {tuple(image_size.shape)}")


def _divides(bt: int, b: int) -> bool:
    """Whether B images can take the targets of B' by image b taking b % B'."""
    return bt == b or (bt > 0 and b % bt == 0)


def _empty_cost(pred_kpts: torch.Tensor, gt_kpts: torch.Tensor) -> torch.Tensor:
    """fp32 ``[B, Q, G]`` stored ground truth by ground truth (stride 1 along Q): the layout
    :func:`kernels.linear_assignment` reads, without the copy a [B, Q, G]-contiguous cost costs it."""
    (b, q), g = pred_kpts.shape[:2], gt_kpts.shape[1]
    return pred_kpts.new_empty((b, g, q), dtype=torch.float32).transpose(1, 2)


def _launch(
    logits: torch.Tensor | None,
    pred_kpts: torch.Tensor,
    gt_kpts: torch.Tensor,
    gt_areas: torch.Tensor,
    sigmas: torch.Tensor,
    image_size: torch.Tensor | None,
    weights: tuple[float, float, float, float, float],
) -> torch.Tensor:
    """Run the kernel; ``logits`` None gives OKS, otherwise the cost with ``weights`` =
    (w_class, w_kpt, w_oks, alpha, gamma). Inputs may be strided, targets ``[B', ...]``."""
    b, q, k, _ = pred_kpts.shape
    g = gt_kpts.shape[1]
    out = _empty_cost(pred_kpts, gt_kpts)
    if out.numel() == 0:
        return out
    with_cost = logits is not None
    # Any tensor stands in for an absent one's pointer; the kernel never reads it.
    logits_arg = logits if with_cost else gt_areas
    stride_l = logits.stride() if with_cost else (0, 0)
    size_arg = image_size if image_size is not None else gt_areas
    stride_z = image_size.stride() if image_size is not None else (0, 0)
    block_q, block_g = _blocks(g)
    grid = (b, triton.cdiv(q, block_q), triton.cdiv(g, block_g))
    _pose_cost_kernel[grid](
        logits_arg,
        pred_kpts,
        gt_kpts,
        gt_areas,
        sigmas,
        size_arg,
        out,
        q,
        g,
        gt_kpts.shape[0],
        *stride_l,
        *pred_kpts.stride(),
        *gt_kpts.stride(),
        *gt_areas.stride(),
        sigmas.stride(0),
        *stride_z,
        *out.stride(),
        *weights,
        AREA_EPS,
        K=k,
        COORD_DTYPE=tl.float64 if torch.float64 in (pred_kpts.dtype, gt_kpts.dtype) else tl.float32,
        WITH_COST=with_cost,
        HAS_SIZE=image_size is not None,
        BLOCK_Q=block_q,
        BLOCK_G=block_g,
    )
    return out


# ---------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------


def _pairwise_oks(
    pred_kpts: torch.Tensor,
    gt_kpts: torch.Tensor,
    gt_areas: torch.Tensor,
    sigmas: torch.Tensor,
    image_size: torch.Tensor | None,
) -> torch.Tensor:
    """The op's body: the kernel where Triton runs, else the reference."""
    if use_triton(pred_kpts):
        return _launch(None, pred_kpts, gt_kpts, gt_areas, sigmas, image_size, (0.0, 0.0, 0.0, 0.0, 0.0))
    oks = pairwise_oks_reference(pred_kpts, gt_kpts, gt_areas, sigmas, image_size)
    return _empty_cost(pred_kpts, gt_kpts).copy_(oks)


_pairwise_oks_op = torch.library.custom_op("jcra::pairwise_oks", _pairwise_oks, mutates_args=())


@_pairwise_oks_op.register_fake
def _(pred_kpts, gt_kpts, gt_areas, sigmas, image_size):
    return _empty_cost(pred_kpts, gt_kpts)


def _pose_matching_cost(
    logits: torch.Tensor,
    pred_kpts: torch.Tensor,
    gt_kpts: torch.Tensor,
    gt_areas: torch.Tensor,
    sigmas: torch.Tensor,
    image_size: torch.Tensor | None,
    w_class: float,
    w_kpt: float,
    w_oks: float,
    alpha: float,
    gamma: float,
) -> torch.Tensor:
    """The op's body: the kernel where Triton runs, else the reference."""
    if use_triton(pred_kpts):
        weights = (w_class, w_kpt, w_oks, alpha, gamma)
        return _launch(logits, pred_kpts, gt_kpts, gt_areas, sigmas, image_size, weights)
    cost = pose_matching_cost_reference(
        logits,
        pred_kpts,
        gt_kpts,
        gt_areas,
        sigmas,
        w_class=w_class,
        w_kpt=w_kpt,
        w_oks=w_oks,
        alpha=alpha,
        gamma=gamma,
        image_size=image_size,
    )
    return _empty_cost(pred_kpts, gt_kpts).copy_(cost)


_pose_matching_cost_op = torch.library.custom_op(
    "jcra::pose_matching_cost", _pose_matching_cost, mutates_args=()
)


@_pose_matching_cost_op.register_fake
def _(logits, pred_kpts, gt_kpts, gt_areas, sigmas, image_size, w_class, w_kpt, w_oks, alpha, gamma):
    return _empty_cost(pred_kpts, gt_kpts)


# ---------------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------------


def pairwise_oks(
    pred_kpts: torch.Tensor,
    gt_kpts: torch.Tensor,
    gt_areas: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    image_size: torch.Tensor | None = None,
) -> torch.Tensor:
    """COCOeval OKS of every prediction against every ground truth of the same image.

    pred_kpts ``[B, Q, K, 2]`` (x, y); gt_kpts ``[B', G, K, 3]`` (x, y, v with v > 0 labelled);
    gt_areas ``[B', G]`` in coordinate units squared (``<= 0`` marks padding); sigmas ``[K]``
    (:data:`COCO_SIGMAS`, :data:`CROWDPOSE_SIGMAS`). Usually B' = B; B' may divide B, and then image b
    takes the targets of image ``b % B'`` (the matcher's stages share their images' targets, without a
    copy for each). image_size ``[B', 2]`` (w, h) in pixels, optional:
    coordinates are normalised by it and areas by ``w * h``, and OKS is taken in pixels (without it,
    in the coordinates' own units: pixels, or normalised coordinates of square images only). Any float
    dtype, computed in fp32 (coordinate differences in fp64 for fp64 inputs: COCOeval-exact OKS on
    pixel coordinates needs them, and areas in fp32, so an fp64 area below fp32's range counts as 0);
    returns fp32 ``[B, Q, G]``, 0 for ground truth with no labelled keypoint or non-positive area,
    stored ground truth by ground truth (stride 1 along Q: what :func:`kernels.linear_assignment` reads
    without a copy). No gradient.
    """
    _check_inputs(pred_kpts, gt_kpts, gt_areas, sigmas, image_size=image_size)
    return eager_or_op(_pairwise_oks, _pairwise_oks_op, pred_kpts, gt_kpts, gt_areas, sigmas, image_size)


def checked_cost_weights(**weights) -> dict[str, float]:
    """The matching cost's weights, focal alpha and gamma as floats, in the order given; a ValueError
    naming any that is not a finite real number >= 0 (NaN would make every cost NaN)."""
    for name, value in weights.items():
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (real and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return {name: float(value) for name, value in weights.items()}


def pose_matching_cost(
    logits: torch.Tensor,
    pred_kpts: torch.Tensor,
    gt_kpts: torch.Tensor,
    gt_areas: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    w_class: float,
    w_kpt: float,
    w_oks: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
    image_size: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hungarian matching cost of every prediction against every ground truth: fp32 ``[B, Q, G]``.

    logits ``[B, Q]`` (the person class); the other arguments, and the result's layout, as in
    :func:`pairwise_oks`.
    ``cost = w_class * focal + w_kpt * L1 + w_oks * (1 - OKS)``, where focal is the DETR-family focal
    class cost (:func:`focal_class_cost`) and L1 the mean absolute error over the ground truth's
    labelled coordinates (:func:`keypoint_l1_reference`), in the coordinates' units (normalised ones
    with ``image_size``, which scales only the OKS term to pixels). No gradient.
    """
    _check_inputs(pred_kpts, gt_kpts, gt_areas, sigmas, logits, image_size)
    weights = checked_cost_weights(w_class=w_class, w_kpt=w_kpt, w_oks=w_oks, alpha=alpha, gamma=gamma)
    return eager_or_op(
        _pose_matching_cost,
        _pose_matching_cost_op,
        logits,
        pred_kpts,
        gt_kpts,
        gt_areas,
        sigmas,
        image_size,
        *weights.values(),
    )
