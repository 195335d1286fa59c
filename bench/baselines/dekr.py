"""DEKR (Geng et al. 2021): disentangled keypoint regression from person centres.

The network gives K + 1 heatmaps at stride 4 (the K keypoints and the person centre, the mean of the
labelled keypoints) and 2K offset channels: at each pixel, the displacement to each keypoint of the
person centred there, regressed by one branch per keypoint (grouped convolutions here). Post-processing
follows HRNet/DEKR's test code (``lib/core/inference.py``, ``nms.py``; COCO settings): max-pool NMS
on the centre heatmap, the top centres above a threshold, the offsets read at each centre give a pose,
each joint scored by its centre's value times the keypoint heatmap (upsampled to the image) there, then
DEKR's cluster pose NMS, which keeps each cluster's pose of the best mean keypoint heat. Flip
testing merges the maps before decoding (:mod:`bench.baselines.flip_test`: the network sees the
image and its mirror as one batch, where DEKR runs it twice: faster).

Deviations from DEKR's code (``lib/models/hrnet_dekr.py``, ``lib/core/inference.py``, ``nms.py``; the
COCO W32 settings), each with the way it moves this baseline's time against the published one's:

- faster: the offset regression is one grouped 3x3 and one grouped 1x1 convolution over all K joints,
  where DEKR runs, joint by joint in a Python loop, two adaptive-convolution blocks (a deformable 3x3
  convolution sampling where a per-pixel affine transform points, batch norm, a residual) and a 1x1
  convolution: fewer layers, no deformable sampling, one launch a layer instead of K.
- faster: the heatmaps are one 1x1 convolution of the shared stride-4 features, where DEKR's heatmap
  branch has its own transition and residual block.
- faster: offsets are read at the kept centres only, where DEKR's ``offset_to_pose`` first turns
  every pixel's offsets into a pose (flip-tested, both passes'); only the K keypoint heatmaps are
  upsampled to the image (DEKR: the centre's too).
- faster: pose NMS builds the clusters on the device and copies the cluster matrix and the heat
  scores to the host once each for the walk, where DEKR's ``nms_core`` copies each pose's cluster
  (``.nonzero().cpu()``) and picks its best heat on the device inside the walk: syncs at every pose.
- faster: no rescoring net (it needs training), which DEKR's COCO setting (``RESCORE.VALID``) runs.
- slower, slightly: the crowd suites keep up to 100 centres (``bench.profiling.PEOPLE_KEPT``, JCRA's top-k)
  where DEKR's COCO setting keeps 30, so that a crowd of 50 can be found at all.
- no direction claimed: the suite's network is a ResNet-50 (JCRA's backbone), DEKR's an HRNet-W32.
"""

import numpy as np
import torch
from torch import nn

from bench.baselines.associative_embedding import StrideFourHead, fp32_conv, peak_nms, up_interpolate

CENTRE_THRESHOLD = 0.01
"""DEKR's COCO test threshold on the centre heatmap: a peak above it is a person's centre."""


