"""Pose decoder: pose queries refined layer by layer with keypoint-guided deformable cross-attention.

JCRA's decoder is one stage "symmetric" with the encoder (six layers); the numbers it does not give
follow PETR's pose decoder: sampling point k of every head and level samples around the query's
current keypoint k, with offsets scaled by the pose's extent (its keypoints' bounding box times 0.25,
PETR's factor; the box is clamped below at ``min_extent``, our choice, so a collapsed pose still
samples a neighbourhood). Keypoints are refined in inverse-sigmoid space and the reference is detached
between layers (Deformable-DETR's iterative refinement).
"""

import torch
from torch import nn

from jcra.deformable_attention import MSDeformAttn
from jcra.encoder import FFN, Shapes
from jcra.heads import MLP, ClassHead, KeypointHead


class PoseDeformAttn(MSDeformAttn):
    """MSDeformAttn with one point per keypoint whose offsets start at zero (on the keypoint itself)."""

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.zeros_(self.sampling_offsets.bias)


class PoseDecoderLayer(nn.Module):
    """Self-attention among queries, pose deformable cross-attention, FFN; post-norm."""

    def __init__(
        self, d_model: int, num_keypoints: int, num_heads: int, num_levels: int, ffn_dim: int, dropout: float
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = PoseDeformAttn(d_model, num_heads, num_levels, num_keypoints)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, ffn_dim, dropout)

    def forward(self, tgt, query_pos, reference_points, offset_scale, memory, spatial_shapes, padding_mask):
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt, need_weights=False)[0]))
        attended = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, padding_mask, offset_scale
        )
        return self.ffn(self.norm2(tgt + self.dropout2(attended)))


class PoseDecoder(nn.Module):
    """``num_layers`` decoder layers, each followed by its own class and keypoint heads.

    The query's positional embedding is an MLP of its current keypoints (2K coordinates), recomputed
    every layer (conditional queries, as in DAB/DINO; PETR embeds its proposals' keypoints the same
    way once).
    """

    def __init__(
        self,
        d_model: int = 256,
        num_keypoints: int = 17,
        num_layers: int = 6,
        num_heads: int = 8,
        num_levels: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        extent_scale: float = 0.25,
        min_extent: float = 0.01,
    ):
        super().__init__()
        self.extent_scale, self.min_extent = extent_scale, min_extent
        self.layers = nn.ModuleList(
            PoseDecoderLayer(d_model, num_keypoints, num_heads, num_levels, ffn_dim, dropout)
            for _ in range(num_layers)
        )
        self.query_pos = MLP(2 * num_keypoints, d_model, d_model, 2)
        self.class_heads = nn.ModuleList(ClassHead(d_model) for _ in range(num_layers))
        self.keypoint_heads = nn.ModuleList(KeypointHead(d_model, num_keypoints) for _ in range(num_layers))

    def forward(
        self,
        tgt: torch.Tensor,
        keypoints: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: Shapes,
        padding_mask: torch.Tensor,
        valid_ratios: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode queries tgt [B, Q, C] from initial keypoints [B, Q, K, 2] (valid frame, in [0, 1]).

        memory [B, S, C], padding_mask [B, S], valid_ratios [B, L, 2] (x, y). Returns per layer logits
        [D, B, Q] and keypoints [D, B, Q, K, 2] in the valid frame.
        """
        all_logits, all_keypoints = [], []
        ref = keypoints.detach()
        # per level: the valid frame's [0, 1] maps to [0, valid ratio] of the padded map
        ratios = valid_ratios[:, None, :, None, :]  # [B, 1, L, 1, 2]
        for layer, class_head, keypoint_head in zip(
            self.layers, self.class_heads, self.keypoint_heads, strict=True
        ):
            extent = (ref.amax(2) - ref.amin(2)).clamp(min=self.min_extent) * self.extent_scale  # [B, Q, 2]
            offset_scale = extent[:, :, None, None, None, :] * valid_ratios[:, None, None, :, None, :]
            query_pos = self.query_pos(ref.flatten(2).to(tgt.dtype))
            tgt = layer(
                tgt, query_pos, ref[:, :, None] * ratios, offset_scale, memory, spatial_shapes, padding_mask
            )
            keypoints = keypoint_head(tgt, ref)
            all_logits.append(class_head(tgt))
            all_keypoints.append(keypoints)
            ref = keypoints.detach()
        return torch.stack(all_logits), torch.stack(all_keypoints)
