"""Multi-scale neck: C3-C5 to ``d_model`` channels plus a stride-64 level, masks, positions, level embedding.

Follows Deformable-DETR (and PETR, which uses it unchanged): 1x1 conv + GroupNorm(32) per backbone
level, a 3x3 stride-2 conv + GroupNorm on C5 for the fourth level, a normalised sine positional
encoding and a learned embedding per level. GroupNorm statistics are taken over each image's valid
region only, so a padded image gets the features it would get alone.
"""

import math

import torch
from torch import nn

from jcra.backbone import MaskedGroupNorm, valid_mask


def sine_position_encoding(valid_hw: torch.Tensor, height: int, width: int, dim: int) -> torch.Tensor:
    """DETR's normalised sine positional encoding: [B, dim, height, width].

    valid_hw [B, 2]: valid rows and columns of each map. Positions are (i + 0.5) / valid size * 2 pi,
    Deformable-DETR's convention, so they depend on the valid extent, not the padded one; the first
    dim / 2 channels encode y, the rest x, each interleaving sin and cos at temperature 10000.
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    device = valid_hw.device
    half = dim // 2
    freq = 10000.0 ** (2 * (torch.arange(half, device=device) // 2) / half)  # [half]
    y = (torch.arange(height, device=device) + 0.5)[None] / valid_hw[:, :1].float() * (2 * math.pi)
    x = (torch.arange(width, device=device) + 0.5)[None] / valid_hw[:, 1:].float() * (2 * math.pi)

    def encode(t: torch.Tensor) -> torch.Tensor:  # [B, n] -> [B, half, n]
        t = t[:, None, :] / freq[None, :, None]
        return torch.stack([t[:, 0::2].sin(), t[:, 1::2].cos()], dim=2).flatten(1, 2)

    pos_y = encode(y)[..., None].expand(-1, -1, -1, width)
    pos_x = encode(x)[:, :, None, :].expand(-1, -1, height, -1)
    return torch.cat([pos_y, pos_x], dim=1)


class MultiScaleNeck(nn.Module):
    """Backbone maps to ``num_levels`` maps of ``d_model`` channels with masks and positions.

    in_channels: channels of the backbone maps (strides ``in_strides``); levels beyond them come from
    stride-2 3x3 convs, the first on the last backbone map (Deformable-DETR's choice).
    """

    def __init__(
        self,
        in_channels: tuple[int, ...] = (512, 1024, 2048),
        in_strides: tuple[int, ...] = (8, 16, 32),
        d_model: int = 256,
        num_levels: int = 4,
        num_groups: int = 32,
    ):
        super().__init__()
        if len(in_channels) != len(in_strides) or num_levels < len(in_channels):
            raise ValueError(
                f"in_channels {in_channels} and in_strides {in_strides} must have equal lengths, "
                f"num_levels ({num_levels}) at least that"
            )
        self.d_model = d_model
        self.strides = tuple(in_strides) + tuple(
            in_strides[-1] * 2 ** (i + 1) for i in range(num_levels - len(in_strides))
        )
        chans = list(in_channels) + [d_model] * (num_levels - len(in_channels))
        convs = []
        for i, c in enumerate(chans):
            if i < len(in_channels):
                convs.append(nn.Conv2d(c, d_model, 1))
            else:
                convs.append(
                    nn.Conv2d(in_channels[-1] if i == len(in_channels) else d_model, d_model, 3, 2, 1)
                )
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(MaskedGroupNorm(num_groups, d_model) for _ in chans)
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        nn.init.normal_(self.level_embed)
        for conv in self.convs:
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: list[torch.Tensor], valid_hw: torch.Tensor):
        """feats: backbone maps; valid_hw [B, 2] int64 unpadded (h, w) in input pixels.

        Returns per level: maps [B, d, H_l, W_l] (zero where padded), padding masks [B, H_l, W_l] bool
        (True where padded), positions [B, d, H_l, W_l] (sine + level embedding) and valid sizes
        [B, 2] int64 (rows, columns).
        """
        maps, masks, pos, valid = [], [], [], []
        for lvl, (conv, norm, stride) in enumerate(zip(self.convs, self.norms, self.strides, strict=True)):
            src = feats[min(lvl, len(feats) - 1)] if lvl <= len(feats) else maps[-1]
            x = conv(src)
            h, w = x.shape[-2:]
            m = valid_mask(valid_hw, stride, h, w)
            x = norm(x, m)
            v = (valid_hw + stride - 1) // stride
            maps.append(x)
            masks.append(m[:, 0] == 0)
            valid.append(v)
            pe = sine_position_encoding(v, h, w, self.d_model)
            pos.append(pe.to(x.dtype) + self.level_embed[lvl].to(x.dtype)[None, :, None, None])
        return maps, masks, pos, valid
