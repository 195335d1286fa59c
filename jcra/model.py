"""JCRA: backbone, multi-scale neck, keypoint encoder, top-k pose queries, one-stage pose decoder.

``build_model(name, **overrides)`` builds a named configuration; :class:`JCRA` takes the submodules
and plain numbers (Hydra builds it from YAML the same way).
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from jcra.backbone import SwinBackbone, resnet, valid_mask
from jcra.decoder import PoseDecoder, finest_level_map
from jcra.deformable_attention import MSDeformAttn
from jcra.encoder import DeformableEncoder, grid_centres
from jcra.heads import ClassHead, HeatmapHead, KeypointHead
from jcra.neck import MultiScaleNeck

MASKED_LOGIT = -1e4
"""Encoder logit of padded tokens: never selected, never matched, zero loss, finite in fp16."""


def compile_arguments(
    backend: str | Callable = "inductor",
    mode: str | None = None,
    module_guards: bool = True,
    inductor_options: dict | None = None,
) -> dict:
    """``torch.compile``'s ``backend``, ``mode`` and ``options`` for a compile in ``mode`` with
    ``inductor_options``, without Dynamo's guards on the modules where ``module_guards`` is False (see
    :meth:`JCRA.compile_model`). A new dict each call: torch.compile pops the guard filter from it."""
    options = dict(inductor_options or {})
    if not module_guards:
        options["guard_filter_fn"] = torch.compiler.skip_guard_on_all_nn_modules_unsafe
    if options and mode:  # torch.compile takes a mode or options: the options then hold the mode's
        if backend != "inductor":
            raise ValueError(f"mode={mode!r} is Inductor's; backend {backend!r} takes none")
        from torch._inductor import list_mode_options

        options, mode = {**list_mode_options(mode), **options}, None
    return {"backend": backend, "mode": mode, "options": options or None}


class JCRA(nn.Module):
    """One-stage multi-person pose estimator (arXiv 2307.01004).

    Images go through the backbone and neck to multi-scale tokens, which the encoder refines; every
    token proposes a person (a class logit and K keypoints around its grid centre), the top
    ``num_queries`` proposals become the pose queries, and the decoder refines them layer by layer.
    Keypoints are (x, y) in [0, 1] of each image's unpadded size throughout. There is no
    joint-refinement decoder (PETR's second stage): one decoder stage, which is JCRA's point against
    PETR. The proposal head has PETR's form (Deformable-DETR's two-stage head with K keypoints a token),
    narrower: an MLP of d_model, d_model, 2K where PETR's is 512, 512, 512, 2K. The query initialisation
    is ours, as JCRA does not give it: a query's content is its token's projected memory (as in
    Efficient DETR and RT-DETR, not detached here: the README's demo A/B) and its position an MLP of its
    current keypoints, every layer (:class:`jcra.decoder.PoseDecoder`); PETR learns 300 content and
    position embeddings and takes only the proposals' keypoints. The decoder's keypoint heads read the
    memory at each keypoint: our addition too (:mod:`jcra.decoder`). The transformer's linear layers keep
    PyTorch's default initialisation, where PETR redraws them Xavier-uniform (the README's demo A/B).

    use_fused_kernels: run deformable attention through the fused op (``kernels.ms_deform_attn``);
    False runs the plain-PyTorch reference (fast CPU tests, debugging).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: MultiScaleNeck,
        encoder: DeformableEncoder,
        decoder: PoseDecoder,
        num_keypoints: int = 17,
        num_queries: int = 300,
        use_fused_kernels: bool = True,
    ):
        super().__init__()
        d_model = neck.d_model
        self.backbone, self.neck, self.encoder, self.decoder = backbone, neck, encoder, decoder
        self.num_keypoints, self.num_queries = num_keypoints, num_queries
        # encoder proposals (Deformable-DETR's two-stage head): projected memory, class, keypoints
        self.enc_proj = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model))
        self.enc_class = ClassHead(d_model)
        self.enc_keypoints = KeypointHead(d_model, num_keypoints)
        self.heatmap_head = HeatmapHead(d_model, num_keypoints)
        self.detail_proj = nn.Linear(backbone.out_channels[0], d_model)  # a 1x1 conv, channels last
        self.use_fused_kernels = use_fused_kernels

    @property
    def use_fused_kernels(self) -> bool:
        return self._use_fused_kernels

    @use_fused_kernels.setter
    def use_fused_kernels(self, value: bool) -> None:
        self._use_fused_kernels = bool(value)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.use_fused = self._use_fused_kernels

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor | None = None) -> dict:
        """images [B, 3, H, W] normalised; padding_mask [B, H, W] bool, True where padded: a band at the
        bottom and right, each image keeping at least one pixel, as :func:`jcra.data.collate` makes it
        (which checks). The model reads each image's size from it and does not check its form, which
        would wait for the GPU.

        Returns ``logits`` [B, Q] and ``keypoints`` [B, Q, K, 2] (x, y in [0, 1] of each unpadded image).
        In training also ``aux_outputs`` (earlier decoder layers), ``enc_outputs`` (every token's
        proposal, padded tokens at logit -1e4) and ``heatmap`` [B, K, H/8, W/8] logits.
        """
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be float [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("images: an empty batch (B = 0), which has no people to find")
        weights = next(self.parameters()).dtype
        if images.dtype != weights:  # autocast takes fp32 images into an fp32 model
            raise ValueError(f"images are {images.dtype} but the model's weights {weights}: cast one of them")
        B, _, H, W = images.shape
        if padding_mask is not None and (
            tuple(padding_mask.shape) != (B, H, W) or padding_mask.dtype != torch.bool
        ):
            raise ValueError(
                f"padding_mask must be bool [B={B}, H={H}, W={W}], got {padding_mask.dtype} "
                f"{tuple(padding_mask.shape)}"
            )
        valid_hw = self._valid_sizes(images, padding_mask)
        detail, *feats = self.backbone(images, None if padding_mask is None else valid_hw)
        maps, masks, pos, valid = self.neck(feats, valid_hw)

        spatial_shapes = tuple((m.shape[-2], m.shape[-1]) for m in maps)
        tokens = sum(h * w for h, w in spatial_shapes)
        if tokens < self.num_queries:
            raise ValueError(
                f"images of {H} x {W} pixels give {tokens} tokens, fewer than num_queries="
                f"{self.num_queries}: pad them to a larger size or build the model with fewer queries"
            )
        src = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)  # [B, S, C]
        pos_flat = torch.cat([p.flatten(2).transpose(1, 2) for p in pos], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)  # [B, S]
        valid_ratios = _valid_ratios(valid, spatial_shapes)
        valid = torch.stack(valid, 1)  # [B, L, 2] (rows, cols)
        centres = grid_centres(spatial_shapes, valid)

        memory = self.encoder(src, pos_flat, spatial_shapes, mask_flat, valid_ratios, centres)

        enc_logits, enc_keypoints, tgt, init = self._proposals(memory, mask_flat, centres)
        local_maps = self._local_maps(memory, spatial_shapes[0], mask_flat, detail, valid_hw)
        logits, keypoints = self.decoder(
            tgt, init.detach(), memory, spatial_shapes, mask_flat, valid_ratios, local_maps
        )
        out = {"logits": logits[-1], "keypoints": keypoints[-1]}
        if self.training:
            out["aux_outputs"] = [
                {"logits": lg, "keypoints": kp} for lg, kp in zip(logits[:-1], keypoints[:-1], strict=True)
            ]
            out["enc_outputs"] = {"logits": enc_logits, "keypoints": enc_keypoints}
            # the finest level with padding zeroed, as the keypoint heads read it: the 3x3 conv must see
            # zeros beyond the image, alone or padded in a batch
            out["heatmap"] = self.heatmap_head(local_maps[0][0].permute(0, 3, 1, 2).to(memory.dtype))
        return out

    def _proposals(self, memory: torch.Tensor, padding_mask: torch.Tensor, centres: torch.Tensor):
        """Every token proposes a pose around its centre; the best ``num_queries`` become the queries.

        Returns all tokens' logits [B, S] (padded ones at :data:`MASKED_LOGIT`) and keypoints
        [B, S, K, 2] (None in eval mode: training supervises them), and the selected queries' content
        [B, Q, C] and keypoints [B, Q, K, 2] (the keypoint head runs per token, so on the selected ones).

        An image with fewer valid tokens than queries (a small image padded in a batch) has padded
        tokens among its selection: they start as blank queries (zero content, at the image's
        centre), so that nothing of the padding, which depends on the batch, reaches the decoder.
        """
        enc_memory = self.enc_proj(memory)
        logits = self.enc_class(enc_memory).masked_fill(padding_mask, MASKED_LOGIT)
        top = logits.topk(self.num_queries, dim=1).indices  # [B, Q]
        padded = padding_mask.gather(1, top)[..., None]  # [B, Q, 1]
        tgt = enc_memory.gather(1, top[..., None].expand(-1, -1, enc_memory.shape[-1])).masked_fill(
            padded, 0.0
        )
        centre = centres.gather(1, top[..., None].expand(-1, -1, centres.shape[-1])).masked_fill(padded, 0.5)
        init = self.enc_keypoints(tgt, self._keypoint_start(centre))
        keypoints = self.enc_keypoints(enc_memory, self._keypoint_start(centres)) if self.training else None
        return logits, keypoints, tgt, init

    def _keypoint_start(self, centres: torch.Tensor) -> torch.Tensor:
        """Every keypoint of a proposal starts at its token's centre: [B, n, 2] -> [B, n, K, 2]."""
        return centres.clamp(max=1.0)[:, :, None].expand(-1, -1, self.num_keypoints, -1)

    def compile_model(
        self,
        transformer_only: bool = False,
        dynamic: bool = False,
        backend: str | Callable = "inductor",
        mode: str | None = None,
        module_guards: bool = True,
    ) -> None:
        """Compile in place with ``torch.compile(fullgraph=True)``: the whole forward, or with
        ``transformer_only`` the encoder and decoder alone (the backbone, neck and the glue between
        them then run eager). Parameter names do not change (no ``_orig_mod`` prefix).

        - Whole forward, ``dynamic=False``: one graph specialised to the first image size, so
          Inductor fuses each norm with its activation, mask and residual, and the neck and proposal
          glue too. For inference at one size and for training on fixed-size batches (pad to a few
          bucket sizes for more: one graph each, within Dynamo's recompile limit).
        - ``transformer_only=True, dynamic=True``: sizes symbolic, one graph per module for every
          image size, for training on randomly resized images (``train.compile=true``). The fused
          attention kernel reads its level table from a device tensor, so it needs no recompile.
        - Whole forward, ``dynamic=True``: with Inductor, its layout optimisation is turned off. On
          the CPU (mkldnn) it gives convolutions channels-last strides even with symbolic sizes, by
          comparing them, which torch 2.11's and 2.13's Inductor failed to do on the training graph;
          on CUDA Inductor already leaves it off for convolutions of symbolic sizes. On our CPU with
          torch 2.11, the GPU machines', the training forward and backward of the tiny model and of
          R-50 then compiled once for three sizes; torch 2.13's Inductor still fails on the training
          graph there (a value-range error on a channels-last view), and its lowering of a
          convolution's backward (not in 2.11; the same code on every device) fixes the input
          gradient's strides, so on our CPU it compiled a graph for each size (up to Dynamo's
          recompile limit), and likely would on a GPU (not checked). The train-step suite's
          ``fused+compile-dynamic`` times it on a GPU, where it has never run.

        - Whole forward with ``mode="reduce-overhead"`` (CUDA, inference at one size): the compiled
          forward is also captured as one CUDA graph and replayed, so a call costs one launch instead
          of hundreds (the fixed query set keeps every shape static, and no op waits for the host).
          Each call's outputs live in the graph's memory until the next call: consume or clone them.
          In training the backward is replayed as a graph too (the train-step suite's
          ``fused+compile+cudagraphs``), and the parameters' gradients may be the graph's own outputs:
          use them before the next step, ``zero_grad(set_to_none=True)`` every step, and do not
          accumulate them over several micro-batches (a replay rewrites the memory ``.grad`` holds,
          then adds it to itself).

        - ``module_guards=False`` (inference): before each call Dynamo checks the inputs only, not the
          modules' attributes and parameters (``torch.compiler.skip_guard_on_all_nn_modules_unsafe``).
          Dynamo's host time a call of R-50, which a GPU at batch 1 waits through, fell on our CPU
          from 0.19 to 0.05 ms with torch 2.13 and from 0.07 to 0.04 ms with torch 2.11, whose Dynamo
          already skips unchanged modules' guards (``bench/test_bench_guards.py``). Unsafe by design:
          after compiling, a change the forward would see goes unseen and the old graph runs: a
          module attribute it reads (``.training``, ``use_fused_kernels``), a parameter's shape,
          dtype or device, hooks added or removed. New parameter values are read each call
          (``load_state_dict`` is safe). :class:`jcra.PoseEstimator` compiles so and checks eval
          mode itself.

        Spatial shapes are Python ints, so nothing breaks the graph. The matcher stays outside.

        Compiling the whole forward with Inductor while the model is in training mode turns off
        Inductor's coalescing analysis for tiling (``triton.coalesce_tiling_analysis``): on the H100
        (torch 2.11) it asserted on a nested ``ModularIndexing`` in the training graph and killed the
        compile (pytorch#191603, still in torch 2.13). Inference graphs compiled with it on.
        """
        whole_inductor = backend == "inductor" and not transformer_only
        inductor_options = {}
        if whole_inductor and self.training:
            inductor_options["triton.coalesce_tiling_analysis"] = False
        if whole_inductor and dynamic:
            inductor_options["layout_optimization"] = False
        for module in (self.encoder, self.decoder) if transformer_only else (self,):
            nn.Module.compile(
                module,
                fullgraph=True,
                dynamic=dynamic,
                **compile_arguments(backend, mode, module_guards, inductor_options),
            )

    def _local_maps(self, memory, finest_hw, padding_mask, c2, valid_hw) -> list:
        """The keypoint heads' channels-last maps with the image's extent in each: the memory's finest
        level (stride 8) and C2 [B, C2, H/4, W/4] projected to d_model, both zero where padded."""
        finest = finest_level_map(memory, *finest_hw, padding_mask)
        stride = self.backbone.strides[0]
        valid = valid_mask(valid_hw, stride, *c2.shape[-2:]).permute(0, 2, 3, 1)
        detail = self.detail_proj(c2.permute(0, 2, 3, 1)).float() * valid  # [B, h, w, C]
        return [
            (finest, _image_extent(valid_hw, finest, self.neck.strides[0])),
            (detail, _image_extent(valid_hw, detail, stride)),
        ]

    @staticmethod
    def _valid_sizes(images: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, 2] int64 (h, w) of each unpadded image, from the mask's valid rows and columns."""
        if padding_mask is None:
            padding_mask = torch.zeros_like(images[:, 0], dtype=torch.bool)
        valid = ~padding_mask
        return torch.stack([valid.any(2).sum(1), valid.any(1).sum(1)], 1)


