"""Deformable-DETR's multi-scale deformable attention module, on ``kernels.ms_deform_attn``."""

import math

import torch
from torch import nn

from kernels.dispatch import device_table
from kernels.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference


class MSDeformAttn(nn.Module):
    """Each query attends to ``num_points`` sampled points per head and level around its reference.

    Projections and initialisation follow Deformable-DETR: offsets start on a ring of directions,
    one per head, at growing radius per point; attention weights start uniform. ``use_fused``
    (settable per instance) picks the fused op or the plain-PyTorch reference.
    """

    use_fused: bool = True

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        ring = torch.stack([angles.cos(), angles.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True).values  # onto the unit square's border
        ring = ring.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        ring = ring * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: tuple[tuple[int, int], ...],
        value_padding_mask: torch.Tensor | None = None,
        offset_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` [N, Lq, C] to ``value`` [N, S, C]; returns [N, Lq, C].

        reference_points: [N, Lq, L, 2] (x, y) in [0, 1], one reference per level shared by all
            points, or [N, Lq, L, P, 2], one reference per point (the pose decoder: point k around
            keypoint k).
        spatial_shapes: (H, W) per level as Python ints, so compiled graphs stay whole.
        value_padding_mask: [N, S] bool, True where the value is padding (zeroed before sampling).
        offset_scale: multiplies the predicted offsets, broadcastable to [N, Lq, M, L, P, 2];
            default 1 / (W_l, H_l), offsets in pixels of each level.
        """
        N, Lq, _ = query.shape
        M, L, P = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != L:
            raise ValueError(f"spatial_shapes has {len(spatial_shapes)} levels, the module {L}")
        expected = [(N, Lq, L, 2), (N, Lq, L, P, 2)]  # [N, Lq, 2] would broadcast Lq against L
        if tuple(reference_points.shape) not in expected:
            raise ValueError(
                f"reference_points must be [N, Lq, L, 2] or [N, Lq, L, P, 2] = {expected[0]} or "
                f"{expected[1]}, got {tuple(reference_points.shape)}"
            )
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(N, v.shape[1], M, self.embed_dim // M)

        # Locations stay fp32 under autocast: a bf16 location is off by up to half a pixel at 256 px.
        offsets = self.sampling_offsets(query).float().view(N, Lq, M, L, P, 2)
        weights = self.attention_weights(query).float().view(N, Lq, M, L * P).softmax(-1)
        if offset_scale is None:
            sizes = device_table([(w, h) for h, w in spatial_shapes], torch.float32, query.device)
            offset_scale = 1.0 / sizes[:, None]  # [L, 1, 2]: 1 / (W, H)
        if reference_points.dim() == 4:
            reference_points = reference_points[:, :, None, :, None, :]
        else:
            reference_points = reference_points[:, :, None]
        locations = reference_points.float() + offsets * offset_scale
        weights = weights.view(N, Lq, M, L, P)
        if self.use_fused:
            out = ms_deform_attn(v, spatial_shapes, None, locations, weights)
        else:
            out = ms_deform_attn_reference(v, spatial_shapes, locations, weights)
        return self.output_proj(out.to(query.dtype))
