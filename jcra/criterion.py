"""Set criterion: Hungarian-matched focal classification, keypoint L1 and OKS losses, plus heatmap loss.

Weights default to PETR's (class 2, keypoint L1 70, OKS 2, heatmap 4); JCRA does not give its own.
Every decoder layer and the encoder's proposals are matched and supervised (Deformable-DETR's
auxiliary and two-stage losses); the heatmap loss is CornerNet's focal loss on Gaussian targets.
"""

import functools
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from jcra.backbone import valid_mask
from jcra.data.coco import finite_numbers
from jcra.matcher import BatchMatch, HungarianMatcher
from jcra.oks_loss import OKS_MODES, checked_sigmas, oks_loss
from jcra.targets import PaddedTargets, pad_targets
from kernels.dispatch import to_device
from kernels.oks import labelled_coordinates

DEFAULT_WEIGHTS = {"cls": 2.0, "kpt": 70.0, "oks": 2.0, "hm": 4.0}
HEATMAP_TARGETS = ("box", "fixed")
"""The heatmap target's Gaussians: "box", a radius from each person's box (PETR's); "fixed", one sigma."""
HEATMAP_CHUNK_ELEMENTS = 1 << 24
"""Largest temporary of :func:`gaussian_heatmap`, in elements (64 MB in fp32)."""


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """RetinaNet's focal loss per element (same shape as ``logits``), computed in fp32."""
    logits, targets = logits.float(), targets.float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - p_t) ** gamma


def heatmap_focal_loss(
    logits: Tensor, target: Tensor, valid: Tensor, num_peaks: Tensor | None = None
) -> Tensor:
    """CornerNet's penalty-reduced focal loss, summed over valid cells, divided by ``num_peaks``, by
    default the target's peaks (>= 1).

    logits, target [B, K, H, W] (target 1 at keypoints, Gaussian around); valid [B, 1, H, W] bool.
    """
    logits = logits.float()
    pos = (target == 1) & valid
    neg = (target < 1) & valid
    p = logits.sigmoid()
    pos_loss = -F.logsigmoid(logits) * (1 - p).square()
    neg_loss = -F.logsigmoid(-logits) * p.square() * (1 - target).pow(4)
    total = torch.where(pos, pos_loss, 0.0).sum() + torch.where(neg, neg_loss, 0.0).sum()
    return total / (pos.sum().clamp(min=1) if num_peaks is None else num_peaks)


def box_heatmap_radius(boxes: Tensor, stride: int, min_overlap: float = 0.9, max_radius: int = 3) -> Tensor:
    """PETR's heatmap radius of each person, whole cells ``[...]`` from boxes ``[..., 4]`` (x0, y0, x1,
    y1 in input pixels): CornerNet's radius for a box of that size in cells, the least of its three
    cases' roots taken as opera computes them (CenterNet's form: ``(b + sqrt(b^2 - 4ac)) / 2``, not
    divided by ``a``), floored and clamped to ``[0, max_radius]``. About a tenth of a square box's
    side: 1 from 10.27 cells, 2 from 20.54, 3 from 30.81 (about 82, 164 and 246 pixels at stride 8)."""
    w = ((boxes[..., 2] - boxes[..., 0]) / stride).clamp(min=0)
    h = ((boxes[..., 3] - boxes[..., 1]) / stride).clamp(min=0)
    o = min_overlap
    cases = [  # (a, b, c) of CornerNet's three quadratics in the radius
        (1.0, h + w, w * h * (1 - o) / (1 + o)),
        (4.0, 2 * (h + w), (1 - o) * w * h),
        (4 * o, -2 * o * (h + w), (o - 1) * w * h),
    ]
    roots = [(b + (b.square() - 4 * a * c).clamp(min=0).sqrt()) / 2 for a, b, c in cases]
    return functools.reduce(torch.minimum, roots).floor().clamp(0, max_radius)


