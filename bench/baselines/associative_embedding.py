"""Associative embedding (Newell et al. 2017) as HigherHRNet (Cheng et al. 2020) decodes it.

The network gives K keypoint heatmaps and K one-dimensional tag maps at stride 4. Post-processing
upsamples both to the image (HigherHRNet's ``PROJECT2IMAGE``), then: max-pool NMS on the heatmaps,
top-k peaks per joint, then joints are grouped into people one joint type at a time in a fixed
order: each new joint's peaks are assigned to the people found so far by a
Hungarian assignment (scipy) on the cost ``round(tag distance) * 100 - heatmap score``, a peak whose tag
is farther than ``tag_threshold`` from every person starts a new one. Last, refinement fills each
person's missing joints at the heatmap location whose tag best matches the person's mean tag, and
every keypoint moves a quarter pixel towards its higher neighbour. Tags may be vectors: flip testing
(:mod:`bench.baselines.flip_test`) gives each pixel two, the image's and the mirrored image's, and
distances between tags are then Euclidean, as in HigherHRNet.

Deviations from HigherHRNet's test code (``lib/core/group.py`` and ``inference.py``, COCO settings), each
with the way it moves this baseline's time against the published one's:

- faster: the network stops at stride 4, without HigherHRNet's deconvolution to stride-2 heatmaps.
  The post-processing then does HigherHRNet's work: the maps upsampled to the image, NMS, top-k and
  refinement on image pixels. The upsampling keeps each map pixel on the image pixel it was rendered
  at (``align_corners=True``) and stops at the last one (the last ``stride - 1`` rows and columns of
  the image are left out, where a repeated edge would give equal peaks), where HigherHRNet resizes to
  the whole input with ``align_corners=False``: the same work within those rows and columns.
- faster: the assignment is scipy's compiled ``linear_sum_assignment``, where ``py_max_match`` runs
  the pure-Python ``munkres`` package, once per joint type.
- faster: the quarter-pixel adjustment and the refinement run on the maps' device, for all people
  and joints at once (the refinement's missing joints a chunk at a time), after one copy of the peaks
  to the host. HigherHRNet's ``adjust`` loops in Python
  over people and joints comparing heatmap values one at a time (each a device-to-host read when the
  maps are on the GPU), and ``parse`` copies the heatmaps and tags to the host
  (``det[0].cpu().numpy()``) once per person before ``refine`` loops over its joints.
- slower, slightly: each joint's peaks are matched against every person found so far, where
  HigherHRNet matches against the first ``max_num_people`` (30) only; it shows past 30 people.
- slower, slightly: the crowd suites keep up to 100 peaks per joint (``bench.profiling.PEOPLE_KEPT``,
  JCRA's top-k) where HigherHRNet's COCO setting keeps 30, so that a crowd of 50 can be found at all.
- no direction claimed: the suite's network is a ResNet-50 (JCRA's backbone), HigherHRNet's an HRNet.

On maps with per-pixel noise, NMS over 5 image pixels (a map pixel and a quarter) keeps two
diagonal neighbours of a peak as two peaks when they stand above the other two; the lower starts a
one-joint person scored about 1/17, as HigherHRNet's decoding would on such maps, and refinement then
searches the map for its 16 missing joints. Flip-tested, the mirror's peaks (not shifted back onto the
image's cells) add more: at 800x1333 a crowd of 50 decodes to 59 people, 83 flip-tested (AP 0.986 and
1.0), where smooth errors of a trained network would give fewer; a cost to this baseline's time.

Without effect on time: people are kept in a list where HigherHRNet keys a dict by their first tag
value (two equal tags would merge them); keypoints stay on the maps' grid (:mod:`bench.baselines.render`)
where HigherHRNet adds half a pixel; a peak between equal neighbours is not shifted, where HigherHRNet
shifts it by -0.25. Flip testing is :mod:`bench.baselines.flip_test`'s (the image and its mirror in one
batch: faster).
"""

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

