"""python -m bench.model_size runs and reports parameters and FLOPs (tiny config, small input), and the
bottom-up networks' FLOPs on the same ResNet-50."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_count_flops_of_a_known_network():
    """Convolutions counted as 2 FLOPs a multiply-add, per child module, on the meta device."""
    from torch import nn

    from bench.model_size import count_flops

    network = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    total, parts = count_flops(network, 10, 12)
    assert parts == {"0": 2 * 3 * 8 * 120, "2": 2 * 8 * 4 * 9 * 120}
    assert total == sum(parts.values())


def test_model_size_script_reports_the_models_parameters_and_flops():
    from jcra import build_model

    args = ["--name", "jcra_tiny", "--height", "640", "--width", "800"]
    result = subprocess.run(
        [sys.executable, "-m", "bench.model_size", *args],
        capture_output=True, text=True, check=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    params = sum(p.numel() for p in build_model("jcra_tiny").parameters())
    assert f"jcra_tiny: {params / 1e6:.2f} M parameters" in result.stdout
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines()[2:9])
    names = ("backbone", "neck", "detail_proj", "encoder", "decoder", "other")
    parts = [float(lines[name].split()[0]) for name in names]
    total = float(lines["total"].split()[0])
    assert total > 1.0 and abs(total - sum(parts)) <= 0.35  # the parts add up, each printed to 0.1
    assert "bilinear sampling" in result.stdout and "GMACs" in result.stdout
    assert "DEKRHead" in result.stdout and "AssociativeEmbeddingHead" in result.stdout