class DEKRHead(StrideFourHead):
    """``forward(images) -> (heatmaps [B, K + 1, H/4, W/4], offsets [B, 2K, H/4, W/4])``.

    Offsets are in map pixels, channels ``2k, 2k + 1`` the x, y of joint k; ``per_joint`` channels per
    keypoint in the regression branch (DEKR uses 15). Both maps in fp32 (:func:`fp32_conv`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        in_channels: int,
        feature_stride: int,
        num_keypoints: int = 17,
        per_joint: int = 15,
        **kw,
    ):
        super().__init__(backbone, in_channels, feature_stride, num_keypoints + 1, **kw)
        hidden = self.out.in_channels
        width = num_keypoints * per_joint
        # Disentangled regression: each keypoint has its own branch, i.e. groups=K after a shared split.
        self.offset_branch = nn.Sequential(
            nn.Conv2d(hidden, width, 1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, groups=num_keypoints),
            nn.ReLU(),
            nn.Conv2d(width, 2 * num_keypoints, 1, groups=num_keypoints),
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(images)
        offsets = fp32_conv(self.offset_branch[-1], self.offset_branch[:-1](feats))
        return fp32_conv(self.out, feats).sigmoid(), offsets


def pose_nms(poses: torch.Tensor, heat_scores: torch.Tensor, distance: float, more_than: int) -> torch.Tensor:
    """DEKR's pose NMS: indices of the poses kept, in the order they are decided.

    poses [P, K, 2+] in image pixels, in centre-score order; heat_scores [P] each pose's mean keypoint
    heat at its joints. Pose j is in pose i's cluster when more than ``more_than`` of j's joints lie
    within ``distance`` times the diagonal of i's joint extent of i's. In order, each pose not yet
    clustered keeps the best heat score of its cluster (unless that one is already clustered), and
    clusters them all. The clusters are built on the device and copied to the host once, with the
    heat scores, for the walk (DEKR copies each pose's cluster inside the walk).
    """
    xy = poses[..., :2].float()
    diagonal = (xy.amax(1) - xy.amin(1)).norm(dim=-1)  # sqrt(w^2 + h^2)
    close = (xy[:, None] - xy[None]).norm(dim=-1) < distance * diagonal[:, None, None]
    cluster = (close.sum(-1) > more_than).cpu().numpy()
    heat = heat_scores.cpu().numpy()
    clustered, keep = set(), []
    for i in range(len(cluster)):
        members = np.flatnonzero(cluster[i])
        if i in clustered or len(members) == 0:  # a pose of zero extent has no cluster, not even itself
            continue
        best = int(members[heat[members].argmax()])
        if best not in clustered:
            keep.append(best)
            clustered.update(members.tolist())
    return torch.tensor(keep, dtype=torch.int64, device=poses.device)


def centre_peaks(centre: torch.Tensor, max_people: int, threshold: float) -> tuple[torch.Tensor, ...]:
    """The centres DEKR decodes from a centre heatmap [1, h, w]: values [P] and flat indices [P] of its
    top ``max_people`` peaks above ``threshold``, peaks by a max pool of 3, 5 or 7 as the map's mean side
    passes 200 and 300 (DEKR's COCO test)."""
    h, w = centre.shape[-2:]
    side = (h + w) / 2
    kernel = 7 if side > 300 else 5 if side > 200 else 3
    vals, idx = peak_nms(centre, kernel).flatten().topk(min(max_people, h * w))
    keep = vals > threshold
    return vals[keep], idx[keep]


def decode_dekr(
    heatmaps: torch.Tensor,
    offsets: torch.Tensor,
    stride: int = 4,
    max_people: int = 30,
    centre_threshold: float = CENTRE_THRESHOLD,
    nms_distance: float = 0.05,
    nms_joints: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """People from one image: heatmaps [K + 1, h, w], offsets [2K, h, w] -> poses [P, K, 3], scores [P].

    Poses are ``(x, y, score)`` in image pixels, a joint's score its centre's times the keypoint heat
    there. DEKR's COCO test settings: the centres of :func:`centre_peaks` (above 0.01); keypoint heat
    read on the heatmaps upsampled to the image (the pixel below each joint); pose NMS at 0.05 of the
    pose's diagonal when more than ``nms_joints`` joints agree (DEKR's 8 for K = 17, scaled with K
    otherwise), so at most ``max_people`` poses. A pose's score is the mean of its joints'.
    """
    if heatmaps.dim() != 3 or offsets.shape != (2 * (heatmaps.shape[0] - 1), *heatmaps.shape[1:]):
        raise ValueError(
            f"heatmaps must be [K + 1, h, w], offsets [2K, h, w]; got {heatmaps.shape}, {offsets.shape}"
        )
    k_joints = heatmaps.shape[0] - 1
    _, h, w = heatmaps.shape
    heatmaps, offsets = heatmaps.float(), offsets.float()
    centre = heatmaps[k_joints:]
    vals, idx = centre_peaks(centre, max_people, centre_threshold)
    cx, cy = (idx % w).float(), (idx // w).float()
    displacement = offsets.flatten(1)[:, idx].T.view(-1, k_joints, 2)  # [P, K, 2]
    xy = (displacement + torch.stack([cx, cy], -1)[:, None]) * stride  # image pixels
    image_heat = up_interpolate(heatmaps[:k_joints], stride)
    col = xy[..., 0].floor().clamp(0, w * stride - 1).long()
    row = xy[..., 1].floor().clamp(0, h * stride - 1).long()
    heat = image_heat.flatten(1).gather(1, (row * w * stride + col).T).T  # [P, K]
    joint_scores = vals[:, None] * heat
    poses = torch.cat([xy, joint_scores[..., None]], -1)
    if poses.shape[0] == 0:
        return poses, joint_scores.mean(1)
    more_than = nms_joints if nms_joints is not None else round(8 * k_joints / 17)
    heat_scores = heat.mean(1)
    kept = pose_nms(poses, heat_scores, nms_distance, more_than)
    return poses[kept], joint_scores[kept].mean(1)
