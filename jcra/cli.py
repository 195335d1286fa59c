"""The ``jcra`` console command: ``predict`` (results JSON and drawn skeletons) and ``evaluate`` (COCO AP).

jcra predict CHECKPOINT IMAGES... --out DIR [--score-threshold 0.3] [--device cuda] [--precision bf16]
             [--compile]
jcra evaluate CHECKPOINT --ann-file F --image-dir D [--out DIR] [--precision bf16] [--compile]
"""

import argparse
import json
import os
import warnings
from pathlib import Path

import torch

from jcra.data.images import read_rgb
from jcra.inference import PoseEstimator, checked_precision, compile_for_inference, load_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def image_paths(inputs: list[str]) -> list[Path]:
    """Image files from files and folders (a folder's files with an image suffix, sorted by name, not
    its subfolders'; the other entries, but hidden ones, are named in a warning)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            entries = sorted(p for p in item.iterdir() if not p.name.startswith("."))
            images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            skipped = [p.name + "/" * p.is_dir() for p in entries if p not in images]
            if skipped:
                warnings.warn(
                    f"IMAGES: skipping {len(skipped)} entries of {item} that are folders or lack an image "
                    f"suffix: {skipped[:5]}",
                    stacklevel=2,
                )
            paths += images
        elif item.is_file():
            paths.append(item)
        else:
            raise ValueError(f"IMAGES: {str(item)!r} is neither an image file nor a folder")
    if not paths:
        raise ValueError(f"IMAGES: no images ({', '.join(IMAGE_SUFFIXES)}) found in {inputs}")
    return paths


def output_folder(out: str | Path) -> Path:
    """``--out`` created and checked writable before any work, so a bad path costs no inference."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"--out: cannot create folder {out}: {err}") from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise OSError(f"--out: folder {out} is not writable")
    return out


def metrics_json(metrics: dict[str, float]) -> str:
    """Metrics as strict JSON: a level with no images (nan) is null."""
    from jcra.evaluation import strict_json

    return json.dumps(strict_json(metrics), indent=1, allow_nan=False)


def drawing_paths(paths: list[Path], out: Path) -> list[Path]:
    """``out/<image file name>.png`` for each image (``photo.jpg`` -> ``photo.jpg.png``, so ``photo.png``
    beside it keeps its own); ValueError if two images share a name or a drawing would replace an image."""
    inputs = {path.resolve(): path for path in paths}
    drawn: dict[Path, Path] = {}
    for path in paths:
        drawing = out / f"{path.name}.png"
        if drawing.resolve() in inputs:
            raise ValueError(
                f"--out: drawing {drawing} would overwrite the input image {inputs[drawing.resolve()]} "
                "(a drawing of an earlier run into the images' folder? draw into another --out)"
            )
        if drawing in drawn:
            raise ValueError(f"IMAGES: {drawn[drawing]} and {path} would both be drawn to {drawing}")
        drawn[drawing] = path
    return list(drawn)


def resolve_cli_device(name: str) -> torch.device:
    """``--device`` as a torch device: auto, cpu, cuda or cuda:N of a GPU this machine has."""
    from train.distributed import resolve_device

    return resolve_device(name, "--device")


def predict(
    checkpoint: str | Path,
    images: list[str],
    out: str | Path,
    score_threshold: float = 0.3,
    device: str = "auto",
    top_k: int = 100,
    precision: str = "fp32",
    compile: bool = False,
) -> Path:
    """Run the model on each image; write ``out/results.json`` (COCO records, ``image_id`` the image's
    index in :func:`image_paths`' list: the arguments in order, a folder's images sorted by name;
    ``file_name`` its path) and ``out/<image file name>.png`` (``photo.jpg.png``)
    with skeletons scoring at least ``score_threshold`` drawn. Images are read upright as their EXIF
    orientation says (a phone photo as it is shown), and coordinates are in that frame. Every image is
    decoded and ``out`` created before the model runs, so a bad file or folder stops the command
    before any work. ``precision`` and ``compile`` as :class:`jcra.PoseEstimator` takes them. Returns
    the results path."""
    from tqdm import tqdm

    from jcra.files import write_atomically, write_text_atomically
    from jcra.postprocess import checked_score_threshold, checked_top_k
    from jcra.visualize import draw_keypoints
    from train.checkpoint import existing_checkpoint

    checked_score_threshold(score_threshold)
    checked_top_k(top_k)
    checked_precision(precision, "--precision")
    dev = resolve_cli_device(device)
    paths = image_paths(images)
    drawings = drawing_paths(paths, Path(out))
    # a file that is no image, or a cut one, fails now, before the model loads and anything is written;
    # all of them in one message, not one a run
    unreadable = []
    for path in tqdm(paths, "checking images", unit="image", disable=len(paths) < 100, dynamic_ncols=True):
        try:
            read_rgb(path, upright=True)
        except OSError as err:
            unreadable.append(str(err))
    if unreadable:
        many = f"{len(unreadable)} of {len(paths)} images cannot be read:\n  " if len(unreadable) > 1 else ""
        raise OSError(many + "\n  ".join(unreadable))
    existing_checkpoint(checkpoint)
    out = output_folder(out)
    estimator = PoseEstimator(*load_model(checkpoint, dev), top_k, precision, compile)
    results, results_path, done = [], out / "results.json", 0
    pairs = tqdm(list(zip(paths, drawings, strict=True)), "predicting", unit="image", dynamic_ncols=True)
    try:
        for index, (path, drawing) in enumerate(pairs):
            try:
                image = read_rgb(path, upright=True)
                records = estimator.records([image], [index])
            except ValueError as err:  # PostProcess's NaN error names the image by its index only
                raise ValueError(f"{path}: {err}") from err
            except Exception as err:
                err.add_note(f"jcra predict: while running the model on {path}")
                raise
            for record in records:
                record["file_name"] = str(path)
            results += records
            done += 1
            shown = [r for r in records if r["score"] >= score_threshold]
            drawn = draw_keypoints(image, shown, estimator.layout.skeleton)
            write_atomically(drawing, lambda f, drawn=drawn: drawn.save(f, format="PNG"))
    except KeyboardInterrupt:  # keep what is done, wherever in an image's work it came
        write_text_atomically(results_path, json.dumps(results))
        raise KeyboardInterrupt(
            f"stopped after {done} of {len(paths)} images; {results_path} holds their records"
        ) from None
    write_text_atomically(results_path, json.dumps(results))
    return results_path


