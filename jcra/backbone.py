"""ResNet backbones (torchvision-compatible parameter names) returning C2-C5, and an optional Swin.

torchvision is not a dependency (its wheels pin one torch build); the ResNet here has the same
state-dict keys, so ImageNet weights load through ``torchvision.models`` when it is installed and
``pretrained=True``. With ImageNet weights the stem and stage 1 are frozen and every BatchNorm is
frozen (DETR-family practice, PETR's too). Trained from scratch (the demo), frozen random layers and
unnormalised blocks would waste the backbone: every layer trains and every norm is a GroupNorm
(8 groups) over each image's valid region. In the demo that took val AP from 0.40 to 0.53.

Padding: when given the images' valid sizes, every block zeroes its output outside the valid region
before the next 3x3 conv or max-pool sees it. Zero padding from the batch then looks exactly like
a conv's own zero padding, so an image's features do not depend on how much it was padded
(ceil-mode sizes: a stride-s map of an h-pixel image has ceil(h / s) valid rows).
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_RESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all buffers (not trained)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # BatchNorm2d checkpoints carry it
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, H, W]; mask unused (fixed statistics need none), taken for a common signature."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None].to(x.dtype) + shift[:, None, None].to(x.dtype)


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics cover only the valid positions; padded positions come out zero.

    x [B, C, H, W]; mask [B, 1, H, W] float, 1 where valid (every image needs one valid position), or
    None: no padding, plain GroupNorm.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32  # fp32 stats under autocast
        weight, bias = self.weight.to(compute), self.bias.to(compute)  # a bf16 model's too
        if mask is None:
            return F.group_norm(x.to(compute), self.num_groups, weight, bias, self.eps).to(x.dtype)
        B, C, H, W = x.shape
        G = self.num_groups
        xg = x.to(compute).view(B, G, C // G, H * W)
        m = mask.to(compute).view(B, 1, 1, H * W)
        count = m.sum(-1, keepdim=True) * (C // G)
        mean = (xg * m).sum((-2, -1), keepdim=True) / count
        centred = (xg - mean) * m  # two passes: no cancellation when the mean dwarfs the spread
        var = centred.square().sum((-2, -1), keepdim=True) / count
        scale = (var + self.eps).rsqrt() * weight.view(1, G, C // G, 1)
        out = torch.addcmul(bias.view(1, G, C // G, 1) * m, centred, scale)
        return out.view(B, C, H, W).to(x.dtype)


Norm = Callable[[int], nn.Module]
"""Builds a norm layer for C channels; the layer is called as ``norm(x, mask)``."""

SCRATCH_GROUPS = 8


def group_norm(channels: int) -> nn.Module:
    return MaskedGroupNorm(math.gcd(SCRATCH_GROUPS, channels), channels)


def valid_mask(valid_hw: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """[B, 1, height, width] float, 1 inside each image's valid region at ``stride``.

    valid_hw: [B, 2] int64 (h, w) of each unpadded image in input pixels; the valid region of a
    stride-s map is ceil(h / s) x ceil(w / s), what a stack of padded stride-2 layers produces.
    """
    # built 4-D, not as a view of a 3-D mask: with symbolic sizes, torch 2.13's Inductor failed to
    # order such a view's strides at the smallest level
    valid = (valid_hw + stride - 1) // stride
    rows = torch.arange(height, device=valid_hw.device)[:, None] < valid[:, 0, None, None, None]
    cols = torch.arange(width, device=valid_hw.device) < valid[:, 1, None, None, None]
    return (rows & cols).float()


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask.to(x.dtype)


def _downsample(in_ch: int, out_ch: int, stride: int, norm: Norm) -> nn.Sequential | None:
    """1x1 conv and norm on the shortcut (a Sequential for torchvision's ``downsample.0/1`` keys)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm(out_ch))


def _shortcut(x: torch.Tensor, downsample: nn.Sequential | None, mask: torch.Tensor | None) -> torch.Tensor:
    return x if downsample is None else downsample[1](downsample[0](x), mask)


class BasicBlock(nn.Module):
    """ResNet-18/34 block; ``mask_in``/``mask_out`` are valid masks at its input/output stride."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1, norm: Norm = FrozenBatchNorm2d):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride, norm)

    def forward(self, x, mask_in=None, mask_out=None):
        identity = _shortcut(x, self.downsample, mask_out)
        out = _masked(self.relu(self.bn1(self.conv1(x), mask_out)), mask_out)
        out = self.bn2(self.conv2(out), mask_out)
        return _masked(self.relu(out + identity), mask_out)


class Bottleneck(nn.Module):
    """ResNet-50/101 block, stride on the 3x3 conv (torchvision's "v1.5")."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, norm: Norm = FrozenBatchNorm2d):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride, norm)

    def forward(self, x, mask_in=None, mask_out=None):
        identity = _shortcut(x, self.downsample, mask_out)
        out = _masked(self.relu(self.bn1(self.conv1(x), mask_in)), mask_in)
        out = self.relu(self.bn2(self.conv2(out), mask_out))
        out = self.bn3(self.conv3(out), mask_out)
        return _masked(self.relu(out + identity), mask_out)


class ResNet(nn.Module):
    """ResNet trunk returning C2, C3, C4, C5 (strides 4, 8, 16, 32).

    depth: 18, 34, 50 or 101. base_width: stage-1 width (64 in the standard nets; smaller for test
    configs). frozen: FrozenBatchNorm2d everywhere and the stem and stage 1 without gradients (for
    ImageNet weights); False: masked GroupNorm and every layer trained (from scratch).
    ``out_channels`` and ``strides`` describe the outputs.
    """

    strides = (4, 8, 16, 32)

    def __init__(self, depth: int = 50, base_width: int = 64, frozen: bool = True):
        super().__init__()
        if depth not in _RESNET_LAYERS:
            raise ValueError(f"depth must be one of {sorted(_RESNET_LAYERS)}, got {depth}")
        block = Bottleneck if depth >= 50 else BasicBlock
        norm = FrozenBatchNorm2d if frozen else group_norm
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
        self.bn1 = norm(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch, channels = base_width, []
        for i, blocks in enumerate(_RESNET_LAYERS[depth]):
            width = base_width * 2**i
            layer = [block(in_ch, width, 1 if i == 0 else 2, norm)]
            in_ch = width * block.expansion
            layer += [block(in_ch, width, 1, norm) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            channels.append(in_ch)
        self.out_channels = tuple(channels)
        if frozen:
            for module in (self.conv1, self.layer1):
                module.requires_grad_(False)

    def forward(self, images: torch.Tensor, valid_hw: torch.Tensor | None = None) -> list[torch.Tensor]:
        """images [B, 3, H, W]; valid_hw [B, 2] int64 (h, w) unpadded sizes, or None (no padding)."""

        masks: dict[int, torch.Tensor | None] = {}
        h, w = images.shape[-2:]
        for stride in (1, 2, 4, 8, 16, 32):
            masks[stride] = None if valid_hw is None else valid_mask(valid_hw, stride, h, w)
            # the next stride's size as its padded 3x3 stride-2 conv or max-pool computes it (the same
            # as ceil(h / 2), but written the conv's way so that symbolic sizes under torch.compile
            # are identical expressions, which Inductor needs to order strides)
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        # where, not a product: NaN or inf in the padding must not reach the image (0 * NaN is NaN)
        x = images if masks[1] is None else torch.where(masks[1] > 0, images, 0.0)
        x = _masked(self.relu(self.bn1(self.conv1(x), masks[2])), masks[2])
        x = _masked(self.maxpool(x), masks[4])
        outputs, stride = [], 4
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            for j, block in enumerate(layer):
                out_stride = stride * 2 if (i > 0 and j == 0) else stride
                x = block(x, masks[stride], masks[out_stride])
                stride = out_stride
            outputs.append(x)
        return outputs


def resnet(
    depth: int = 50, base_width: int = 64, pretrained: bool = False, frozen: bool | None = None
) -> ResNet:
    """A :class:`ResNet`; ``pretrained`` loads torchvision's ImageNet weights, V1 as PETR does (needs
    torchvision).

    frozen: the layout for ImageNet weights (FrozenBatchNorm2d, stem and stage 1 frozen) or, False,
    the from-scratch one (GroupNorm, everything trained); None follows ``pretrained``. The ImageNet
    layout with random weights is what benchmarks time: the network people train from ImageNet and
    deploy, without a download.
    """
    frozen = pretrained if frozen is None else frozen
    if pretrained and not frozen:
        raise ValueError("pretrained=True needs the ImageNet layout: frozen must be True or None")
    model = ResNet(depth, base_width, frozen=frozen)
    if pretrained:
        if base_width != 64:
            raise ValueError(f"pretrained weights need base_width=64, got {base_width}")
        try:
            from torchvision import models
        except ImportError as err:
            raise ImportError("pretrained=True needs torchvision (pip install torchvision)") from err
        # V1, the original recipe's weights (R-50 top-1 76.1): what PETR's torchvision://resnet50 loads
        # (DEFAULT is V2 for, another training recipe)
        weights = getattr(models, f"ResNet{depth}_Weights").IMAGENET1K_V1
        state = {k: v for k, v in weights.get_state_dict(progress=True).items() if not k.startswith("fc.")}
        model.load_state_dict(state)
    return model


class SwinBackbone(nn.Module):
    """A timm Swin Transformer returning its four stages (strides 4, 8, 16, 32) as NCHW maps.

    Needs timm >= 1.0 (an optional extra; ``strict_img_size=False`` accepts any input size, best a
    multiple of 32); not exercised in CI, where timm is absent. Padding is not masked inside the
    backbone: windowed attention is not padding-invariant, so mixed-size batches give slightly
    size-dependent features.
    """

    strides = (4, 8, 16, 32)

    def __init__(
        self,
        name: str = "swin_large_patch4_window12_384",
        pretrained: bool = False,
        drop_path_rate: float = 0.3,
    ):
        super().__init__()
        try:
            import timm
        except ImportError as err:
            raise ImportError("Swin backbones need timm (pip install timm)") from err
        self.body = timm.create_model(
            name,
            pretrained=pretrained,
            features_only=True,
            out_indices=(0, 1, 2, 3),
            strict_img_size=False,
            drop_path_rate=drop_path_rate,  # stochastic depth, PETR's Swin-L rate (timm's default is 0)
        )
        self.out_channels = tuple(self.body.feature_info.channels())
        # timm's feature wrappers say their layout (Swin's hooks give NHWC); a map's shape cannot, since
        # its height may equal its channels (Swin-L's 192 at stride 4 for a 768-pixel-high image)
        self.channels_last = getattr(self.body, "output_fmt", "NCHW") == "NHWC"

    def forward(self, images: torch.Tensor, valid_hw: torch.Tensor | None = None) -> list[torch.Tensor]:
        feats = self.body(images)
        if self.channels_last:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return feats
