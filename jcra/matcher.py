"""Hungarian matching of predicted poses to ground-truth people, for every decoder stage at once."""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from jcra.oks_loss import checked_sigmas
from jcra.targets import PaddedTargets, pad_targets
from kernels.dispatch import to_device
from kernels.linear_assignment import linear_assignment
from kernels.oks import checked_cost_weights, pose_matching_cost

Match = tuple[Tensor, Tensor]
BatchMatch = tuple[Tensor, Tensor, Tensor]
"""(batch_index ``[P]``, query_index ``[S, P]``, target_index ``[S, P]``): every stage's pairs at once."""


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
        self.sigmas = checked_sigmas(sigmas)
        weights = checked_cost_weights(w_class=w_class, w_kpt=w_kpt, w_oks=w_oks, alpha=alpha, gamma=gamma)
        self.w_class, self.w_kpt, self.w_oks, self.alpha, self.gamma = weights.values()
        if solver not in ("auto", "triton", "scipy"):
            raise ValueError(f"solver must be 'auto', 'triton' or 'scipy', got {solver!r}")
        self.solver = solver

    @torch.no_grad()
    def __call__(self, logits: Tensor, keypoints: Tensor, targets: list[dict]) -> list[list[Match]]:
        """Match each stage's predictions to each image's non-crowd people.

        logits ``[S, B, Q]`` and keypoints ``[S, B, Q, K, 2]`` for S stages of the same Q (the six
        decoder layers; the encoder proposals, one a token, in a call of their own; 1 is allowed),
        keypoints in ``[0, 1]`` image-normalised coordinates.
        targets: B dicts with "keypoints" ``[G_b, K, 3]`` (x, y normalised to ``[0, 1]``, v), "area"
        ``[G_b]`` normalised by ``w * h``, "size" ``[2]`` (h, w) in pixels (the OKS term is taken in
        pixels, as COCO scores it), optionally "iscrowd" ``[G_b]`` (crowd entries are never matched):
        see :func:`jcra.targets.pad_targets`. Returns ``matches[s][b] = (query_index, target_index)``:
        int64 tensors of equal length ``min(Q, people)`` on the solver's device (CPU for scipy),
        target_index indexing the image's targets as given. A cost holding NaN or inf (from non-finite
        predictions) raises a ValueError naming its problems ``stage * B + image``, with either solver
        (the Triton solver then reads one flag back: a host sync).
        """
        padded = pad_targets(targets, self.sigmas.shape[0], keypoints.device)
        self._check(logits, keypoints, padded)
        s, b = logits.shape[:2]
        cost = self._cost(logits, keypoints, padded)
        query, column = self._assign(cost, padded.counts * s, check_finite=True)
        kept = [idx if idx is None else to_device(idx, query.device) for idx in padded.kept]
        # row n holds its pairs first: one split of the flat rows, not a Python slice per image
        width = query.shape[1]
        sizes = [size for count in padded.counts for size in (min(width, count), width - min(width, count))]
        query, column = (t.reshape(-1).split(sizes * s)[::2] for t in (query, column))
        pairs = [(q, c if idx is None else idx[c]) for q, c, idx in zip(query, column, kept * s, strict=True)]
        return [pairs[stage * b : (stage + 1) * b] for stage in range(s)]

    @torch.no_grad()
    def match(self, logits: Tensor, keypoints: Tensor, targets: PaddedTargets) -> BatchMatch:
        """The matches of all stages and images, in the form the losses gather them by.

        logits and keypoints as in :meth:`__call__`; targets padded, coordinates normalised
        (:meth:`jcra.targets.PaddedTargets.normalised`). Returns int64 ``batch_index [P]`` and
        ``query_index``, ``target_index [S, P]``, ``P = sum_b min(Q, counts[b])`` pairs a stage (image
        0's first, the same images in every stage), target_index a column of the padded targets (a
        position among the image's kept people), on the solver's device (CPU for scipy). An image whose
        cost holds NaN or inf (from non-finite predictions) has -1 at its pairs with the Triton solver
        (finding out on the host would sync); scipy raises a ValueError.
        """
        self._check(logits, keypoints, targets)
        (s, b, q), g = logits.shape, targets.keypoints.shape[1]
        solver_device = keypoints.device if self._on_device(keypoints.device) else torch.device("cpu")
        num_gt, batch, position = _match_indices(targets.counts, s, min(q, g), solver_device)
        cost = self._cost(logits, keypoints, targets)
        # the solver takes the counts on its device (no copy of its own) or, scipy, as host ints
        query, column = self._assign(cost, num_gt if num_gt.is_cuda else num_gt.tolist(), check_finite=False)
        query, column = (t.reshape(s, b * min(q, g))[:, position] for t in (query, column))
        return batch, query, column

    def _check(self, logits: Tensor, keypoints: Tensor, targets: PaddedTargets) -> None:
        if logits.dim() != 3:
            raise ValueError(f"logits must be [S, B, Q], got {tuple(logits.shape)}")
        s, b, q = logits.shape
        k = self.sigmas.shape[0]
        if tuple(keypoints.shape) != (s, b, q, k, 2):
            raise ValueError(
                f"keypoints must be [S={s}, B={b}, Q={q}, K={k}, 2], got {tuple(keypoints.shape)}"
            )
        if len(targets.counts) != b:
            raise ValueError(f"targets must hold B={b} images, got {len(targets.counts)}")

    def _cost(self, logits: Tensor, keypoints: Tensor, targets: PaddedTargets) -> Tensor:
        """The cost ``[S * B, Q, G]`` of every stage and image at once (inputs checked)."""
        (s, b, q), k, device = logits.shape, self.sigmas.shape[0], keypoints.device
        # row stage * B + image reads the image's targets (the cost takes targets of B images for S * B)
        return pose_matching_cost(
            logits.reshape(s * b, q),
            keypoints.reshape(s * b, q, k, 2),
            to_device(targets.keypoints, device),
            to_device(targets.area, device),
            self._sigmas_on(device),
            w_class=self.w_class,
            w_kpt=self.w_kpt,
            w_oks=self.w_oks,
            alpha=self.alpha,
            gamma=self.gamma,
            image_size=to_device(targets.size, device),
        )

    def _sigmas_on(self, device: torch.device) -> Tensor:
        """The sigmas on ``device``, moved there once (a blocking copy per call would sync each step)."""
        if self.sigmas.device != device:
            self.sigmas = self.sigmas.to(device)
        return self.sigmas

    def _on_device(self, device: torch.device) -> bool:
        """Whether the Triton solver (on the cost's device) rather than scipy (on the host) solves."""
        return self.solver == "triton" or (self.solver == "auto" and device.type == "cuda")

    def _assign(self, cost: Tensor, num_gt: list[int] | Tensor, check_finite: bool) -> tuple[Tensor, Tensor]:
        """Optimal assignment per image of a padded cost ``[N, Q, G]`` (any device), image n using its
        first ``num_gt[n]`` columns (host ints, or for the Triton solver a tensor on the cost's
        device): query and target indices ``[N, min(Q, G)]``, row n holding its
        ``min(Q, num_gt[n])`` pairs first and -1 after, on the solver's device.

        An image whose used cost holds NaN or inf raises a ValueError naming it, with scipy always
        (it would accept inf) and with the Triton solver when ``check_finite``; without, the Triton
        solver needs no sync and leaves -1 at that image's pairs, which the criterion turns into a NaN
        loss that stops training.
        """
        if self._on_device(cost.device):
            query, column, _ = linear_assignment(cost, num_gt, check_finite=check_finite)
            return query, column
        n, q, g = cost.shape
        cost_cpu = cost.cpu().numpy()
        used = [cost_cpu[image, :, :count] for image, count in enumerate(num_gt)]
        failed = [image for image, block in enumerate(used) if not np.isfinite(block).all()]
        if failed:
            raise ValueError(f"cost of image(s) {failed} holds NaN or inf in its first num_gt columns")
        query = torch.full((n, min(q, g)), -1, dtype=torch.int64)
        column = query.clone()
        for image, block in enumerate(used):
            rows, cols = _solve(block)
            query[image, : len(rows)], column[image, : len(cols)] = rows, cols
        return query, column


def _match_indices(
    counts: list[int], s: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """For S stages of images with ``counts`` people, whose ``min(width, count)`` pairs lead rows of
    ``width``: the solver's num_gt ``[S * B]`` (counts, stage after stage), and each pair's image and
    position in a stage's flattened rows, ``[P]`` each; int64 on ``device`` by one asynchronous copy
    (built on the host, which knows the counts: nothing is read back)."""
    pairs = np.minimum(np.asarray(counts, dtype=np.int64), width)
    batch = np.repeat(np.arange(len(pairs)), pairs)
    first = np.repeat(np.cumsum(pairs) - pairs, pairs)  # index of each pair's image's first pair
    position = batch * width + np.arange(len(batch)) - first
    indices = np.concatenate([np.tile(np.asarray(counts, dtype=np.int64), s), batch, position])
    return to_device(torch.from_numpy(indices), device).split([s * len(counts), len(batch), len(batch)])


def _solve(cost: np.ndarray) -> Match:
    """scipy's assignment of one ``[Q, G]`` cost as int64 tensors (empty when either side is empty)."""
    if cost.size == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)