def _image_extent(valid_hw: torch.Tensor, level_map: torch.Tensor, stride: int) -> torch.Tensor:
    """The unpadded image's extent in a stride-``stride`` map [B, h, w, C] as fractions [B, 2] (x, y).

    Exactly the image's pixels, not whole cells as in :func:`_valid_ratios` (which follows
    Deformable-DETR): the keypoint heads sample at the keypoints themselves.
    """
    h, w = level_map.shape[1:3]
    return torch.stack([valid_hw[:, 1] / (w * stride), valid_hw[:, 0] / (h * stride)], -1).float()


def _valid_ratios(valid: list[torch.Tensor], spatial_shapes) -> torch.Tensor:
    """Valid fraction of each level's map: [B, L, 2] (x, y), from valid (rows, cols) [B, 2] per level.

    Divides by the Python sizes, so no size tensor crosses from the host.
    """
    ratios = [
        torch.stack([v[:, 1] / w, v[:, 0] / h], -1) for v, (h, w) in zip(valid, spatial_shapes, strict=True)
    ]
    return torch.stack(ratios, 1).float()


_RESNET_CONFIG = dict(d_model=256, enc_layers=6, dec_layers=6, num_heads=8, num_points=4, ffn_dim=1024)
CONFIGS: dict[str, dict] = {
    "jcra_r50": dict(backbone="resnet", depth=50, base_width=64, num_queries=300, **_RESNET_CONFIG),
    "jcra_r18": dict(backbone="resnet", depth=18, base_width=64, num_queries=300, **_RESNET_CONFIG),
    "jcra_swinl": dict(
        backbone="swin", swin_name="swin_large_patch4_window12_384", num_queries=300, **_RESNET_CONFIG
    ),
    "jcra_tiny": dict(
        backbone="resnet",
        depth=18,
        base_width=16,
        num_queries=30,
        d_model=64,
        enc_layers=1,
        dec_layers=2,
        num_heads=4,
        num_points=2,
        ffn_dim=128,
    ),  # fmt: skip
}
"""Named configurations; every key (and ``num_keypoints``, ``pretrained``, ``frozen_backbone``,
``dropout``, ``use_fused_kernels``, ``extent_scale``) can be overridden in :func:`build_model`."""

