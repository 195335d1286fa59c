"""Parameters and FLOPs of a JCRA configuration at one input size (default: R-50 at 800 x 1333), and
of the bottom-up baselines' networks on the same ResNet-50 (``bench/baselines``).

    python -m bench.model_size [--name jcra_r50] [--height 800] [--width 1333]

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors (no compute, no memory),
counting a multiply-add as 2 FLOPs. The counter does not see deformable attention's sampling
(``grid_sample`` in the reference path, the fused op on GPUs); it is added analytically: per query,
head, level and point, bilinear interpolation of D channels (4 corners x multiply-add) plus the
attention-weighted sum (multiply-add), 10 * D FLOPs; the decoder's keypoint heads add 8 FLOPs per
channel, keypoint and query (a bilinear sample of each local map at each keypoint). Papers in this
field (PETR included) report mmcv's count, which counts a multiply-add once: compare their "GFLOPs"
with the GMACs column.
"""

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.baselines.associative_embedding import AssociativeEmbeddingHead
from bench.baselines.dekr import DEKRHead
from jcra import build_model
from jcra.backbone import resnet
from jcra.decoder import LocalKeypointHead
from jcra.deformable_attention import MSDeformAttn


def sampling_flops(model, height: int, width: int) -> dict[str, int]:
    """Bilinear sampling FLOPs per part (encoder, decoder) for one image."""
    strides = model.neck.strides
    tokens = sum(-(-height // s) * -(-width // s) for s in strides)

    def per_query(attn: MSDeformAttn) -> int:
        head_dim = attn.embed_dim // attn.num_heads
        return 10 * head_dim * attn.num_heads * attn.num_levels * attn.num_points

    encoder = sum(tokens * per_query(m) for m in model.encoder.modules() if isinstance(m, MSDeformAttn))
    decoder = sum(
        model.num_queries * per_query(m) for m in model.decoder.modules() if isinstance(m, MSDeformAttn)
    ) + sum(
        model.num_queries * model.num_keypoints * 8 * m.local_proj.in_features
        for m in model.decoder.modules()
        if isinstance(m, LocalKeypointHead)
    )
    return {"encoder": encoder, "decoder": decoder}


def count_flops(model: torch.nn.Module, height: int, width: int) -> tuple[int, dict[str, int]]:
    """(total FLOPs, {child module: FLOPs}) of one image through ``model`` on the meta device."""
    model = model.to("meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.empty(1, 3, height, width, device="meta"))
    prefix = type(model).__name__ + "."
    children = {
        name[len(prefix) :]: sum(counts.values())
        for name, counts in counter.get_flop_counts().items()
        if name.startswith(prefix) and "." not in name[len(prefix) :]
    }
    return counter.get_total_flops(), children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="jcra_r50")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    args = parser.parse_args()

    model = build_model(args.name, use_fused_kernels=False).eval()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{args.name}: {params / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trainable)")

    total, per_part = count_flops(model, args.height, args.width)
    counted = {
        part: per_part.get(part, 0) for part in ("backbone", "neck", "detail_proj", "encoder", "decoder")
    }
    counted["other"] = total - sum(counted.values())  # the proposal heads and the forward's own ops
    sampled = sampling_flops(model, args.height, args.width)
    total += sum(sampled.values())
    print(f"FLOPs at {args.height}x{args.width}, batch 1 (multiply-add = 2 FLOPs):")
    for part, flops in counted.items():
        extra = sampled.get(part, 0)
        note = f" (incl. {extra / 1e9:.1f} G bilinear sampling)" if extra else ""
        print(f"  {part:11s} {(flops + extra) / 1e9:8.1f} GFLOPs{note}")
    print(f"  total       {total / 1e9:8.1f} GFLOPs = {total / 2e9:.1f} GMACs")
    print("bottom-up networks on the same ResNet-50 (no sampling to add):")
    for head in (AssociativeEmbeddingHead, DEKRHead):
        backbone = resnet(50, frozen=True)
        network = head(backbone, backbone.out_channels[-1], feature_stride=32).eval()
        flops, parts = count_flops(network, args.height, args.width)
        split = " + ".join(f"{name} {value / 1e9:.1f}" for name, value in parts.items())
        print(f"  {head.__name__:24s} {flops / 1e9:8.1f} GFLOPs = {split}")


if __name__ == "__main__":
    main()
