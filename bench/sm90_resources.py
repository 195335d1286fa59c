"""Registers, stack and spill stores of the Triton kernels at the model's shapes, compiled for sm_90.

    python -m bench.sm90_resources [--only PREFIX ...]

No GPU needed: Triton compiles for an explicit target (H100/H200, sm_90) with the ptxas it ships,
and its cuobjdump reads the resource usage and the SASS. Each row is a launch the kernels' own
launchers make on example tensors at the model's shapes, caught before it runs and compiled as
``JITFunction.run`` would compile it on the GPU: with the same specialisation of its arguments (16-byte
aligned pointers, sizes divisible by 16, strides of 1), which decides what the compiler can vectorise.
This is where the numbers in the launchers' comments come from (the ms_deform_attn tile candidates, the
pose cost's rolled keypoint loop, the assignment solver's warps). Rows: every ms_deform_attn tile
candidate for D = 32, 8 heads, 4 levels (encoder: 4 points; decoder: 17), fp32 and bf16, and the
backward at the forward's tiles it leaves out (marked "not a candidate"); the pose cost at the tiles
the launcher picks for G in {1, 5, 20, 100}; the solver at Q = 300 and at its widest block, fp32 and
fp64, its columns contiguous (Q >= G, as the launcher lays them out) or strided. A row with spill
stores (STL in the SASS) is marked; ``--sass DIR`` writes each row's SASS.
Run it without TRITON_INTERPRET: the interpreter replaces the kernels it compiles.
"""

import argparse
import importlib
import re
import subprocess
import tempfile
from pathlib import Path
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float64: "fp64"}


def _launch_of(launcher, *args) -> tuple[JITFunction, tuple, dict]:
    """The one Triton launch ``launcher(*args)`` makes, as (kernel, args, kwargs), caught before it
    runs (no GPU needed)."""
    caught = []

    def catch(kernel, *launch_args, grid, warmup, **kwargs):
        caught.append((kernel, launch_args, kwargs))

    with mock.patch.object(JITFunction, "run", catch):
        launcher(*args)
    (launch,) = caught
    return launch


def msda_launches(dtype: torch.dtype, points: int, tokens: int = 100) -> dict[str, tuple]:
    """The deformable attention's forward and backward launches at the model's 8 heads of 32 channels
    and 4 levels, ``points`` a level, ``tokens`` queries and values: {direction: (kernel, args,
    kwargs)}."""
    msda = importlib.import_module("kernels.ms_deform_attn")
    heads, channels, levels = 8, 32, 4
    level_table = torch.zeros(levels, 3, dtype=torch.int64)
    value = torch.empty(1, tokens, heads, channels, dtype=dtype)
    loc = torch.empty(1, tokens, heads, levels, points, 2)
    attn = torch.empty(1, tokens, heads, levels, points, dtype=dtype)
    grad_out = torch.empty(1, tokens, heads * channels, dtype=dtype)
    return {
        "forward": _launch_of(msda._ms_deform_attn_forward_triton, value, level_table, loc, attn),
        "backward": _launch_of(
            msda._ms_deform_attn_backward_triton, grad_out, value, level_table, loc, attn, False
        ),
    }


