"""Maps a trained bottom-up network would give, rendered from ground-truth poses, and crowd synthesis.

Poses are ``[P, K, 3]`` float tensors in image pixels: ``(x, y, v)`` with COCO visibility ``v`` (0 means
not labelled and is never rendered). Maps are at ``stride`` (4 for both baselines): map pixel ``(i, j)``
covers image point ``(stride * j, stride * i)``.
"""

import json
import math
from pathlib import Path

import torch

from jcra.data.keypoint_layouts import layout_for


def load_people(annotation_file: str | Path, min_keypoints: int = 8) -> list[torch.Tensor]:
    """Each annotated person of a COCO keypoint file with at least ``min_keypoints`` labels, as [K, 3]."""
    annotations = json.loads(Path(annotation_file).read_text())["annotations"]
    return [
        torch.tensor(a["keypoints"], dtype=torch.float32).view(-1, 3)
        for a in annotations
        if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) >= min_keypoints
    ]


def _grid(n: int, height: int, width: int) -> tuple[int, int]:
    """Rows and columns of the grid of at least ``n`` cells whose cells are the most square on a
    ``height x width`` canvas: n squares of side ``s = sqrt(height * width / n)`` would cover it, so
    ``width / s`` to a row, rounded down or up, whichever gives cells of width / height nearer 1."""

    def skew(cols: int) -> float:  # |log(cell width / cell height)|
        return abs(math.log(width / cols * math.ceil(n / cols) / height))

    exact = math.sqrt(n * width / height)
    candidates = {min(n, max(1, c)) for c in (math.floor(exact), math.ceil(exact))}
    cols = min(candidates, key=skew)
    return math.ceil(n / cols), cols


