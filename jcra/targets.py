"""A batch's ground-truth people padded into dense tensors on the model's device, in one copy.

The matcher and the losses read the people of every image at once. Padding them where the data
pipeline leaves them (the host) and moving one buffer costs one asynchronous copy a step, where
per-image tensors would cost a copy, and a handful of small device ops, per image and field.
"""

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from kernels.dispatch import to_device


@dataclass(frozen=True, eq=False)
class PaddedTargets:
    """The non-crowd people of B images padded to the batch's largest count G.

    keypoints ``[B, G, K, 3]`` (x, y, v) and area ``[B, G]`` fp32, in the units the targets were given
    in (pixels, or see :meth:`normalised`); size ``[B, 2]`` (w, h) in pixels, fp32; boxes ``[B, G, 4]``
    (x0, y0, x1, y1, the units of the keypoints) when every target holds ``boxes``, else None. Padding
    has v = 0, area 0 and an empty box at 0. counts: the people of each image (host ints). kept: per
    image, the indices (int64, CPU) of its people among the targets as given, None when it has no
    crowd entry (then they are all kept, in order).
    """

    keypoints: Tensor
    area: Tensor
    size: Tensor
    counts: list[int]
    kept: list[Tensor | None]
    boxes: Tensor | None = None

    def normalised(self) -> "PaddedTargets":
        """Pixel targets as the model predicts them: x, y in ``[0, 1]`` of the unpadded image, area
        divided by ``w * h``."""
        w, h = self.size.unbind(-1)  # [B]
        scale = torch.stack([w, h, torch.ones_like(w)], -1)[:, None, None]  # [B, 1, 1, 3]
        boxes = None if self.boxes is None else self.boxes / torch.stack([w, h, w, h], -1)[:, None]
        return replace(self, keypoints=self.keypoints / scale, area=self.area / (w * h)[:, None], boxes=boxes)


def pad_targets(targets: list[dict], num_keypoints: int, device: torch.device | str) -> PaddedTargets:
    """Pad the targets' non-crowd people and move them to ``device`` with one copy.

    targets: one dict per image with "keypoints" ``[G_b, K, 3]``, "area" ``[G_b]``, "size" ``[2]``
    (h, w) in pixels and optionally "boxes" ``[G_b, 4]`` and "iscrowd" ``[G_b]`` (crowd entries are
    dropped; the flags are read on the host, free when they are CPU tensors as the data pipeline gives
    them). The padded buffer is filled where the targets lie, then copied; from the host that copy does
    not synchronise.
    """
    k, device = num_keypoints, torch.device(device)
    if not targets:
        return PaddedTargets(**_fields(torch.zeros(0, device=device), 0, 0, k, False), counts=[], kept=[])
    kept = [_kept(target, k, b) for b, target in enumerate(targets)]
    with_boxes = all("boxes" in target for target in targets)
    names = ("keypoints", "area", "boxes") if with_boxes else ("keypoints", "area")
    groups: list[list[Tensor]] = [[] for _ in names]
    for target, idx in zip(targets, kept, strict=True):
        for group, name in zip(groups, names, strict=True):
            value = target[name]
            group.append((value if idx is None else value[to_device(idx, value.device)]).float())
    groups.append([target["size"] for target in targets])
    if len({t.device for group in groups for t in group}) > 1:
        groups = [[to_device(t, device) for t in group] for group in groups]
    # padding: v = 0, area 0, boxes 0
    fields = [pad_sequence(group, batch_first=True) for group in groups[:-1]]
    fields.append(torch.stack(groups[-1]).flip(-1).float())
    source = fields[0].device
    # filled in pinned memory, which to_device then copies from without a staging copy
    pinned = source.type == "cpu" and device.type == "cuda"
    numel = sum(f.numel() for f in fields)
    buffer = torch.empty(numel, dtype=torch.float32, device=source, pin_memory=pinned)
    torch.cat([f.reshape(-1) for f in fields], out=buffer)
    b, g = fields[1].shape
    counts = [len(area) for area in groups[1]]
    return PaddedTargets(**_fields(to_device(buffer, device), b, g, k, with_boxes), counts=counts, kept=kept)


def _fields(buffer: Tensor, b: int, g: int, k: int, with_boxes: bool) -> dict[str, Tensor | None]:
    """Views of a flat buffer as keypoints ``[B, G, K, 3]``, area ``[B, G]``, then boxes ``[B, G, 4]``
    when ``with_boxes`` (else None), then size ``[B, 2]``."""
    sizes = [b * g * k * 3, b * g, b * g * 4 * with_boxes, b * 2]
    keypoints, area, boxes, size = buffer.split(sizes)
    return {
        "keypoints": keypoints.view(b, g, k, 3),
        "area": area.view(b, g),
        "boxes": boxes.view(b, g, 4) if with_boxes else None,
        "size": size.view(b, 2),
    }


def _kept(target: dict, k: int, b: int) -> Tensor | None:
    """Indices (int64, CPU) of the image's non-crowd people, None when it has no crowd entry, after
    checking the target's fields."""
    for name in ("keypoints", "area", "size"):
        if name not in target:
            raise ValueError(f"targets[{b}] must hold '{name}'")
    kpts, area, size = target["keypoints"], target["area"], target["size"]
    if kpts.dim() != 3 or kpts.shape[1:] != (k, 3):
        raise ValueError(f"targets[{b}]['keypoints'] must be [G, K={k}, 3], got {tuple(kpts.shape)}")
    g = kpts.shape[0]
    if tuple(area.shape) != (g,):
        raise ValueError(f"targets[{b}]['area'] must be [G={g}], got {tuple(area.shape)}")
    if tuple(size.shape) != (2,):
        raise ValueError(f"targets[{b}]['size'] must be [2] (h, w) in pixels, got {tuple(size.shape)}")
    if "boxes" in target and tuple(target["boxes"].shape) != (g, 4):
        raise ValueError(f"targets[{b}]['boxes'] must be [G={g}, 4], got {tuple(target['boxes'].shape)}")
    if "iscrowd" not in target:
        return None
    crowd = target["iscrowd"].cpu().reshape(-1)
    if crowd.shape[0] != g:
        raise ValueError(f"targets[{b}]['iscrowd'] must be [G={g}], got {tuple(crowd.shape)}")
    return None if not crowd.any() else torch.nonzero(crowd == 0).reshape(-1)