def evaluate(
    checkpoint: str | Path,
    ann_file: str,
    image_dir: str,
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 4,
    precision: str = "fp32",
    compile: bool = False,
) -> dict:
    """COCO keypoint AP of a checkpoint on a COCO-format set; writes ``out/results.json`` and
    ``out/metrics.json`` (strict JSON: nan is null) when ``out`` is given, created before any work.
    ``precision`` and ``compile`` as :class:`jcra.PoseEstimator` takes them: compiled, each batch is
    padded to one of at most four canvases (:func:`jcra.data.canvas`)."""
    from jcra.files import write_text_atomically
    from train.checkpoint import existing_checkpoint
    from train.config import TrainConfig
    from train.train import build_dataset, data_loader, evaluate, keypoint_layout

    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    checked_precision(precision, "--precision")
    dev = resolve_cli_device(device)
    existing_checkpoint(checkpoint)
    if out is not None:
        out = output_folder(out)
    model, data_config = load_model(checkpoint, dev)
    if compile:
        compile_for_inference(model)
    cfg = TrainConfig(
        out_dir=str(out or "."),
        train_ann=ann_file,
        train_images=image_dir,
        val_ann=ann_file,
        val_images=image_dir,
        val_scale=data_config["val_scale"],
        max_size=data_config["max_size"],
        batch_size=batch_size,
    )
    layout = keypoint_layout(data_config["keypoint_layout"])
    loader = data_loader(build_dataset(ann_file, image_dir, False, cfg, layout), cfg, on_canvas=compile)
    metrics = evaluate(
        model, loader, ann_file, dev, precision=precision, results_path=out and out / "results.json"
    )
    if out is not None:
        write_text_atomically(out / "metrics.json", metrics_json(metrics))
    return metrics


PRECISION_HELP = "fp32, or bf16 / fp16 autocast around the model (bf16 is what the benchmarks time on a GPU)"
COMPILE_HELP = (
    "torch.compile the model, batches padded to at most four canvases: the first batch of each canvas "
    "and batch size compiles (minutes on a GPU), the others run faster; for many images"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jcra", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="results JSON and drawn skeletons for images or folders")
    pr.add_argument("checkpoint")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument(
        "--out",
        required=True,
        help="output folder: results.json and a drawing per image, photo.jpg -> photo.jpg.png",
    )
    pr.add_argument("--score-threshold", type=float, default=0.3, help="draw people scoring at least this")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    pr.add_argument("--top-k", type=int, default=100)
    pr.add_argument("--precision", default="fp32", help=PRECISION_HELP)
    pr.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    ev = sub.add_parser("evaluate", help="COCO keypoint AP of a checkpoint")
    ev.add_argument("checkpoint")
    ev.add_argument("--ann-file", required=True)
    ev.add_argument("--image-dir", required=True)
    ev.add_argument("--out", default=None, help="folder for results.json and metrics.json")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ev.add_argument("--batch-size", type=int, default=4)
    ev.add_argument("--precision", default="fp32", help=PRECISION_HELP)
    ev.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jcra`` console script; bad input exits with status 2 and the message."""
    args = parser().parse_args(argv)
    try:
        if args.command == "predict":
            path = predict(
                args.checkpoint,
                args.images,
                args.out,
                args.score_threshold,
                args.device,
                args.top_k,
                args.precision,
                args.compile,
            )
            print(f"[jcra] results: {path}\n[jcra] drawings: {path.parent}/*.png")
        else:
            metrics = evaluate(
                args.checkpoint,
                args.ann_file,
                args.image_dir,
                args.out,
                args.device,
                args.batch_size,
                args.precision,
                args.compile,
            )
            print(metrics_json(metrics))
    except (ValueError, OSError) as error:  # bad arguments, missing or unreadable files
        parser().exit(2, f"jcra: error: {error}\n")
    except KeyboardInterrupt as stop:  # Ctrl-C: the shell's status for it
        parser().exit(130, f"jcra: interrupted{f': {stop}' if str(stop) else ''}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
