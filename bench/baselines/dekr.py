"""DEKR (Geng et al. 2021): disentangled keypoint regression from person centres.

The network gives K + 1 heatmaps at stride 4 (the K keypoints and the person centre, the mean of the
labelled keypoints) and 2K offset channels: at each pixel, the displacement to each keypoint of the
person centred there, regressed by one branch per keypoint (grouped convolutions here). Post-processing:
max-pool NMS on the centre heatmap, the top centres above a threshold, the offsets read at each centre
give a pose, a pose's score is its centre value times the mean keypoint-heatmap value at its joints,
then pose NMS drops a pose when enough of its joints lie within a fraction of the pose's scale of a
higher-scoring pose's joints. DEKR's learned rescoring net is not reproduced (it needs training).
"""

import torch
from torch import nn

from bench.baselines.associative_embedding import StrideFourHead, peak_nms


class DEKRHead(StrideFourHead):
    """``forward(images) -> (heatmaps [B, K + 1, H/4, W/4], offsets [B, 2K, H/4, W/4])``.

    Offsets are in map pixels, channels ``2k, 2k + 1`` the x, y of joint k; ``per_joint`` channels per
    keypoint in the regression branch (DEKR uses 15).
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
        return self.out(feats).sigmoid(), self.offset_branch(feats)


def _bilinear(maps: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """maps [K, h, w] sampled at xy [P, K, 2] (map pixels, pixel centres on integers): [P, K]."""
    k, h, w = maps.shape
    grid = torch.stack([xy[..., 0] / max(w - 1, 1), xy[..., 1] / max(h - 1, 1)], -1) * 2 - 1
    sampled = nn.functional.grid_sample(maps[:, None], grid.transpose(0, 1)[:, :, None], align_corners=True)
    return sampled[:, 0, :, 0].transpose(0, 1)


def pose_nms(
    poses: torch.Tensor, scores: torch.Tensor, areas: torch.Tensor, distance: float, min_joints: int
):
    """Indices of the poses kept by greedy pose NMS, best score first.

    poses [P, K, 2+], scores [P], areas [P] (pixels^2). Pose j is suppressed by a kept, better pose i
    when at least ``min_joints`` joints of j lie within ``distance * sqrt(area_i)`` of i's.
    """
    order = scores.argsort(descending=True)
    poses, areas = poses[order], areas[order]
    close = (poses[:, None, :, :2] - poses[None, :, :, :2]).norm(dim=-1) < distance * areas.sqrt()[
        :, None, None
    ]
    overlaps = (close.sum(-1) >= min_joints).cpu()
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= ~overlaps[i, i + 1 :]
    return order[keep.to(order.device)]


def decode_dekr(
    heatmaps: torch.Tensor,
    offsets: torch.Tensor,
    stride: int = 4,
    max_people: int = 30,
    centre_threshold: float = 0.1,
    nms_kernel: int = 5,
    nms_distance: float = 0.05,
    nms_joints: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """People from one image: heatmaps [K + 1, h, w], offsets [2K, h, w] -> poses [P, K, 3], scores [P].

    Poses are ``(x, y, score)`` in image pixels. ``nms_joints`` defaults to 30 % of K, rounded up.
    """
    if heatmaps.dim() != 3 or offsets.shape != (2 * (heatmaps.shape[0] - 1), *heatmaps.shape[1:]):
        raise ValueError(
            f"heatmaps must be [K + 1, h, w], offsets [2K, h, w]; got {heatmaps.shape}, {offsets.shape}"
        )
    k_joints = heatmaps.shape[0] - 1
    _, h, w = heatmaps.shape
    heatmaps, offsets = heatmaps.float(), offsets.float()
    centre = heatmaps[k_joints:]
    vals, idx = peak_nms(centre, nms_kernel).flatten().topk(min(max_people, h * w))
    keep = vals > centre_threshold
    vals, idx = vals[keep], idx[keep]
    cx, cy = (idx % w).float(), (idx // w).float()
    displacement = offsets.flatten(1)[:, idx].T.view(-1, k_joints, 2)  # [P, K, 2]
    xy = displacement + torch.stack([cx, cy], -1)[:, None]
    joint_scores = _bilinear(heatmaps[:k_joints], xy)
    scores = vals * joint_scores.mean(1)
    poses = torch.cat([xy * stride, joint_scores[..., None]], -1)
    if poses.shape[0] == 0:
        return poses, scores
    extent = poses[..., :2].amax(1) - poses[..., :2].amin(1)
    areas = extent.clamp(min=1).prod(1)
    min_joints = nms_joints if nms_joints is not None else -(-3 * k_joints // 10)
    kept = pose_nms(poses, scores, areas, nms_distance, min_joints)
    return poses[kept], scores[kept]
