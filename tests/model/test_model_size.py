"""python -m bench.model_size runs and reports parameters and FLOPs (tiny config, small input), and the
bottom-up networks' FLOPs on the same ResNet-50."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_model_size_script_reports_parameters_and_flops():
    args = ["--name", "jcra_tiny", "--height", "128", "--width", "160"]
    result = subprocess.run(
        [sys.executable, "-m", "bench.model_size", *args],
        capture_output=True, text=True, check=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert "M parameters" in result.stdout
    assert "bilinear sampling" in result.stdout and "GMACs" in result.stdout
    assert "DEKRHead" in result.stdout and "AssociativeEmbeddingHead" in result.stdout