def synthesize_crowd(
    people: list[torch.Tensor], n: int, height: int, width: int, seed: int = 0
) -> torch.Tensor:
    """Paste ``n`` people (drawn from ``people``) into a ``height x width`` canvas: [n, K, 3].

    Each person is scaled to fill 60-90 % of one grid cell and placed at random inside it, so people
    are close but their joints stay apart, as in a dense but resolvable crowd.
    """
    if n < 1 or not people:
        raise ValueError(f"n must be >= 1 and people non-empty, got n={n}, {len(people)} people")
    gen = torch.Generator().manual_seed(seed)
    rows, cols = _grid(n, height, width)
    cell_h, cell_w = height / rows, width / cols
    pick = torch.randint(len(people), (n,), generator=gen)
    crowd = []
    for slot in range(n):
        person = people[int(pick[slot])].clone()
        labelled = person[:, 2] > 0
        xy = person[labelled, :2]
        lo, hi = xy.min(0).values, xy.max(0).values
        extent = (hi - lo).clamp(min=1.0)
        fill = 0.6 + 0.3 * torch.rand((), generator=gen)
        scale = fill * min(cell_w / extent[0], cell_h / extent[1])
        room = torch.tensor([cell_w, cell_h]) - scale * extent
        origin = torch.tensor([slot % cols * cell_w, slot // cols * cell_h])
        origin = origin + room * torch.rand(2, generator=gen)
        person[:, :2] = torch.where(labelled[:, None], (person[:, :2] - lo) * scale + origin, 0.0)
        crowd.append(person)
    return torch.stack(crowd)


# A standing person, (x, y) in units of its height, COCO keypoint order.
_TEMPLATE = torch.tensor(
    [
        [0.00, 0.06], [-0.03, 0.04], [0.03, 0.04], [-0.06, 0.05], [0.06, 0.05],
        [-0.12, 0.20], [0.12, 0.20], [-0.16, 0.36], [0.16, 0.36], [-0.18, 0.50], [0.18, 0.50],
        [-0.08, 0.52], [0.08, 0.52], [-0.09, 0.75], [0.09, 0.75], [-0.10, 0.97], [0.10, 0.97],
    ]
)  # fmt: skip


def random_poses(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Synthetic fallback when no annotations are at hand: ``n`` plausible jittered poses, [n, 17, 3]."""
    gen = torch.Generator().manual_seed(seed)
    people = [
        torch.cat(
            [_TEMPLATE + 0.02 * torch.randn(_TEMPLATE.shape, generator=gen), torch.full((17, 1), 2.0)], 1
        )
        * torch.tensor([100.0, 100.0, 1.0])
        for _ in range(max(n, 4))
    ]
    return synthesize_crowd(people, n, height, width, seed)


def _map_grid(out_hw: tuple[int, int], stride: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-pixel coordinates of map pixel centres: ys [h, 1], xs [1, w]."""
    h, w = out_hw
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] * stride
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :] * stride
    return ys, xs


def _squared_distances(points: torch.Tensor, out_hw, stride: int) -> torch.Tensor:
    """Squared distance (image pixels^2) from each map pixel to ``points`` [..., 3] (x, y, v):
    [..., h, w], infinite where v == 0."""
    ys, xs = _map_grid(out_hw, stride, points.device)
    d2 = (xs - points[..., 0, None, None]) ** 2 + (ys - points[..., 1, None, None]) ** 2
    return torch.where(points[..., 2, None, None] > 0, d2, torch.inf)


def _gaussians(d2: torch.Tensor, stride: int, sigma: float) -> torch.Tensor:
    """Unit-peak Gaussians of ``sigma`` map pixels at squared distances ``d2`` (image pixels^2)."""
    return torch.exp(-d2 / (2 * (sigma * stride) ** 2))


def render_heatmaps(poses: torch.Tensor, out_hw: tuple[int, int], stride: int = 4, sigma: float = 2.0):
    """Keypoint heatmaps [K, h, w]: max over people of a Gaussian (``sigma`` in map pixels) per joint."""
    return _gaussians(_squared_distances(poses.transpose(0, 1), out_hw, stride), stride, sigma).amax(1)


def render_tags(poses: torch.Tensor, out_hw: tuple[int, int], stride: int = 4):
    """Associative-embedding tag maps [K, h, w]: each pixel holds the tag of the person whose joint is
    nearest (by distance, so also far from every joint, where the Gaussians underflow to zero), person
    ``p`` having tag ``p`` (trained tags separate people by about one unit). Where no person has the
    joint labelled the tag is 0."""
    return _squared_distances(poses.transpose(0, 1), out_hw, stride).argmin(1).float()


def pose_centres(poses: torch.Tensor) -> torch.Tensor:
    """Mean of the labelled keypoints of each pose, [P, 2] (DEKR's centre)."""
    labelled = (poses[..., 2:] > 0).float()
    return (poses[..., :2] * labelled).sum(1) / labelled.sum(1).clamp(min=1)


def render_dekr(poses: torch.Tensor, out_hw: tuple[int, int], stride: int = 4, sigma: float = 2.0):
    """DEKR targets: heatmaps [K + 1, h, w] (keypoints, then centre) and offsets [2K, h, w] in map pixels.

    Offsets at a pixel point from it to the keypoints of the person whose centre is nearest (by
    distance, so also far from every centre; channels ``2k, 2k + 1`` are x, y of joint k). A network
    regresses every joint, labelled or not, the same from each pixel of a person: an unlabelled joint
    points at the person's centre (with offset zero, two centres of one person would give two poses
    apart at those joints, which DEKR's pose NMS could then not merge).
    """
    centres = pose_centres(poses)
    labelled = (poses[..., 2] > 0).any(1, keepdim=True).float()
    centre_d2 = _squared_distances(torch.cat([centres, labelled], 1), out_hw, stride)  # [P, h, w]
    centre_g = _gaussians(centre_d2, stride, sigma)
    owner = centre_d2.argmin(0)
    ys, xs = _map_grid(out_hw, stride, poses.device)
    targets = torch.where(poses[..., 2:] > 0, poses[..., :2], centres[:, None])  # [P, K, 2]
    owned = targets[owner]  # [h, w, K, 2]
    offsets = torch.stack([owned[..., 0] - xs[..., None], owned[..., 1] - ys[..., None]], -1) / stride
    offsets = offsets.flatten(2).permute(2, 0, 1)
    heatmaps = torch.cat([render_heatmaps(poses, out_hw, stride, sigma), centre_g.amax(0, keepdim=True)])
    return heatmaps, offsets.contiguous()


def add_false_centres(
    heatmaps: torch.Tensor,
    count: int,
    stride: int = 4,
    sigma: float = 2.0,
    peak: tuple[float, float] = (0.03, 0.1),
    seed: int = 0,
) -> torch.Tensor:
    """DEKR heatmaps [K + 1, h, w] with ``count`` weak centres added to the centre map (the last): Gaussians
    of ``sigma`` map pixels, peaks drawn uniformly from ``peak``, at seeded random places. We assume (no
    trained DEKR's map was at hand to measure) that a trained network's centre map also peaks weakly
    where nobody is centred; DEKR decodes every peak above its 0.01 threshold, up to its cap, into a
    pose that its pose NMS must then merge or keep. ``peak`` lies above that threshold even halved, as
    averaging with a flip-tested mirror's maps halves it."""
    if count < 0 or not 0 < peak[0] <= peak[1]:
        raise ValueError(f"count must be >= 0 and 0 < peak[0] <= peak[1], got count={count}, peak={peak}")
    gen = torch.Generator().manual_seed(seed)
    h, w = heatmaps.shape[-2:]
    places = torch.rand(count, 2, generator=gen) * torch.tensor([w - 1.0, h - 1.0]) * stride
    heights = peak[0] + (peak[1] - peak[0]) * torch.rand(count, 1, 1, generator=gen)
    points = torch.cat([places, torch.ones(count, 1)], 1).to(heatmaps.device)
    bumps = heights.to(heatmaps.device) * _gaussians(
        _squared_distances(points, (h, w), stride), stride, sigma
    )
    out = heatmaps.clone()
    out[-1] = torch.cat([out[-1:], bumps]).amax(0)
    return out


def mirror_poses(poses: torch.Tensor, map_width: int, stride: int = 4) -> torch.Tensor:
    """The poses [P, K, 3] as a mirrored image shows them: x reflected so that a joint on map column j
    lands on column ``map_width - 1 - j`` (mirroring the maps back then aligns them exactly), left and
    right joints swapped."""
    mirrored = poses[:, layout_for(poses.shape[1]).flip_index].clone()
    mirrored[..., 0] = stride * (map_width - 1) - mirrored[..., 0]
    return mirrored


def add_noise(maps: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """``maps`` plus seeded Gaussian noise of standard deviation ``std`` (units of the map)."""
    gen = torch.Generator().manual_seed(seed)
    return maps + std * torch.randn(maps.shape, generator=gen).to(maps.device)


def add_peak_noise(heatmaps: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Heatmaps times seeded Gaussian noise of ``1`` and ``std``, clamped to [0, 1]: peaks move by
    about ``std``, and a Gaussian's tails stay tails, as a trained network's background and tails stay
    below the decoders' thresholds. (Noise added to the tails, even only above 1e-3, raised about
    100 false centres above DEKR's 0.01 in a crowd of 20, each a spurious pose.)"""
    return (heatmaps * add_noise(torch.ones_like(heatmaps), std, seed)).clamp(0, 1)


def pose_areas(poses: torch.Tensor) -> torch.Tensor:
    """Area of the box around each pose's labelled keypoints [P] (pixels^2), the OKS scale."""
    labelled = poses[..., 2] > 0
    big = torch.finfo(poses.dtype).max
    lo = torch.where(labelled[..., None], poses[..., :2], big).amin(1)
    hi = torch.where(labelled[..., None], poses[..., :2], -big).amax(1)
    return (hi - lo).clamp(min=1).prod(1)


__all__ = [
    "add_false_centres",
    "add_noise",
    "add_peak_noise",
    "load_people",
    "mirror_poses",
    "pose_areas",
    "pose_centres",
    "random_poses",
    "render_dekr",
    "render_heatmaps",
    "render_tags",
    "synthesize_crowd",
]