# HigherHRNet's grouping order for COCO: head, shoulders, hips, then limbs outward.
COCO_JOINT_ORDER = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)


def fp32_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` in fp32, outside autocast: a head's maps leave the network in fp32, as JCRA's scores
    and keypoints do. In bf16 (8 bits of mantissa) neighbouring heat values tie, and each tie that
    upsampling spreads into a plateau is a peak: associative embedding found 130 people in a crowd of
    50 from bf16 maps, 59 from fp32 ones."""
    device = x.device.type
    # meta tensors (bench.model_size counts FLOPs on them) have no autocast to leave. A string test,
    # since torch.compile cannot trace torch.amp.is_autocast_available (the crowd suite compiles this)
    with torch.autocast(device, enabled=False) if device != "meta" else nullcontext():
        return conv(x.float())


class StrideFourHead(nn.Module):
    """Backbone feature map upsampled to stride 4 by deconvolutions, then a 1x1 conv to ``out_channels``
    (in fp32: :func:`fp32_conv`).

    ``backbone`` maps images [B, 3, H, W] to a feature map [B, in_channels, H / s, W / s] with
    ``s = feature_stride`` (a list or tuple of maps, such as ResNet's C2-C5, is indexed by
    ``feature_index``). Output: [B, out_channels, H / 4, W / 4], fp32.
    """

    def __init__(
        self,
        backbone: nn.Module,
        in_channels: int,
        feature_stride: int,
        out_channels: int,
        hidden: int = 256,
        feature_index: int = -1,
    ):
        super().__init__()
        if feature_stride < 4 or feature_stride & (feature_stride - 1):
            raise ValueError(f"feature_stride must be a power of two >= 4, got {feature_stride}")
        self.backbone, self.feature_index = backbone, feature_index
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 1)]
        # One 4x4 stride-2 deconvolution per factor of two, as HigherHRNet's deconv module does.
        for _ in range(int(math.log2(feature_stride // 4))):
            layers += [
                nn.ConvTranspose2d(hidden, hidden, 4, 2, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
            ]
        layers += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Stride-4 features [B, hidden, H / 4, W / 4]."""
        feats = self.backbone(images)
        if isinstance(feats, (list, tuple)):
            feats = feats[self.feature_index]
        return self.trunk(feats)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return fp32_conv(self.out, self.features(images))


class AssociativeEmbeddingHead(StrideFourHead):
    """Heatmaps and tag maps at stride 4: ``forward(images) -> (heatmaps, tags)``, each [B, K, H/4, W/4]."""

    def __init__(
        self, backbone: nn.Module, in_channels: int, feature_stride: int, num_keypoints: int = 17, **kw
    ):
        super().__init__(backbone, in_channels, feature_stride, 2 * num_keypoints, **kw)
        self.num_keypoints = num_keypoints

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().forward(images)
        return out[:, : self.num_keypoints].sigmoid(), out[:, self.num_keypoints :]


def peak_nms(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Zero every value of ``maps`` [C, h, w] that is not the maximum of its ``kernel`` window."""
    pooled = F.max_pool2d(maps[None], kernel, 1, kernel // 2)[0]
    return maps * (pooled == maps)


def up_interpolate(maps: torch.Tensor, stride: int, pad_edge: bool = True) -> torch.Tensor:
    """Maps [C, h, w] upsampled to the image: map pixel (i, j) lands on image pixel (stride * i,
    stride * j), where the maps are rendered (``align_corners=True``). With ``pad_edge`` the last
    ``stride - 1`` rows and columns repeat the edge, to [C, stride * h, stride * w] (DEKR's
    ``up_interpolate``); without, the maps end at the last map pixel, [C, stride * (h - 1) + 1, ...]."""
    _, h, w = maps.shape
    size = (stride * (h - 1) + 1, stride * (w - 1) + 1)
    inner = F.interpolate(maps[None], size, mode="bilinear", align_corners=True)[0]
    return F.pad(inner[None], (0, stride - 1, 0, stride - 1), mode="replicate")[0] if pad_edge else inner


def _quarter_offset(heatmaps: torch.Tensor, k: torch.Tensor, y: torch.Tensor, x: torch.Tensor):
    """Quarter-pixel shift of integer peaks (y, x) on heatmaps[k] towards the higher neighbour: (dx, dy)."""
    _, h, w = heatmaps.shape

    def at(yy, xx):
        return heatmaps[k, yy.clamp(0, h - 1), xx.clamp(0, w - 1)]

    dx = 0.25 * torch.sign(at(y, x + 1) - at(y, x - 1))
    dy = 0.25 * torch.sign(at(y + 1, x) - at(y - 1, x))
    return dx, dy


def _group(vals: np.ndarray, tags: np.ndarray, xy: np.ndarray, order, threshold: float, tag_threshold: float):
    """Greedy-in-joint-order Hungarian grouping of peaks into people.

    vals [K, M]; tags [K, M, T]; xy [K, M, 2]. Returns people [P, K, 3 + T] (x, y, score, tag; score 0
    when the joint is missing).
    """
    k_joints, tag_dim = vals.shape[0], tags.shape[-1]
    people: list[np.ndarray] = []
    tag_sums: list[list[np.ndarray]] = []
    for k in order:
        keep = vals[k] > threshold
        v, t, p = vals[k][keep], tags[k][keep], xy[k][keep]
        if v.size == 0:
            continue
        new = np.arange(v.size)
        if people:
            means = np.array([np.mean(s, 0) for s in tag_sums])  # [P, T]
            dist = np.linalg.norm(t[:, None] - means[None, :], axis=-1)
            cost = np.round(dist) * 100 - v[:, None]
            # Extra columns with a prohibitive cost let surplus peaks stay unassigned.
            if v.size > len(people):
                cost = np.concatenate([cost, np.full((v.size, v.size - len(people)), 1e10)], 1)
            rows, cols = linear_sum_assignment(cost)
            assigned = [
                (r, c)
                for r, c in zip(rows, cols, strict=True)
                if c < len(people) and dist[r, c] < tag_threshold
            ]
            for r, c in assigned:
                people[c][k] = np.concatenate([p[r], v[r, None], t[r]])
                tag_sums[c].append(t[r])
            new = np.setdiff1d(new, [r for r, _ in assigned])
        for r in new:
            person = np.zeros((k_joints, 3 + tag_dim))
            person[k] = np.concatenate([p[r], v[r, None], t[r]])
            people.append(person)
            tag_sums.append([t[r]])
    return np.stack(people) if people else np.zeros((0, k_joints, 3 + tag_dim))


def decode_associative_embedding(
    heatmaps: torch.Tensor,
    tags: torch.Tensor,
    stride: int = 4,
    max_people: int = 30,
    detection_threshold: float = 0.1,
    tag_threshold: float = 1.0,
    nms_kernel: int = 5,
    joint_order: tuple[int, ...] | None = None,
    project_to_image: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """People from one image's maps: heatmaps [K, h, w], tags [K, h, w] or [K, h, w, T] -> poses
    [P, K, 3], scores [P].

    Poses are ``(x, y, score)`` in image pixels; a person's score is the mean heatmap value of its
    joints. HigherHRNet's COCO test settings: the maps are first upsampled to the image
    (``project_to_image``, :func:`up_interpolate`), where NMS, top-k, grouping and refinement run;
    at most ``max_people`` peaks per joint are considered. Without the projection every step runs on
    the stride-``stride`` maps and the poses are scaled by ``stride`` at the end.
    """
    if heatmaps.dim() != 3 or tags.shape[:3] != heatmaps.shape or tags.dim() not in (3, 4):
        raise ValueError(
            f"heatmaps must be [K, h, w] and tags [K, h, w] or [K, h, w, T], "
            f"got {heatmaps.shape}, {tags.shape}"
        )
    k_joints = heatmaps.shape[0]
    order = (
        joint_order if joint_order is not None else COCO_JOINT_ORDER if k_joints == 17 else range(k_joints)
    )
    heatmaps = heatmaps.float()
    # Tag dimension first, [T, K, h, w]: distances then sum whole maps, not a short inner dimension.
    tags = (tags if tags.dim() == 4 else tags[..., None]).permute(3, 0, 1, 2).float()
    if project_to_image:
        # No repeated edge: equal values there would all be peaks, each a person's duplicate joint.
        heatmaps = up_interpolate(heatmaps, stride, pad_edge=False)
        tags = up_interpolate(tags.flatten(0, 1), stride, pad_edge=False).view(-1, *heatmaps.shape)
    _, h, w = heatmaps.shape
    vals, idx = peak_nms(heatmaps, nms_kernel).flatten(1).topk(min(max_people, h * w), dim=1)
    peak_tags = tags.flatten(2).gather(2, idx.expand(tags.shape[0], -1, -1)).permute(1, 2, 0)
    xy = torch.stack([idx % w, idx // w], -1)
    # One copy to host: the grouping is sequential and runs in scipy, as in the published code.
    vals_np, tags_np, xy_np = (t.cpu().numpy() for t in (vals, peak_tags, xy))
    people = torch.from_numpy(_group(vals_np, tags_np, xy_np, order, detection_threshold, tag_threshold))
    people = people.to(heatmaps.device, torch.float32)
    if people.shape[0] == 0:
        return heatmaps.new_zeros(0, k_joints, 3), heatmaps.new_zeros(0)
    return _refine(heatmaps, tags, people, 1 if project_to_image else stride)


REFINE_CHUNK_VALUES = {"cuda": 1 << 24, "cpu": 1 << 20}
"""Tag values one step of the refinement reads at most, by device type: it fills missing joints a
chunk at a time, as each needs a full-map distance. 64 MiB of fp32 on a GPU keeps launches few; 4 MiB
on the CPU stays in cache (a crowd of 20 at 512x768 decodes 3x faster than with 64 MiB there)."""


def _refine(heatmaps: torch.Tensor, tags: torch.Tensor, people: torch.Tensor, stride: int):
    """Fill missing joints where ``heat - round(|tag - person tag|)`` peaks, quarter-pixel adjust, scale.

    heatmaps [K, h, w]; tags [T, K, h, w]; people [P, K, 3 + T] from :func:`_group`. As HigherHRNet's
    ``refine``, only the joints a person lacks are searched, each over the whole map, and one is filled
    only where the heat there is above 0.
    """
    k_joints, h, w = heatmaps.shape
    found = people[..., 2] > 0  # [P, K]
    mean_tag = (people[..., 3:] * found[..., None]).sum(1) / found.sum(1)[:, None]  # [P, T]
    x, y, score = people[..., 0].clone(), people[..., 1].clone(), people[..., 2].clone()
    chunk = max(
        1, REFINE_CHUNK_VALUES.get(tags.device.type, REFINE_CHUNK_VALUES["cpu"]) // tags[:, 0].numel()
    )
    for pairs in (~found).nonzero().split(chunk):
        p, k = pairs.unbind(1)
        distance = (tags[:, k] - mean_tag[p].T[..., None, None]).square().sum(0).sqrt()  # [n, h, w]
        best = (heatmaps[k] - distance.round()).flatten(1).argmax(1)
        value = heatmaps[k].flatten(1).gather(1, best[:, None])[:, 0]
        # as HigherHRNet's refine: a joint found where the heat is 0 stays missing
        x[p, k] = torch.where(value > 0, (best % w).float(), x[p, k])
        y[p, k] = torch.where(value > 0, (best // w).float(), y[p, k])
        score[p, k] = value
    k = torch.arange(k_joints, device=heatmaps.device).expand_as(found)
    dx, dy = _quarter_offset(heatmaps, k, y.long(), x.long())
    poses = torch.stack([(x + dx) * stride, (y + dy) * stride, score], -1)
    return poses, people[..., 2].sum(1) / k_joints
