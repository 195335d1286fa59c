"""Kernels compiled for sm_90 (H100/H200) without a GPU: the tiles the launchers pick do not spill."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_pose_cost_msda_forward_and_solver_tiles_do_not_spill():
    """The pose cost once spilled 3.7 KB a thread from an unrolled keypoint loop; the ms_deform_attn
    forward candidates are sized to the register file; the solver keeps its column vectors in registers
    up to its widest block. All compile with Triton's own ptxas."""
    from bench.sm90_resources import CUOBJDUMP

    if not CUOBJDUMP.exists():
        pytest.skip(f"Triton ships no cuobjdump here: {CUOBJDUMP}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.sm90_resources",
            "--only",
            "pose_cost",
            "ms_deform_attn forward",
            "linear_assignment",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = run.stdout.splitlines()[1:]
    # four G tiles; 5 candidates x 2 dtypes x 2 point counts; 2 dtypes x 2 blocks x 2 column layouts
    assert len(rows) == 4 + 20 + 8
    assert not [row for row in rows if "spills" in row], run.stdout
