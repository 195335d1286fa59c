"""Hungarian matching of predicted poses to ground-truth people, for every decoder stage at once."""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from kernels.dispatch import to_device
from kernels.linear_assignment import linear_assignment
from kernels.oks import pose_matching_cost

Match = tuple[Tensor, Tensor]


class HungarianMatcher:
    """One-to-one assignment minimising ``w_class * focal + w_kpt * L1 + w_oks * (1 - OKS)``.

    The cost of every stage and image comes from one :func:`kernels.pose_matching_cost` call, padded
    to the batch's largest number of people. solver "auto" solves it where it lies: CUDA costs by the
    batched Triton solver (:func:`kernels.linear_assignment`, no host sync: the matches stay on the
    GPU), CPU costs by scipy's ``linear_sum_assignment`` after one copy; "triton" or "scipy" forces
    one. JCRA does not state its matching weights: the defaults (class 2, keypoint L1 70, OKS 7) are
    reconstructed from PETR's assigner. Runs outside the compiled graph, without gradients.
    """

    def __init__(
        self,
        sigmas: Tensor,
        w_class: float = 2.0,
        w_kpt: float = 70.0,
        w_oks: float = 7.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        solver: str = "auto",
    ):
        if sigmas.dim() != 1:
            raise ValueError(f"sigmas must be [K], got {tuple(sigmas.shape)}")
        self.sigmas = sigmas.float()
        self.w_class, self.w_kpt, self.w_oks = float(w_class), float(w_kpt), float(w_oks)
        self.alpha, self.gamma = float(alpha), float(gamma)
        if solver not in ("auto", "triton", "scipy"):
            raise ValueError(f"solver must be 'auto', 'triton' or 'scipy', got {solver!r}")
        self.solver = solver

    @torch.no_grad()
    def __call__(self, logits: Tensor, keypoints: Tensor, targets: list[dict]) -> list[list[Match]]:
        """Match each stage's predictions to each image's non-crowd people.

        logits ``[S, B, Q]`` and keypoints ``[S, B, Q, K, 2]`` for S stages (7: six decoder layers and
        the encoder proposals; 1 is allowed), keypoints in ``[0, 1]`` image-normalised coordinates.
        targets: B dicts with "keypoints" ``[G_b, K, 3]`` (x, y normalised to ``[0, 1]``, v), "area"
        ``[G_b]`` normalised by ``w * h``, "size" ``[2]`` (h, w) in pixels (the OKS term is taken in
        pixels, as COCO scores it), optionally "iscrowd" ``[G_b]`` (crowd entries are never
        matched; the flags are read on the host, free when they are CPU tensors as the data pipeline
        gives them). Returns ``matches[s][b] = (query_index, target_index)``: int64 tensors of equal
        length ``min(Q, people)`` on the solver's device (CPU for scipy), target_index indexing the
        image's targets as given.
        """
        if logits.dim() != 3:
            raise ValueError(f"logits must be [S, B, Q], got {tuple(logits.shape)}")
        s, b, q = logits.shape
        k = self.sigmas.shape[0]
        if tuple(keypoints.shape) != (s, b, q, k, 2):
            raise ValueError(
                f"keypoints must be [S={s}, B={b}, Q={q}, K={k}, 2], got {tuple(keypoints.shape)}"
            )
        if len(targets) != b:
            raise ValueError(f"targets must hold B={b} dicts, got {len(targets)}")
        device = keypoints.device
        kept = [self._kept_targets(t, k) for t in targets]
        gt_kpts, gt_areas = self._pad_targets(targets, kept, k, device)
        image_size = self._image_sizes(targets, device)
        cost = pose_matching_cost(
            logits.reshape(s * b, q),
            keypoints.reshape(s * b, q, k, 2),
            # the same targets for every stage; a copy of [S * B, G, K, 3] is small next to the cost
            gt_kpts.repeat(s, 1, 1, 1),
            gt_areas.repeat(s, 1),
            self._sigmas_on(device),
            w_class=self.w_class,
            w_kpt=self.w_kpt,
            w_oks=self.w_oks,
            alpha=self.alpha,
            gamma=self.gamma,
            image_size=image_size.repeat(s, 1),
        )
        counts = [
            len(t["keypoints"]) if idx is None else len(idx) for t, idx in zip(targets, kept, strict=True)
        ]
        matches = self._assign(cost, counts * s)
        # crowd images: map positions among the kept targets back to the targets as given
        solved_on = cost.device if self._on_device(cost) else torch.device("cpu")
        kept = [idx if idx is None else to_device(idx, solved_on) for idx in kept]
        per_stage = [matches[stage * b : (stage + 1) * b] for stage in range(s)]
        return [
            [(qi, ti if idx is None else idx[ti]) for idx, (qi, ti) in zip(kept, stage, strict=True)]
            for stage in per_stage
        ]

    def _sigmas_on(self, device: torch.device) -> Tensor:
        """The sigmas on ``device``, moved there once (a blocking copy per call would sync each step)."""
        if self.sigmas.device != device:
            self.sigmas = self.sigmas.to(device)
        return self.sigmas

    @staticmethod
    def _kept_targets(target: dict, k: int) -> Tensor | None:
        """Indices (int64, CPU) of the image's non-crowd targets, None when it has no crowd entry, after
        checking the target's shapes."""
        kpts, area = target["keypoints"], target["area"]
        if kpts.dim() != 3 or kpts.shape[1:] != (k, 3):
            raise ValueError(f"targets[...]['keypoints'] must be [G, K={k}, 3], got {tuple(kpts.shape)}")
        g = kpts.shape[0]
        if tuple(area.shape) != (g,):
            raise ValueError(f"targets[...]['area'] must be [G={g}], got {tuple(area.shape)}")
        if "iscrowd" not in target:
            return None
        crowd = target["iscrowd"].cpu().reshape(-1)
        if crowd.shape[0] != g:
            raise ValueError(f"targets[...]['iscrowd'] must be [G={g}], got {tuple(crowd.shape)}")
        return None if not crowd.any() else torch.nonzero(crowd == 0).reshape(-1)

    @staticmethod
    def _image_sizes(targets: list[dict], device: torch.device) -> Tensor:
        """``[B, 2]`` (w, h) in pixels from the targets' "size" (h, w), on ``device`` without a sync."""
        sizes = []
        for target in targets:
            if "size" not in target:
                raise ValueError("targets[...] must hold 'size' [2] (h, w) in pixels: OKS is taken in pixels")
            size = target["size"]
            if tuple(size.shape) != (2,):
                raise ValueError(f"targets[...]['size'] must be [2] (h, w), got {tuple(size.shape)}")
            sizes.append(size)
        if not sizes:
            return torch.zeros((0, 2), device=device)
        if len({t.device for t in sizes}) > 1:
            sizes = [t.to(device) for t in sizes]
        return to_device(torch.stack(sizes).flip(-1).float(), device)

    @staticmethod
    def _pad_targets(
        targets: list[dict], kept: list[Tensor | None], k: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Kept targets padded to the batch's largest count: keypoints ``[B, G, K, 3]``, areas ``[B, G]``.

        Padding has area 0 and no labelled keypoint; its columns are cut off before assignment. Padded
        where the targets lie, then moved by one asynchronous copy each (the data pipeline's host
        targets cost no host synchronisation; a per-image copy would cost one each).
        """
        kpts, areas = [], []
        for target, idx in zip(targets, kept, strict=True):
            kp, area = target["keypoints"].float(), target["area"].float()
            if idx is not None:
                kp, area = kp[to_device(idx, kp.device)], area[to_device(idx, area.device)]
            kpts.append(kp)
            areas.append(area)
        if not kpts:
            return torch.zeros((0, 0, k, 3), device=device), torch.zeros((0, 0), device=device)
        if len({t.device for t in kpts + areas}) > 1:
            kpts, areas = [t.to(device) for t in kpts], [t.to(device) for t in areas]
        return (
            to_device(pad_sequence(kpts, batch_first=True), device),
            to_device(pad_sequence(areas, batch_first=True), device),
        )

    def _on_device(self, cost: Tensor) -> bool:
        """Whether the Triton solver (on the cost's device) rather than scipy (on the host) solves."""
        return self.solver == "triton" or (self.solver == "auto" and cost.is_cuda)

    def _assign(self, cost: Tensor, num_gt: list[int]) -> list[Match]:
        """Optimal assignment per image from a padded cost ``[N, Q, G]`` (any device).

        Image n uses the first ``num_gt[n]`` columns. The Triton solver's pairs are sliced on the
        device by the host-known counts ``min(Q, num_gt[n])``, so nothing is read back. It skips the
        finiteness check (a sync): a non-finite cost comes from non-finite predictions, whose loss is
        non-finite too and stops training.
        """
        if self._on_device(cost):
            query, gt, _ = linear_assignment(cost, num_gt, check_finite=False)
            # row n holds its pairs first: one split of the flat rows, not a Python slice per image
            width = query.shape[1]
            sizes = [size for g in num_gt for size in (min(width, g), width - min(width, g))]
            return list(
                zip(query.reshape(-1).split(sizes)[::2], gt.reshape(-1).split(sizes)[::2], strict=True)
            )
        cost_cpu = cost.cpu().numpy()
        return [_solve(cost_cpu[n, :, :g]) for n, g in enumerate(num_gt)]


def _solve(cost: np.ndarray) -> Match:
    """scipy's assignment of one ``[Q, G]`` cost as int64 tensors (empty when either side is empty)."""
    if cost.size == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)
