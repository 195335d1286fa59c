"""Draw COCO keypoint records on images and tile images into one PNG; Pillow only, no matplotlib."""

import math
import numbers
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from jcra.data.images import as_rgb_image
from jcra.files import write_atomically

# One colour per person, cycled; saturated and far apart in hue so neighbours stay distinguishable.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def draw_keypoints(
    image,
    records: Sequence[dict],
    skeleton: Sequence[tuple[int, int]],
    *,
    radius: int | None = None,
    width: int | None = None,
    min_visibility: float = 0.0,
) -> Image.Image:
    """Draw each person of ``records`` on a new RGB copy of ``image``; the input is left unchanged.

    image: PIL image, numpy [H, W, 3] uint8 or torch [3, H, W] uint8. records: COCO-style dicts whose
    ``keypoints`` is [x1, y1, v1, ..., xK, yK, vK] in image pixels (x right, y down). v is a ground-truth
    visibility in {0, 1, 2} or a result's confidence; a keypoint is drawn when v > ``min_visibility``
    (the default 0 skips unlabelled ground truth). A record's ``score``, if present, is written above
    its top-most drawn keypoint. skeleton: 0-based (i, j) keypoint pairs joined by a line when both
    ends are drawn. radius, width: keypoint radius and limb width in pixels; by default they scale with
    the image's longer side. Person n gets ``PALETTE[n % len(PALETTE)]``.
    """
    canvas = as_rgb_image(image)
    long_side = max(canvas.size)
    radius = max(2, round(0.006 * long_side)) if radius is None else radius
    width = max(1, round(0.004 * long_side)) if width is None else width
    if radius < 1 or width < 1:
        raise ValueError(f"radius and width must be >= 1 pixel, got radius={radius}, width={width}")

    people = []
    for n, record in enumerate(records):
        if "keypoints" not in record:
            raise ValueError(f"records[{n}] has no 'keypoints' (a COCO result record has them)")
        flat = [float(value) for value in record["keypoints"]]
        if len(flat) % 3:
            raise ValueError(f"records[{n}]['keypoints'] must hold 3K values, got {len(flat)}")
        K = len(flat) // 3
        if "score" in record and not isinstance(record["score"], numbers.Real):
            raise ValueError(f"records[{n}]['score'] must be a number, got {record['score']!r}")
        for i, j in skeleton:
            if not (0 <= i < K and 0 <= j < K):
                raise ValueError(f"skeleton pair ({i}, {j}) is out of range for records[{n}] with K={K}")
        people.append(flat)

    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, 3 * radius))
    for n, (record, flat) in enumerate(zip(records, people, strict=True)):
        colour = PALETTE[n % len(PALETTE)]
        triples = [flat[3 * k : 3 * k + 3] for k in range(len(flat) // 3)]
        # Non-finite coordinates (a diverged model) are skipped rather than passed to ImageDraw.
        points = {
            k: (x, y) for k, (x, y, v) in enumerate(triples) if v > min_visibility and math.isfinite(x + y)
        }
        # Limbs first so the keypoint discs sit on top of the line ends.
        box = (-width, -width, canvas.width + width, canvas.height + width)
        for i, j in skeleton:
            if i in points and j in points:
                segment = _clip_segment(points[i], points[j], box)
                if segment is not None:
                    draw.line(segment, fill=colour, width=width)
        for x, y in points.values():
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        if "score" in record and points:
            x, y = min(points.values(), key=lambda p: p[1])
            left, top, right, bottom = draw.textbbox((0, 0), f"{record['score']:.2f}", font=font)
            # Above the keypoint, kept inside the image so a person at the top edge still shows a score.
            tx = min(max(0.0, x - (right - left) / 2), canvas.width - (right - left))
            ty = max(0.0, y - radius - (bottom - top) - 2) - top
            draw.text((tx, ty), f"{record['score']:.2f}", fill=colour, font=font)
    return canvas


def _clip_segment(p, q, box):
    """The part of segment p-q inside ``box`` (x0, y0, x1, y1), or None (Liang-Barsky). ImageDraw
    walks a thin line pixel by pixel, off the canvas too: an end at 1e9 would take seconds."""
    (px, py), (dx, dy) = p, (q[0] - p[0], q[1] - p[1])
    t0, t1 = 0.0, 1.0
    for step, room in ((-dx, px - box[0]), (dx, box[2] - px), (-dy, py - box[1]), (dy, box[3] - py)):
        if step == 0:
            if room < 0:
                return None
            continue
        t = room / step
        if step < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
    if t0 > t1:
        return None
    return [(px + t0 * dx, py + t0 * dy), (px + t1 * dx, py + t1 * dy)]


def save_grid(images: Sequence, path: str | Path, *, columns: int = 4, cell: int = 256) -> Path:
    """Tile ``images`` row-major into a PNG at ``path`` (parent folders created, written atomically);
    returns the path.

    Each image is scaled, aspect kept, so its longer side is ``cell`` pixels and centred in a black
    ``cell`` x ``cell`` square; the grid is min(columns, N) cells wide and ceil(N / columns) cells tall.
    Images may be any type ``draw_keypoints`` accepts.
    """
    if len(images) == 0:
        raise ValueError("images must hold at least one image, got an empty sequence")
    if not (isinstance(columns, int) and isinstance(cell, int) and columns >= 1 and cell >= 1):
        raise ValueError(f"columns and cell must be integers >= 1, got columns={columns!r}, cell={cell!r}")
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * cell, rows * cell))
    for n, image in enumerate(images):
        tile = as_rgb_image(image, f"images[{n}]")
        scale = cell / max(tile.size)
        size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
        tile = tile.resize(size, Image.BILINEAR)
        row, col = divmod(n, cols)
        grid.paste(tile, (col * cell + (cell - size[0]) // 2, row * cell + (cell - size[1]) // 2))
    path = Path(path)
    write_atomically(path, lambda f: grid.save(f, format="PNG"))
    return path
