"""Keypoint encoder: Deformable-DETR's multi-scale deformable self-attention layers."""

import torch
from torch import nn

from jcra.deformable_attention import MSDeformAttn

Shapes = tuple[tuple[int, int], ...]


class FFN(nn.Module):
    """Post-norm feed-forward block: ``norm(x + dropout(W2 dropout(relu(W1 x))))``."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, ffn_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, d_model),
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.net(x)))


def grid_centres(spatial_shapes: Shapes, valid: torch.Tensor) -> torch.Tensor:
    """Centre of every token in its image's valid frame: [B, S, 2] (x, y), in (0, 1) where valid.

    valid [B, L, 2] int64 valid (rows, columns) per level; padded tokens get values above 1.
    """
    centres = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        vh = valid[:, lvl, 0, None, None].float()
        vw = valid[:, lvl, 1, None, None].float()
        y = (torch.arange(h, device=valid.device, dtype=torch.float32)[None, :, None] + 0.5) / vh
        x = (torch.arange(w, device=valid.device, dtype=torch.float32)[None, None, :] + 0.5) / vw
        centres.append(torch.stack([x.expand(-1, h, w), y.expand(-1, h, w)], -1).flatten(1, 2))
    return torch.cat(centres, 1)


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention (queries at the token centres, all levels) then FFN, post-norm."""

    def __init__(
        self, d_model: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int, dropout: float
    ):
        super().__init__()
        self.attn = MSDeformAttn(d_model, num_heads, num_levels, num_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, ffn_dim, dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask):
        attended = self.attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        return self.ffn(self.norm(src + self.dropout(attended)))


class DeformableEncoder(nn.Module):
    """``num_layers`` deformable self-attention layers over the flattened multi-scale tokens.

    Defaults are Deformable-DETR's and PETR's (JCRA gives the layer count only): 8 heads, 4 levels,
    4 points, FFN 1024, dropout 0.1.
    """

    def __init__(
        self,
        d_model: int = 256,
        num_layers: int = 6,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, num_heads, num_levels, num_points, ffn_dim, dropout)
            for _ in range(num_layers)
        )

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        spatial_shapes: Shapes,
        padding_mask: torch.Tensor,
        valid_ratios: torch.Tensor,
        centres: torch.Tensor,
    ) -> torch.Tensor:
        """Encode tokens: src, pos [B, S, C]; padding_mask [B, S] (True where padded).

        valid_ratios [B, L, 2] (x, y): valid fraction of each level's map; centres [B, S, 2]: token
        centres in the valid frame (:func:`grid_centres`). Returns the memory [B, S, C].
        """
        # a token's reference on level l: its centre in the valid frame, mapped into level l's padded map
        reference_points = centres[:, :, None] * valid_ratios[:, None]
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, padding_mask)
        return src