def gaussian_heatmap(
    keypoints: Tensor,
    height: int,
    width: int,
    stride: int,
    sigma: float | Tensor,
    radius: Tensor | None = None,
) -> Tensor:
    """Target heatmap ``[..., K, height, width]``: per image and keypoint type, the max over people.

    keypoints ``[..., G, K, 3]`` (x, y, v) in input pixels, any leading batch dims; each labelled
    keypoint puts a Gaussian of std ``sigma`` cells (a number, or one a person ``[..., G]``), peaking
    at exactly 1, on the cell that contains it (cell centres at ``(i + 0.5) * stride``). ``radius``
    ``[..., G]`` (cells) cuts each person's Gaussians to the square of cells within it of the peak, as
    CenterNet draws them; None: uncut.
    """
    *batch, g, k, _ = keypoints.shape
    if g == 0:
        return keypoints.new_zeros(*batch, k, height, width)
    labelled, xy = labelled_coordinates(keypoints)
    cells = (xy / stride).floor()  # [..., G, K, 2]
    ys = torch.arange(height, device=keypoints.device, dtype=keypoints.dtype)
    xs = torch.arange(width, device=keypoints.device, dtype=keypoints.dtype)
    labelled = labelled[..., None].to(keypoints.dtype)  # [..., G, K, 1]
    if isinstance(sigma, Tensor):  # a number stays one: copying it to the GPU would wait on the host
        sigma = sigma.to(keypoints.dtype)
        sigma = sigma[..., None, None] if sigma.dim() else sigma  # [..., G, 1, 1] against [..., G, K, H]
    dy, dx = ys - cells[..., 1:], xs - cells[..., :1]  # [..., G, K, H], [..., G, K, W]
    gy = torch.exp(-dy.square() / (2 * sigma**2)) * labelled
    gx = torch.exp(-dx.square() / (2 * sigma**2))
    if radius is not None:
        within = radius.to(keypoints.dtype)[..., None, None]
        gy, gx = gy * (dy.abs() <= within), gx * (dx.abs() <= within)
    # the max over people of [..., G, K, H, W] products, people taken in chunks so the temporary stays
    # under HEATMAP_CHUNK_ELEMENTS however large the batch (8 images of 20 people at 800 x 1333 would
    # take 180 MB at once; 2 images at that size are one chunk up to 29 people)
    chunk = max(1, HEATMAP_CHUNK_ELEMENTS // max(1, k * height * width * math.prod(batch)))
    parts = (
        (y[..., :, None] * x[..., None, :]).amax(-4)
        for y, x in zip(gy.split(chunk, -3), gx.split(chunk, -3), strict=True)
    )
    return functools.reduce(torch.maximum, parts)


class SetCriterion(nn.Module):
    """JCRA's training losses; ``forward(outputs, targets)`` returns the weighted total and its parts.

    num_keypoints: K. sigmas [K]: OKS sigmas. matcher: a :class:`HungarianMatcher`. weights: any of
    ``cls``, ``kpt``, ``oks``, ``hm`` (defaults :data:`DEFAULT_WEIGHTS`). oks_mode: "log"
    (-log OKS, PETR's ``OKSLoss`` default) or "linear" (1 - OKS). encoder_oks: an OKS loss on the
    encoder proposals too (PETR's proposals have classification and L1 only). heatmap_stride: the
    heatmap's cell in input pixels. heatmap_target: "fixed" (every Gaussian of ``heatmap_sigma``
    cells, uncut) or "box", PETR's (each person's Gaussians cut to a radius from its box,
    :func:`box_heatmap_radius`, sigma a sixth of their width: 1/6 to 7/6 of a cell; the targets must
    then hold ``boxes``, as the data pipeline's do).

    Normalisation: classification and OKS sums are divided by the number of non-crowd people in the
    batch, L1 by the number of labelled keypoint coordinates (both summed over processes under
    torch.distributed, then divided by the world size, as DETR does), the heatmap's by its peaks on
    this process (PETR's); :meth:`forward`'s ``counts`` sets them for gradient accumulation.
    """

    def __init__(
        self,
        num_keypoints: int,
        sigmas: Tensor,
        matcher: HungarianMatcher,
        weights: dict[str, float] | None = None,
        oks_mode: str = "log",
        encoder_oks: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        heatmap_stride: int = 8,
        heatmap_target: str = "fixed",
        heatmap_sigma: float = 2.0,
    ):
        super().__init__()
        sigmas = checked_sigmas(sigmas, num_keypoints)
        unknown = sorted(set(weights or {}) - set(DEFAULT_WEIGHTS))
        if unknown:
            raise ValueError(f"weights has unknown keys {unknown}; valid: {sorted(DEFAULT_WEIGHTS)}")
        if oks_mode not in OKS_MODES:
            raise ValueError(f"oks_mode must be one of {OKS_MODES}, got {oks_mode!r}")
        if heatmap_target not in HEATMAP_TARGETS:
            raise ValueError(f"heatmap_target must be one of {HEATMAP_TARGETS}, got {heatmap_target!r}")
        if heatmap_stride < 1 or heatmap_sigma <= 0:
            raise ValueError(
                f"heatmap_stride must be >= 1 and heatmap_sigma > 0, got {heatmap_stride} and {heatmap_sigma}"
            )
        self.num_keypoints, self.matcher, self.oks_mode = num_keypoints, matcher, oks_mode
        self.encoder_oks = encoder_oks
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        for key, value in self.weights.items():  # a negative weight would reward that loss's growth
            if not (finite_numbers([value]) and value >= 0):
                raise ValueError(f"weights[{key!r}] must be a finite number >= 0, got {value!r}")
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.heatmap_stride, self.heatmap_sigma = heatmap_stride, heatmap_sigma
        self.heatmap_target = heatmap_target
        self.register_buffer("sigmas", sigmas, persistent=False)

    def forward(self, outputs: dict, targets: list[dict], counts: Tensor | None = None) -> dict[str, Tensor]:
        """outputs: the model's training output; targets: per image ``keypoints`` [G, K, 3] and ``area``
        [G] in pixels of the unpadded input, ``size`` [2] (h, w), optionally ``iscrowd`` [G]. Host
        targets, as the data pipeline gives them, cross to the device in one asynchronous copy
        (:func:`jcra.targets.pad_targets`); ``iscrowd`` is read on the host. counts: what the losses
        are divided by, :meth:`count` of a larger batch that these targets are part of (gradient
        accumulation: the micro-batches' losses then add up to that batch's); by default these
        targets'.

        Returns ``loss`` (weighted total) and unweighted parts: ``loss_cls``, ``loss_kpt``, ``loss_oks``
        for the last layer, the same with suffix ``_d{i}`` for earlier layers and ``_enc`` for the
        proposals (``loss_oks_enc`` with ``encoder_oks``), and ``loss_hm``.
        """
        device = outputs["logits"].device
        pixels = pad_targets(targets, self.num_keypoints, device)
        padded = pixels.normalised()
        num_people, num_coords = self._counts(padded, counts)

        decoder = [
            *outputs.get("aux_outputs", []),
            {"logits": outputs["logits"], "keypoints": outputs["keypoints"]},
        ]
        # the decoder layers (Q queries each) are matched and supervised as one batch, the proposals
        # (one a token) as another
        groups = [([f"_d{i}" for i in range(len(decoder) - 1)] + [""], decoder)]
        if "enc_outputs" in outputs:
            groups.append((["_enc"], [outputs["enc_outputs"]]))
        losses: dict[str, Tensor] = {}
        for suffixes, stages in groups:
            logits = torch.stack([s["logits"] for s in stages])  # [S, B, Q]
            keypoints = torch.stack([s["keypoints"] for s in stages])  # [S, B, Q, K, 2]
            matches = self.matcher.match(logits.detach().float(), keypoints.detach().float(), padded)
            parts = self._pose_losses(logits, keypoints, matches, padded, num_people, num_coords)
            if suffixes == ["_enc"] and not self.encoder_oks:
                del parts["oks"]
            for stage, suffix in enumerate(suffixes):
                losses.update({f"loss_{name}{suffix}": value[stage] for name, value in parts.items()})
        if "heatmap" in outputs:
            peaks = None if counts is None else to_device(counts[2:].clamp(min=1.0), device)[0]
            losses["loss_hm"] = self._heatmap_loss(outputs["heatmap"], pixels, peaks)
        losses["loss"] = sum(self.weights[key.split("_")[1]] * value for key, value in losses.items())
        return losses

    def count(self, targets: list[dict]) -> Tensor:
        """[3] fp32 on the host: the targets' non-crowd people, their labelled coordinates and the
        heatmap peaks they make (labelled keypoints, one a cell and type); what :meth:`forward`
        divides its losses by. Host targets are counted without a copy."""
        pixels = pad_targets(targets, self.num_keypoints, "cpu")
        keypoints = pixels.keypoints
        image, _, joint = torch.nonzero(keypoints[..., 2] > 0, as_tuple=True)
        cells = (keypoints[..., :2] / self.heatmap_stride).floor()[keypoints[..., 2] > 0].long()
        peaks = torch.unique(torch.stack([image, joint, cells[:, 0], cells[:, 1]], 1), dim=0).shape[0]
        return torch.tensor([sum(pixels.counts), 2.0 * len(image), peaks])

    @staticmethod
    def _counts(targets: PaddedTargets, counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Non-crowd people and their labelled coordinates (``counts``' first two, by default the
        targets'), averaged over processes, at least 1.

        By default the people are counted on the host, the coordinates on the device (padding is
        unlabelled): nothing is read back.
        """
        if counts is None:
            labelled = (targets.keypoints[..., 2] > 0).sum().float()
            counts = torch.stack([torch.full_like(labelled, float(sum(targets.counts))), 2.0 * labelled])
        else:
            counts = to_device(counts[:2].float(), targets.keypoints.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            counts = counts / dist.get_world_size()
        counts = counts.clamp(min=1.0)
        return counts[0], counts[1]

    def _pose_losses(
        self,
        logits: Tensor,
        keypoints: Tensor,
        matches: BatchMatch,
        targets: PaddedTargets,
        num_people: Tensor,
        num_coords: Tensor,
    ) -> dict[str, Tensor]:
        """Classification, keypoint L1 and OKS losses ``[S]`` of S stages at once: logits ``[S, B, Q]``,
        keypoints ``[S, B, Q, K, 2]``, their matches and the normalised targets."""
        s, b, q = logits.shape
        batch, query, column = (to_device(index, logits.device) for index in matches)  # [P], [S, P], [S, P]
        # -1: an image the solver left unmatched, its cost non-finite (non-finite predictions). Its
        # stage's losses become NaN, which stops training, rather than train on wrapped-around indices.
        failed = torch.where((query < 0).any(1), float("nan"), 0.0)  # [S]
        query, column = query.clamp(min=0), column.clamp(min=0)
        stage = torch.arange(s, device=logits.device)[:, None]
        # scatter_ of a Python number: indexed assignment would copy the 1.0 to the GPU, blocking
        labels = torch.zeros_like(logits, dtype=torch.float32)
        labels.view(-1).scatter_(0, ((stage * b + batch) * q + query).reshape(-1), 1.0)
        focal = sigmoid_focal_loss(logits, labels, self.focal_alpha, self.focal_gamma)
        loss_cls = focal.sum((1, 2)) / num_people

        gt, area = targets.keypoints[batch, column], targets.area[batch, column]  # [S, P, K, 3], [S, P]
        pred = keypoints[stage, batch, query].float()  # [S, P, K, 2]
        labelled, gt_xy = labelled_coordinates(gt)
        labelled = labelled[..., None].float()
        loss_kpt = ((pred - gt_xy).abs() * labelled).sum((1, 2, 3)) / num_coords
        usable = (labelled.sum((2, 3)) > 0) & (area > 0)  # OKS of people without keypoints is undefined
        oks = oks_loss(
            pred.flatten(0, 1),
            gt.flatten(0, 1),
            area.flatten(),
            self.sigmas.to(pred.device),
            self.oks_mode,
            image_size=targets.size[batch].repeat(s, 1),
        )
        loss_oks = torch.where(usable, oks.view(usable.shape), 0.0).sum(1) / num_people
        return {"cls": loss_cls + failed, "kpt": loss_kpt + failed, "oks": loss_oks + failed}

    def _heatmap_loss(
        self, heatmap: Tensor, targets: PaddedTargets, num_peaks: Tensor | None = None
    ) -> Tensor:
        """targets in pixels, crowd entries dropped like every other target's (before dd711e9 their
        labelled keypoints were heatmap peaks; COCO labels crowd regions without keypoints, so COCO's
        heatmap targets are the same)."""
        _, _, height, width = heatmap.shape
        stride, sigma, radius = self.heatmap_stride, self.heatmap_sigma, None
        if self.heatmap_target == "box":
            if targets.boxes is None:
                raise ValueError("heatmap_target 'box' needs every target's 'boxes' [G, 4] (x0, y0, x1, y1)")
            radius = box_heatmap_radius(targets.boxes, stride)  # [B, G]
            sigma = (2 * radius + 1) / 6
        goals = gaussian_heatmap(targets.keypoints, height, width, stride, sigma, radius)  # [B, K, H, W]
        valid = valid_mask(targets.size.flip(-1).long(), stride, height, width) > 0
        return heatmap_focal_loss(heatmap, goals, valid, num_peaks)