def specs():
    """(label, kernel, args, kwargs) for every row: a launch, its tile (and warps) in kwargs."""
    msda = importlib.import_module("kernels.ms_deform_attn")
    oks = importlib.import_module("kernels.oks")
    assignment = importlib.import_module("kernels.linear_assignment")
    for dtype in (torch.float32, torch.bfloat16):
        name = _DTYPE_NAMES[dtype]
        for points in (4, 17):
            for direction, (kernel, args, kwargs) in msda_launches(dtype, points).items():
                tiles = msda._candidates(kwargs["BLOCK_D"], direction)
                # and the forward's tiles that the backward leaves out (more elements a thread)
                held_out = [t for t in msda._candidates(kwargs["BLOCK_D"], "forward") if t not in tiles]
                for block_q, warps in tiles + held_out:
                    label = f"ms_deform_attn {direction} {name} P={points} BLOCK_Q={block_q}"
                    label += " (not a candidate)" if (block_q, warps) in held_out else ""
                    yield label, kernel, args, {**kwargs, "BLOCK_Q": block_q, "num_warps": warps}
    b, q, k = 8, 300, 17
    for g in (1, 5, 20, 100):
        # the matcher passes image sizes (OKS in pixels)
        kernel, args, kwargs = _launch_of(
            oks._launch,
            torch.empty(b, q),
            torch.empty(b, q, k, 2),
            torch.empty(b, g, k, 3),
            torch.empty(b, g),
            torch.empty(k),
            torch.empty(b, 2),
            (2.0, 70.0, 7.0, 0.25, 2.0),
        )
        label = f"pose_cost G={g} BLOCK_Q={kwargs['BLOCK_Q']} BLOCK_G={kwargs['BLOCK_G']}"
        yield label, kernel, args, kwargs
    for dtype in (torch.float32, torch.float64):
        # Q = 300 (any G <= Q: the columns are the queries, made contiguous), and the widest block;
        # columns are strided where the ground truths are (G > Q)
        for wide in (300, assignment._MAX_BLOCK):
            for contiguous in (True, False):
                q, g = (wide, 20) if contiguous else (20, wide)
                cost = torch.empty(2, g, q, dtype=dtype).transpose(1, 2)
                kernel, args, kwargs = _launch_of(assignment._launch, cost, torch.empty(2, dtype=torch.int64))
                layout = "contiguous" if contiguous else "strided"
                label = f"linear_assignment {_DTYPE_NAMES[dtype]} BLOCK={kwargs['BLOCK']} {layout} columns"
                yield label, kernel, args, kwargs


def resources(kernel: JITFunction, args: tuple, kwargs: dict) -> tuple[dict[str, int], str]:
    """REG, STACK and SHARED from cuobjdump, and the SASS's spill stores (STL); and the SASS, of the
    launch compiled for sm_90 as ``JITFunction.run`` would compile it."""
    backend = make_backend(TARGET)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialisation, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialisation, options)
    compiled = triton.compile(
        ASTSource(kernel, signature, constexprs, attrs), target=TARGET, options=options.__dict__
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run(
            [CUOBJDUMP, "--dump-resource-usage", cubin.name], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run(
            [CUOBJDUMP, "--dump-sass", cubin.name], capture_output=True, text=True, check=True
        ).stdout
    found = {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED):(\d+)", usage)}
    found["STL"] = len(re.findall(r"\bSTL\b", sass))
    return found, sass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", default=[""], help="label prefixes of the rows to compile")
    parser.add_argument("--sass", type=Path, help="folder to write each row's SASS to, as <label>.sass")
    args = parser.parse_args(argv)
    rows = [spec for spec in specs() if any(spec[0].startswith(prefix) for prefix in args.only)]
    if not rows:
        labels = sorted({spec[0].split(" ")[0] for spec in specs()})
        parser.error(f"--only {' '.join(args.only)} matches no row; labels start with {labels}")
    print(f"{'kernel and tile':64s} {'warps':>5s} {'regs':>5s} {'stack':>6s} {'shared':>7s} {'STL':>5s}")
    for label, kernel, launch_args, kwargs in rows:
        r, sass = resources(kernel, launch_args, kwargs)
        warps = kwargs.get("num_warps", 4)
        if args.sass:
            args.sass.mkdir(parents=True, exist_ok=True)
            (args.sass / f"{re.sub(r'[^A-Za-z0-9=]+', '_', label)}.sass").write_text(sass)
        mark = "  spills" if r["STL"] else ""
        print(f"{label:64s} {warps:5d} {r['REG']:5d} {r['STACK']:6d} {r['SHARED']:7d} {r['STL']:5d}{mark}")


if __name__ == "__main__":
    main()