_DEFAULTS = dict(
    num_keypoints=17,
    pretrained=False,
    frozen_backbone=None,
    dropout=0.1,
    use_fused_kernels=True,
    num_levels=4,
    extent_scale=0.5,  # the decoder's offsets a fraction of the pose's box: PETR's half
)


def _check_config(cfg: dict) -> None:
    """ValueError naming the first key of ``cfg`` of the wrong type or range (most failed deep in the
    forward, and a few, like ``enc_layers=-1`` or ``pretrained="no"``, did not fail at all)."""
    if cfg["backbone"] not in ("resnet", "swin"):
        raise ValueError(f"backbone must be 'resnet' or 'swin', got {cfg['backbone']!r}")
    sizes = ["num_keypoints", "num_queries", "dec_layers", "d_model", "num_heads", "num_points", "ffn_dim"]
    sizes += ["num_levels"] + (["base_width"] if cfg["backbone"] == "resnet" else [])
    for key, low in [(key, 1) for key in sizes] + [("enc_layers", 0)]:
        if not (isinstance(cfg[key], int) and not isinstance(cfg[key], bool) and cfg[key] >= low):
            raise ValueError(f"{key} must be an integer >= {low}, got {cfg[key]!r}")
    if cfg["d_model"] % cfg["num_heads"]:
        raise ValueError(f"d_model ({cfg['d_model']}) must be a multiple of num_heads ({cfg['num_heads']})")
    dropout = cfg["dropout"]
    if not (isinstance(dropout, int | float) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    scale = cfg["extent_scale"]
    if not (isinstance(scale, int | float) and not isinstance(scale, bool) and 0 < scale < math.inf):
        raise ValueError(f"extent_scale must be a finite number > 0, got {scale!r}")
    for key in ("pretrained", "use_fused_kernels", "frozen_backbone"):
        if not (isinstance(cfg[key], bool) or (key == "frozen_backbone" and cfg[key] is None)):
            raise ValueError(f"{key} must be true or false, got {cfg[key]!r}")


def build_model(name: str = "jcra_r50", **overrides) -> JCRA:
    """Build a named configuration (``jcra_r50``, ``jcra_r18``, ``jcra_swinl``, ``jcra_tiny``).

    overrides: any configuration key, e.g. ``num_keypoints=14`` (CrowdPose), ``pretrained=True``
    (ImageNet backbone weights through torchvision or timm), ``frozen_backbone=True`` (a ResNet in the
    ImageNet-weights layout without the weights: :func:`jcra.backbone.resnet`'s ``frozen``),
    ``use_fused_kernels=False``.
    """
    if name not in CONFIGS:
        raise ValueError(f"name must be one of {sorted(CONFIGS)}, got {name!r}")
    cfg = {**_DEFAULTS, **CONFIGS[name]}
    valid = set(cfg) | {"swin_name", "depth", "base_width"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown overrides {unknown}; valid keys: {sorted(valid)}")
    cfg.update(overrides)
    _check_config(cfg)
    if cfg["backbone"] == "swin":
        backbone: nn.Module = SwinBackbone(cfg["swin_name"], pretrained=cfg["pretrained"])
    else:
        backbone = resnet(cfg["depth"], cfg["base_width"], cfg["pretrained"], cfg["frozen_backbone"])
    d, k, levels, dropout = cfg["d_model"], cfg["num_keypoints"], cfg["num_levels"], cfg["dropout"]
    # the neck reads C3-C5; C2 (stride 4) feeds the keypoint heads through JCRA.detail_proj
    neck = MultiScaleNeck(backbone.out_channels[1:], backbone.strides[1:], d, levels)
    encoder = DeformableEncoder(
        d, cfg["enc_layers"], cfg["num_heads"], levels, cfg["num_points"], cfg["ffn_dim"], dropout
    )
    decoder = PoseDecoder(
        d, k, cfg["dec_layers"], cfg["num_heads"], levels, cfg["ffn_dim"], dropout, cfg["extent_scale"]
    )
    return JCRA(backbone, neck, encoder, decoder, k, cfg["num_queries"], cfg["use_fused_kernels"])
