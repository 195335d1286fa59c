"""Prediction heads: person class, keypoint regression in inverse-sigmoid space, auxiliary heatmap."""

import math

import torch
from torch import nn


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clamped to [eps, 1 - eps], so coordinates on the border stay finite."""
    x = x.clamp(eps, 1.0 - eps)
    return torch.log(x / (1.0 - x))


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in fp32, or fp64 if it is: keypoints are refined in at least fp32 (bf16 moves a point by up to
    half a pixel at 256 px), and a float64 model keeps its precision."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def prior_bias(prob: float) -> float:
    """Bias that makes a sigmoid output ``prob`` at initialisation (RetinaNet's focal prior)."""
    return -math.log((1.0 - prob) / prob)


class MLP(nn.Sequential):
    """``num_layers`` linear layers with ReLU between them: ``[..., in_dim] -> [..., out_dim]``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ClassHead(nn.Linear):
    """One person logit per query: ``[..., C] -> [...]``, in at least fp32; bias set to the focal prior
    (0.01). A dot product rather than the Linear's matmul, which autocast would round to bf16: scores
    rank people in COCO AP, and bf16's 8 bits tie many of them."""

    def __init__(self, d_model: int, prior_prob: float = 0.01):
        super().__init__(d_model, 1)
        nn.init.constant_(self.bias, prior_bias(prior_prob))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (at_least_fp32(x) * at_least_fp32(self.weight[0])).sum(-1) + at_least_fp32(self.bias[0])


class KeypointHead(nn.Module):
    """Refines K keypoints in inverse-sigmoid space: ``sigmoid(logit(ref) + MLP(x))``.

    x ``[..., C]``; ref ``[..., K, 2]`` (x, y) in [0, 1]; returns ``[..., K, 2]``. The last layer starts
    at zero, so a fresh head returns its reference (Deformable-DETR's box refinement, per keypoint).
    """

    def __init__(self, d_model: int, num_keypoints: int, num_layers: int = 3):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.mlp = MLP(d_model, d_model, num_keypoints * 2, num_layers)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        delta = self.mlp(x).view(*x.shape[:-1], self.num_keypoints, 2)
        return (inverse_sigmoid(at_least_fp32(ref)) + at_least_fp32(delta)).sigmoid()


class HeatmapHead(nn.Sequential):
    """Auxiliary K-channel keypoint heatmap logits from the stride-8 encoder memory (training only).

    ``[B, C, H, W] -> [B, K, H, W]``: 3x3 conv, ReLU, 1x1 conv; the output bias starts at the
    CenterNet prior (0.1), as PETR's heatmap branch does. That branch is otherwise not ours: PETR runs
    one more deformable encoder layer on the stride-8 level, then a linear layer. Its loss and targets
    are PETR's (:mod:`jcra.criterion`).
    """

    def __init__(self, d_model: int, num_keypoints: int, prior_prob: float = 0.1):
        super().__init__(
            nn.Conv2d(d_model, d_model, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(d_model, num_keypoints, 1),
        )
        nn.init.constant_(self[-1].bias, prior_bias(prior_prob))
