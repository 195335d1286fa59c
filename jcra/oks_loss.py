"""Differentiable OKS loss on matched (prediction, ground truth) pairs."""

import torch

from kernels.oks import keypoint_oks

OKS_MODES = ("log", "linear")


def checked_sigmas(sigmas, num_keypoints: int | None = None) -> torch.Tensor:
    """``sigmas`` as an fp32 [K] tensor (``K = num_keypoints`` when given), every one finite and > 0:
    a sigma of 0 makes an exact keypoint's OKS term 0 / 0 (NaN), which would surface far away, in the
    matcher's solver or the loss. Read once, where a matcher or criterion is built, not every step."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    want = "[K]" if num_keypoints is None else f"[num_keypoints={num_keypoints}]"
    if sigmas.dim() != 1 or (num_keypoints is not None and sigmas.shape[0] != num_keypoints):
        raise ValueError(f"sigmas must be {want}, got {tuple(sigmas.shape)}")
    if not bool(((sigmas > 0) & sigmas.isfinite()).all()):
        raise ValueError(f"sigmas must be finite and > 0, got {sigmas.tolist()}")
    return sigmas


def oks_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    area: torch.Tensor,
    sigmas: torch.Tensor,
    mode: str = "log",
    eps: float = 1e-6,
    image_size: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair OKS loss, differentiable wrt ``pred``: ``[n]``.

    pred ``[n, K, 2]`` (x, y); gt ``[n, K, 3]`` (x, y, v); area ``[n]`` in coordinate units squared;
    sigmas ``[K]``; image_size ``[n, 2]`` (w, h), optional: coordinates are normalised by it and area
    by ``w * h``, and OKS is taken in pixels, as COCO scores it (normalised units would weigh x and y
    errors unequally on non-square images). ``mode="log"`` gives ``-log(max(OKS, eps))`` (PETR's
    ``OKSLoss``, eps 1e-6), ``mode="linear"`` gives ``1 - OKS``.
    OKS is COCOeval's (:func:`kernels.oks.keypoint_oks`), computed in fp32 (fp64 for fp64 inputs); a
    ground truth with no labelled keypoint or ``area <= 0`` has OKS 0, so callers should leave such
    pairs out (their loss is constant, with zero gradient).
    """
    if mode not in OKS_MODES:
        raise ValueError(f"mode must be one of {OKS_MODES}, got {mode!r}")
    if pred.dim() != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred must be [n, K, 2], got {tuple(pred.shape)}")
    n, k, _ = pred.shape
    if tuple(gt.shape) != (n, k, 3):
        raise ValueError(f"gt must be [n={n}, K={k}, 3], got {tuple(gt.shape)}")
    if tuple(area.shape) != (n,):
        raise ValueError(f"area must be [n={n}], got {tuple(area.shape)}")
    if tuple(sigmas.shape) != (k,):
        raise ValueError(f"sigmas must be [K={k}], got {tuple(sigmas.shape)}")
    if image_size is not None and tuple(image_size.shape) != (n, 2):
        raise ValueError(f"image_size must be [n={n}, 2] (w, h), got {tuple(image_size.shape)}")
    oks = keypoint_oks(pred, gt, area, sigmas, image_size)
    if mode == "linear":
        return 1.0 - oks
    return -torch.log(oks.clamp(min=eps))
