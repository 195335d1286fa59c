"""Kernels compiled for sm_90 (H100/H200) without a GPU, as the runtime specialises their launches: the
tiles the launchers pick for what runs on the GPU do not spill."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_pose_cost_bf16_msda_and_solver_tiles_do_not_spill():
    """The pose cost once spilled 3.7 KB a thread from an unrolled keypoint loop; the ms_deform_attn
    candidates are sized to the register file in bf16, the precision training and inference run it in
    on the GPU (in fp32 the forward's larger tiles spill a few values: left to the autotuner's timing);
    the solver keeps its column vectors in registers up to its widest block. All compile with Triton's
    own ptxas."""
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
            "ms_deform_attn forward bf16",
            "ms_deform_attn backward bf16",
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
    # four G tiles; 5 forward and 4 + 1 (held out) backward tiles x 2 point counts; 2 dtypes x 2 blocks
    # x 2 layouts
    assert len(rows) == 4 + 10 + 10 + 8
    assert not [row for row in rows if "spills" in row], run.stdout



# Compiles one deformable attention launch twice, as launched and specialised by Triton's default
# (JITFunction without do_not_specialize), and prints both instruction counts and whether they match.
_SAME_SASS = """
import re, sys
import torch
from triton.runtime.jit import JITFunction
from bench.sm90_resources import msda_launches, resources
kernel, args, kwargs = msda_launches(torch.bfloat16, 4, tokens=112)[sys.argv[1]]
code = [re.findall(r"/\\*[0-9a-f]{4}\\*/\\s+([^;]+);", resources(k, args, kwargs)[1])
        for k in (kernel, JITFunction(kernel.fn))]
print(len(code[0]), len(code[1]), code[0] == code[1])
"""


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_msda_code_is_the_same_without_specialising_token_counts(direction):
    """Lq and S are not specialised, so one compile serves every image size; specialised as Triton
    would by default (both 112 here, divisible by 16), the SASS for sm_90 is instruction for
    instruction the same."""
    from bench.sm90_resources import CUOBJDUMP

    if not CUOBJDUMP.exists():
        pytest.skip(f"Triton ships no cuobjdump here: {CUOBJDUMP}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    run = subprocess.run(
        [sys.executable, "-c", _SAME_SASS, direction], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    unspecialised, specialised, same = run.stdout.split()
    assert int(unspecialised) > 100 and same == "True", run.stdout
