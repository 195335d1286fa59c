"""jcra.backbone: frozen BatchNorm, torchvision-compatible keys, frozen stages or GroupNorm from
scratch, padding invariance, the Swin wrapper's layout."""

import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from jcra.backbone import FrozenBatchNorm2d, MaskedGroupNorm, ResNet, SwinBackbone, resnet


def test_frozen_batchnorm_equals_batchnorm_in_eval():
    gen = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(6).double().eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(6, generator=gen))
        bn.running_var.copy_(torch.rand(6, generator=gen) + 0.1)
    frozen = FrozenBatchNorm2d(6).double()
    frozen.load_state_dict(bn.state_dict())  # carries num_batches_tracked, which is dropped
    x = torch.randn(2, 6, 5, 7, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(frozen(x), bn(x))
    assert not list(frozen.parameters())


def test_resnet50_has_torchvision_state_dict_layout():
    state = ResNet(50).state_dict()
    # torchvision's resnet50 holds 320 entries: 53 convs, 53 BatchNorms x 5, fc weight and bias;
    # ours drops fc and num_batches_tracked
    assert len(state) == 53 + 53 * 4
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.bn3.bias"):
        assert key in state
    assert tuple(state["layer3.5.conv2.weight"].shape) == (256, 256, 3, 3)
    assert ResNet(50).out_channels == (256, 512, 1024, 2048)
    assert ResNet(18).out_channels == (64, 128, 256, 512)


def test_stem_and_stage_one_are_frozen_for_imagenet_weights():
    model = ResNet(18, base_width=8)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(("conv1.", "layer1."))), name


def test_from_scratch_every_layer_trains_with_group_norm():
    model = resnet(50, base_width=8)
    assert all(p.requires_grad for p in model.parameters())
    norms = [m for m in model.modules() if isinstance(m, (FrozenBatchNorm2d, MaskedGroupNorm))]
    assert len(norms) == 53 and all(isinstance(m, MaskedGroupNorm) for m in norms)
    # the same keys as torchvision's layout, less the running statistics
    assert "layer1.0.downsample.1.weight" in model.state_dict()


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("depth", [18, 50])
def test_padding_does_not_change_features(depth, frozen):
    """An odd-sized image alone and zero-padded in a batch gives the same valid features."""
    torch.manual_seed(0)
    model = ResNet(depth, base_width=8, frozen=frozen).eval()
    with torch.no_grad():
        for norm in model.modules():  # non-trivial shifts and scales, so padding would leak
            if isinstance(norm, FrozenBatchNorm2d | MaskedGroupNorm):
                norm.bias.normal_()
                norm.weight.uniform_(0.5, 1.5)
    h, w = 75, 101
    image = torch.randn(1, 3, h, w)
    padded = torch.zeros(2, 3, 128, 160)
    padded[0, :, :h, :w] = image[0]
    padded[1] = torch.randn(3, 128, 160)
    valid_hw = torch.tensor([[h, w], [128, 160]])
    with torch.no_grad():
        alone = model(image)
        batched = model(padded, valid_hw)
    for stride, a, b in zip(model.strides, alone, batched, strict=True):
        vh, vw = -(-h // stride), -(-w // stride)
        assert a.shape[-2:] == (vh, vw)
        torch.testing.assert_close(b[:1, :, :vh, :vw], a, rtol=1e-4, atol=1e-5)
        assert not b[0, :, vh:].any() and not b[0, :, :, vw:].any()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)
    with pytest.raises(ValueError, match="base_width"):
        resnet(18, base_width=16, pretrained=True)
    with pytest.raises(ValueError, match="frozen"):
        resnet(18, pretrained=True, frozen=False)


@pytest.mark.parametrize("frozen", [None, False, True])
def test_layout_follows_pretrained_unless_frozen_is_given(frozen):
    """The ImageNet layout (frozen batch norm, stem and stage 1 without gradients) without weights when
    frozen=True; the from-scratch layout (GroupNorm, everything trained) otherwise."""
    model = resnet(18, base_width=16, frozen=frozen)
    norms = {type(m) for m in model.modules() if isinstance(m, (FrozenBatchNorm2d, MaskedGroupNorm))}
    assert norms == ({FrozenBatchNorm2d} if frozen else {MaskedGroupNorm})
    assert model.conv1.weight.requires_grad is not bool(frozen)
    assert all(p.requires_grad is not bool(frozen) for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())


class _FakeSwinFeatures(nn.Module):
    """timm's features_only wrapper as SwinBackbone sees it: stage maps at strides 4-32 in
    ``output_fmt``, made from the image so that a transposed map differs from the right one."""

    channels = (8, 16, 32, 64)

    def __init__(self, output_fmt: str):
        super().__init__()
        self.output_fmt = output_fmt
        self.feature_info = SimpleNamespace(channels=lambda: list(self.channels))
        self.projections = nn.ModuleList(nn.Conv2d(3, c, 1) for c in self.channels)

    def forward(self, images):
        maps = [proj(nn.functional.avg_pool2d(images, 4 * 2**i)) for i, proj in enumerate(self.projections)]
        return [m.permute(0, 2, 3, 1) if self.output_fmt == "NHWC" else m for m in maps]


@pytest.mark.parametrize("output_fmt", ["NHWC", "NCHW"])
def test_swin_maps_come_channels_first_even_when_height_equals_channels(monkeypatch, output_fmt):
    body = _FakeSwinFeatures(output_fmt)
    monkeypatch.setitem(sys.modules, "timm", SimpleNamespace(create_model=lambda *args, **kwargs: body))
    backbone = SwinBackbone()
    assert backbone.out_channels == body.channels
    # 32 x 64 pixels: the stride-4 map is 8 rows high and holds 8 channels, the case a shape cannot tell
    images = torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    feats = backbone(images)
    for i, (f, c) in enumerate(zip(feats, body.channels, strict=True)):
        expected = body.projections[i](nn.functional.avg_pool2d(images, 4 * 2**i))
        assert f.shape == (2, c, 8 // 2**i, 16 // 2**i)
        torch.testing.assert_close(f, expected)


def test_swin_trains_with_petrs_stochastic_depth(monkeypatch):
    """PETR's Swin-L drops paths at rate 0.3; timm's default is none."""
    asked = {}

    def create_model(name, **kwargs):
        asked.update(kwargs, name=name)
        return _FakeSwinFeatures("NCHW")

    monkeypatch.setitem(sys.modules, "timm", SimpleNamespace(create_model=create_model))
    SwinBackbone()
    assert asked["drop_path_rate"] == 0.3 and asked["features_only"] and not asked["strict_img_size"]


@pytest.mark.parametrize("depth", [18, 50])
def test_pretrained_resnet_loads_torchvisions_v1_weights_as_petr(monkeypatch, depth):
    """PETR's torchvision://resnet50 is the original (V1) weights; torchvision's DEFAULT is V2 for
    R-50, another recipe. A stand-in torchvision serves V1 as a state dict with the classifier."""
    reference = resnet(depth, frozen=True).state_dict()
    served = {key: torch.randn_like(value) for key, value in reference.items()}

    class Weights:
        IMAGENET1K_V1 = SimpleNamespace(
            get_state_dict=lambda progress: {**served, "fc.weight": torch.zeros(1)}
        )
        DEFAULT = None  # V2 for R-50: reading it fails the test

    models = SimpleNamespace(**{f"ResNet{depth}_Weights": Weights})
    monkeypatch.setitem(sys.modules, "torchvision", SimpleNamespace(models=models))
    model = resnet(depth, pretrained=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, served[key], rtol=0, atol=0, msg=key)
