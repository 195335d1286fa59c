"""bench/model_size.py runs and reports parameters and FLOPs (tiny config, small input)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "model_size.py"


def test_model_size_script_reports_parameters_and_flops():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--name", "jcra_tiny", "--height", "128", "--width", "160"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert "M parameters" in result.stdout
    assert "bilinear sampling" in result.stdout and "GMACs" in result.stdout
