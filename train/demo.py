"""The embedded demo: ``python -m train.demo [hydra overrides]``.

Generates the synthetic people (once, under ``outputs/demo/data``), trains the demo configuration
(``train/conf`` defaults: tiny model; about 14 to 15 minutes of training on 2 CPU cores, where the
whole ``make demo`` takes about 15 to 16; ``train.device=auto`` trains on a GPU where torch sees
one), evaluates COCO keypoint AP on the synthetic val split, draws predictions for a few val images,
and prints where everything is.
Run again, it continues its run in ``outputs/demo/run`` (finished, it only draws again); data paths
given on the command line replace the synthetic ones.
"""

import json
import sys
import time
from pathlib import Path

DATA_DIR = Path("outputs/demo/data")
SYNTHETIC = dict(num_train=1024, num_val=64, seed=0, image_size=256)
"""Synthetic split sizes and image side (pixels); the demo's time budget is set by these and the schedule."""


def ensure_data(data_dir: Path, **synthetic) -> dict:
    """Generate the synthetic splits unless ``data_dir/paths.json`` says they exist; returns their paths."""
    from jcra.data.synthetic import generate
    from jcra.files import write_text_atomically

    index = data_dir / "paths.json"
    if index.is_file():
        return json.loads(index.read_text())
    paths = {k: str(v) for k, v in generate(data_dir, **synthetic).items()}
    write_text_atomically(index, json.dumps(paths, indent=1))  # a cut file would stop every later run
    return paths


def run(overrides: list[str]) -> dict:
    """Compose the demo config with ``overrides``, then data, training, evaluation and drawings."""
    from hydra import compose, initialize

    from jcra.cli import image_paths, predict
    from train.config import config_from
    from train.stop import exit_status
    from train.train import train

    start = time.perf_counter()
    paths = ensure_data(DATA_DIR, **SYNTHETIC)
    with initialize(version_base=None, config_path="conf"):
        cfg = config_from(compose("config", overrides=["experiment=demo", *overrides]).train)
    given = {override.split("=")[0].lstrip("+~") for override in overrides}
    for key, value in paths.items():
        if f"train.{key}" not in given:  # the synthetic data, unless the command line names other
            setattr(cfg, key, value)
    result = train(cfg)
    if result["stopped"]:
        print(f"[jcra demo] stopped by {result['stopped']} at step {result['step']}; `make demo` resumes it")
        raise SystemExit(exit_status(result["stopped"]))
    val_images = image_paths([cfg.val_images])[:4]
    out_dir = Path(cfg.out_dir).resolve()
    drawings = out_dir / "drawings"
    results = predict(result["checkpoint"], [str(p) for p in val_images], drawings, device=cfg.device)
    minutes = (time.perf_counter() - start) / 60
    print(
        f"\n[jcra demo] done in {minutes:.1f} min; val AP {result['metrics'].get('AP', float('nan')):.3f}\n"
        f"  data:        {DATA_DIR.resolve()}\n"
        f"  checkpoint:  {out_dir / 'checkpoint.pt'}\n"
        f"  metrics:     {out_dir / 'metrics.jsonl'}\n"
        f"  val results: {out_dir / 'val_results.json'}\n"
        f"  drawings:    {results.parent}/*.png ({results} holds their COCO records)",
        flush=True,
    )
    return result


if __name__ == "__main__":
    run(sys.argv[1:])
