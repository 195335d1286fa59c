"""The embedded default dataset: synthetic people drawn as articulated figures, written in COCO format.

Each figure has plausible proportions (limb lengths as fractions of its height), a random upright-ish
pose facing the camera (so left/right is defined, as in COCO: the person's left is the image's right),
clothes and skin colours, and the 17 COCO keypoints. 1-10 people an image at varied scales stand in
front of a textured background; people nearer the camera (lower in the picture, drawn later) occlude
the others, whose covered keypoints get v=1; keypoints outside the image are unlabelled (v=0).
Everything is drawn from ``numpy.random.default_rng((seed, split, index))``: the same seed gives the
same files.

    python -m jcra.data.synthetic OUT [--num-train 256] [--num-val 32] [--seed 0] [--image-size 256]
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from jcra.data.coco import PIXEL_CENTRE
from jcra.data.keypoint_layouts import COCO

PEOPLE_WEIGHTS = np.array([24, 20, 15, 11, 8, 7, 5, 4, 3, 3], dtype=float)
"""Relative frequency of 1..10 people in an image (small groups are commonest, as in COCO)."""

# Body proportions, in units of the figure's height (standing, head top to ankles).
TORSO, NECK_TO_HEAD, HEAD_RADIUS = 0.30, 0.11, 0.065
SHOULDER_HALF, HIP_HALF = 0.11, 0.075
UPPER_ARM, FOREARM, THIGH, SHIN = 0.17, 0.15, 0.24, 0.23
LIMB_WIDTH, TORSO_WIDTH_PAD = 0.08, 0.04

SKIN_TONES = np.array([[255, 220, 190], [234, 192, 160], [198, 144, 110], [141, 85, 60], [90, 56, 40]])


def generate(out, *, num_train: int = 256, num_val: int = 32, seed: int = 0, image_size: int = 256) -> dict:
    """Write ``out/{train,val}/*.jpg`` and ``out/{train,val}.json``; returns their paths as
    ``{"train_ann", "train_images", "val_ann", "val_images"}``. image_size: the long side (pixels)."""
    from jcra.files import write_text_atomically

    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    out = Path(out)
    paths = {}
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        image_dir = out / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in tqdm(range(count), desc=f"synthetic {split}", leave=False):
            rng = np.random.default_rng((seed, split_id, index))
            image, people = draw_image(rng, image_size)
            image_id = index + 1
            file_name = f"{image_id:06d}.jpg"
            image.save(image_dir / file_name, quality=92)
            width, height = image.size
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for person in people:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **person})
        ann_file = out / f"{split}.json"
        dataset = {"images": images, "annotations": annotations, "categories": [CATEGORY]}
        write_text_atomically(ann_file, json.dumps(dataset))
        paths[f"{split}_ann"], paths[f"{split}_images"] = ann_file, image_dir
    return paths


CATEGORY = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(COCO.names),
    "skeleton": [[i + 1, j + 1] for i, j in COCO.skeleton],
}


def draw_image(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, list[dict]]:
    """One image and its people's COCO annotations (``keypoints``, ``num_keypoints``, ``area``, ``bbox``)."""
    short = round(image_size * rng.uniform(0.75, 1.0))
    w, h = (image_size, short) if rng.random() < 0.5 else (short, image_size)
    image = textured_background(rng, w, h)
    count = 1 + rng.choice(len(PEOPLE_WEIGHTS), p=PEOPLE_WEIGHTS / PEOPLE_WEIGHTS.sum())
    figures = [random_figure(rng, w, h, count) for _ in range(count)]
    figures.sort(key=lambda f: f["ground"])  # far (higher in the picture) first, near ones drawn over them
    masks = []
    for figure in figures:
        colours = person_colours(rng)
        draw_figure(ImageDraw.Draw(image), figure["joints"], figure["height"], colours)
        mask = Image.new("1", (w, h))
        draw_figure(ImageDraw.Draw(mask), figure["joints"], figure["height"], None)
        masks.append(np.asarray(mask))
    people = []
    for i, figure in enumerate(figures):
        in_front = np.any(masks[i + 1 :], axis=0) if i + 1 < len(masks) else np.zeros((h, w), bool)
        keypoints = label_keypoints(figure["joints"], in_front, w, h)
        silhouette = masks[i]
        if not (keypoints[:, 2] > 0).any() or not silhouette.any():
            continue
        ys, xs = np.nonzero(silhouette)
        x0, y0 = float(xs.min()), float(ys.min())
        people.append(
            {
                "category_id": 1,
                "iscrowd": 0,
                "keypoints": [round(float(v), 2) for v in keypoints.reshape(-1)],
                "num_keypoints": int((keypoints[:, 2] > 0).sum()),
                "area": float(silhouette.sum()),
                "bbox": [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0],
            }
        )
    return image.filter(ImageFilter.GaussianBlur(0.5)), people


def textured_background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A colour gradient with random soft shapes and noise (clutter the model must learn to ignore)."""
    ys, xs = np.mgrid[0:h, 0:w] / max(w, h)
    a, b = rng.uniform(40, 220, (2, 3))
    direction = rng.uniform(-1, 1, 2)
    t = np.clip(0.5 + (xs * direction[0] + ys * direction[1]), 0, 1)[..., None]
    base = a * (1 - t) + b * t
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 14)):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * (w, h)
        x1, y1 = (x0, y0) + rng.uniform(0.05, 0.5, 2) * (w, h)
        colour = tuple(int(c) for c in rng.uniform(30, 230, 3))
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif shape == 1:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 6)))
    noise = rng.normal(0, rng.uniform(2, 12), (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(image, float) + noise, 0, 255).astype(np.uint8))


def random_figure(rng: np.random.Generator, w: int, h: int, count: int) -> dict:
    """Joint positions [17, 2] (pixels) of a random pose, its height, and where its feet meet the ground."""
    largest = 0.95 if count <= 2 else 0.8 if count <= 5 else 0.6
    height = h * math.exp(rng.uniform(math.log(0.3), math.log(largest)))
    pelvis = np.array([rng.uniform(0.05, 0.95) * w, rng.uniform(0.25, 0.85) * h])
    joints = pose_joints(rng) * height + pelvis
    return {"joints": joints, "height": height, "ground": pelvis[1] + 0.47 * height}


def pose_joints(rng: np.random.Generator) -> np.ndarray:
    """COCO joints [17, 2] of a random pose, pelvis at the origin, unit height, y down, facing the camera."""
    up = _direction(-math.pi / 2 + rng.normal(0, math.radians(8)))  # torso axis, pelvis to neck
    across = np.array([-up[1], up[0]])  # towards the image's right = the person's left
    turn = rng.uniform(0.55, 1.0)  # shoulder/hip width foreshortened by turning the body
    neck = TORSO * up
    head = neck + NECK_TO_HEAD * up + rng.normal(0, 0.01, 2)
    yaw = rng.uniform(-0.5, 0.5)  # face features shift sideways as the head turns
    j = np.zeros((17, 2))
    j[0] = head + across * yaw * 0.03 - up * 0.005
    for side, sign in ((0, 1.0), (1, -1.0)):  # side 0: the person's left (image right), COCO's odd indices
        j[1 + side] = head + across * (sign * 0.025 + yaw * 0.02) + up * 0.015
        j[3 + side] = head + across * (sign * 0.055 * (1 - 0.5 * sign * yaw)) + up * 0.005
        shoulder = neck + across * sign * SHOULDER_HALF * turn
        hip = across * sign * HIP_HALF * turn
        # Arm: swing away from the body (0 = hanging down, up to overhead), elbow bends either way.
        upper = _rotate(-up, -sign * rng.uniform(-0.4, 2.8))
        elbow = shoulder + UPPER_ARM * upper
        wrist = elbow + FOREARM * _rotate(upper, -sign * rng.uniform(-0.3, 2.4))
        # Leg: step sideways or forward (foreshortened), knee bends backward.
        thigh = _rotate(-up, -sign * rng.uniform(-0.25, 0.6))
        knee = hip + THIGH * thigh * np.array([1.0, rng.uniform(0.75, 1.0)])
        ankle = knee + SHIN * _rotate(thigh, sign * rng.uniform(0.0, 1.2))
        j[5 + side], j[7 + side], j[9 + side] = shoulder, elbow, wrist
        j[11 + side], j[13 + side], j[15 + side] = hip, knee, ankle
    return j


def person_colours(rng: np.random.Generator) -> dict:
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 8, 3)
    return {
        "skin": _rgb(skin),
        "shirt": _rgb(rng.uniform(0, 255, 3)),
        "trousers": _rgb(rng.uniform(0, 200, 3)),
        "hair": _rgb(rng.uniform(0, 90, 3)),
    }


def draw_figure(draw: ImageDraw.ImageDraw, j: np.ndarray, height: float, colours: dict | None) -> None:
    """Draw the figure with joints ``j`` [17, 2]; ``colours`` None draws its silhouette (value 1)."""
    # PIL fills the pixels between a shape's box corners floored, which drew dots centred up to a pixel
    # (half a pixel on average) above and left of their labels; half a pixel more centres them.
    j = j + 0.5
    paint = (lambda part: colours[part]) if colours else (lambda part: 1)
    width = max(2, round(LIMB_WIDTH * height))

    def limb(a, b, part, scale=1.0):
        wd = max(2, round(width * scale))
        draw.line([tuple(j[a]), tuple(j[b])], fill=paint(part), width=wd)
        for k in (a, b):
            r = wd / 2
            draw.ellipse([j[k][0] - r, j[k][1] - r, j[k][0] + r, j[k][1] + r], fill=paint(part))

    for hip, knee, ankle in ((11, 13, 15), (12, 14, 16)):
        limb(hip, knee, "trousers", 1.2)
        limb(knee, ankle, "trousers", 1.0)
    pad = TORSO_WIDTH_PAD * height
    torso = [j[6] + (-pad, 0), j[5] + (pad, 0), j[11] + (pad, 0), j[12] + (-pad, 0)]
    draw.polygon([tuple(p) for p in torso], fill=paint("shirt"))
    for shoulder, elbow, wrist in ((5, 7, 9), (6, 8, 10)):
        limb(shoulder, elbow, "shirt", 0.9)
        limb(elbow, wrist, "skin", 0.75)
    head = (j[3] + j[4]) / 2
    r = HEAD_RADIUS * height
    skull = [head[0] - r, head[1] - 1.15 * r, head[0] + r, head[1] + r]
    draw.ellipse(skull, fill=paint("skin"))
    if colours:
        draw.chord(skull, 180, 360, fill=colours["hair"])
        dot = max(1.0, 0.012 * height)
        for k in (0, 1, 2):
            draw.ellipse([j[k][0] - dot, j[k][1] - dot, j[k][0] + dot, j[k][1] + dot], fill=(30, 20, 20))


def label_keypoints(joints: np.ndarray, covered: np.ndarray, w: int, h: int) -> np.ndarray:
    """COCO keypoints [17, 3], rounded to 0.01 pixel as written: outside the image -> (0, 0, 0); under
    a nearer person -> v=1; else v=2. Inside as the dataset reads a label (a pixel index, whose centre
    lies :data:`~jcra.data.coco.PIXEL_CENTRE` further): within the last half pixel it is outside."""
    out = np.zeros((len(joints), 3))
    for k, (x, y) in enumerate(np.round(joints, 2)):
        if 0 <= x and x + PIXEL_CENTRE < w and 0 <= y and y + PIXEL_CENTRE < h:
            out[k] = (x, y, 1 if covered[int(y), int(x)] else 2)
    return out


def _direction(angle: float) -> np.ndarray:
    """Unit vector at ``angle`` radians from +x towards +y (image axes); pi/2 points down."""
    return np.array([math.cos(angle), math.sin(angle)])


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _rgb(values) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(values, 0, 255))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--num-train", type=int, default=256)
    parser.add_argument("--num-val", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    try:
        paths = generate(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            seed=args.seed,
            image_size=args.image_size,
        )
    except (ValueError, OSError) as err:  # bad sizes or counts; an OUT that is a file or not writable
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))


if __name__ == "__main__":
    main()
