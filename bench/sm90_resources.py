"""Registers, stack and spill stores of the Triton kernels at the model's shapes, compiled for sm_90.

    python -m bench.sm90_resources [--only PREFIX ...]

No GPU needed: Triton compiles for an explicit target (H100/H200, sm_90) with the ptxas it ships,
and its cuobjdump reads the resource usage and the SASS. This is where the numbers in the
launchers' comments come from (the ms_deform_attn tile candidates, the pose cost's rolled keypoint
loop, the assignment solver's warps). Rows: every ms_deform_attn tile candidate for D = 32 at 4
levels (encoder: 4 points; decoder: 17), fp32 and bf16; the pose cost at the tiles the launcher picks
for G in {1, 5, 20, 100}; the solver at Q = 300 and at its widest block, fp32 and fp64, its columns
contiguous (Q >= G, as the launcher lays them out) or strided. A row with spill stores (STL in the
SASS) is marked; ``--sass DIR`` writes each row's SASS.
Run it without TRITON_INTERPRET: the interpreter replaces the kernels it compiles.
"""

import argparse
import importlib
import re
import subprocess
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def _signature(kernel, constexprs: dict, pointers: dict[str, str], floats: tuple[str, ...] = ()) -> dict:
    """Triton signature: constexprs as given, ``*_ptr`` args typed by ``pointers`` (default fp32),
    ``floats`` fp32 and every other argument i32."""
    signature = {}
    for param in kernel.params:
        name = param.name
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*fp32")
        else:
            signature[name] = "fp32" if name in floats else "i32"
    return signature


def specs():
    """(label, kernel, constexprs, pointer types, float args, num_warps) for every row."""
    msda = importlib.import_module("kernels.ms_deform_attn")
    oks = importlib.import_module("kernels.oks")
    assignment = importlib.import_module("kernels.linear_assignment")
    for dtype in ("fp32", "bf16"):
        io = {name: f"*{dtype}" for name in ("value_ptr", "attn_ptr", "out_ptr", "grad_out_ptr")}
        io.update(levels_ptr="*i64", dst_ptr="*i64")
        for points in (4, 17):
            for direction, kernel in (
                ("forward", msda._ms_deform_attn_fwd_kernel),
                ("backward", msda._ms_deform_attn_bwd_kernel),
            ):
                extra = {"DETERMINISTIC": False} if direction == "backward" else {}
                for block_q, warps in msda._candidates(32, direction):
                    consts = dict(L=4, P=points, BLOCK_Q=block_q, BLOCK_D=32, **extra)
                    label = f"ms_deform_attn {direction} {dtype} P={points} BLOCK_Q={block_q}"
                    yield label, kernel, consts, io, (), warps
    floats = ("w_class", "w_kpt", "w_oks", "alpha", "gamma", "area_eps")
    for g in (1, 5, 20, 100):
        block_q, block_g = oks._blocks(g)
        # the matcher passes image sizes (OKS in pixels)
        consts = dict(
            K=17, COORD_DTYPE=tl.float32, WITH_COST=True, HAS_SIZE=True, BLOCK_Q=block_q, BLOCK_G=block_g
        )
        label = f"pose_cost G={g} BLOCK_Q={block_q} BLOCK_G={block_g}"
        yield label, oks._pose_cost_kernel, consts, {"num_gt_ptr": "*i64"}, floats, 4
    for dtype in ("fp32", "fp64"):
        pointers = {
            "cost_ptr": f"*{dtype}",
            "num_gt_ptr": "*i64",
            "query_out_ptr": "*i64",
            "gt_out_ptr": "*i64",
            "valid_out_ptr": "*i1",
        }
        # Q = 300 (any G <= Q: the columns are the queries, made contiguous), and the widest block
        for block in (assignment._block(300, 20), assignment._MAX_BLOCK):
            for contiguous in (True, False):
                consts = dict(
                    DTYPE=getattr(tl, f"float{dtype[2:]}"), BLOCK=block, COLUMNS_CONTIGUOUS=contiguous
                )
                layout = "contiguous" if contiguous else "strided"
                label = f"linear_assignment {dtype} BLOCK={block} {layout} columns"
                yield (
                    label,
                    assignment._linear_assignment_kernel,
                    consts,
                    pointers,
                    (),
                    assignment._num_warps(block),
                )


def resources(kernel, consts, pointers, floats, warps) -> tuple[dict[str, int], str]:
    """REG, STACK and SHARED from cuobjdump, and the SASS's spill stores (STL); and the SASS."""
    source = ASTSource(kernel, _signature(kernel, consts, pointers, floats), consts)
    compiled = triton.compile(source, target=TARGET, options={"num_warps": warps})
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
    print(f"{'kernel and tile':60s} {'warps':>5s} {'regs':>5s} {'stack':>6s} {'shared':>7s} {'STL':>5s}")
    for label, kernel, consts, pointers, floats, warps in rows:
        r, sass = resources(kernel, consts, pointers, floats, warps)
        if args.sass:
            args.sass.mkdir(parents=True, exist_ok=True)
            (args.sass / f"{re.sub(r'[^A-Za-z0-9=]+', '_', label)}.sass").write_text(sass)
        mark = "  spills" if r["STL"] else ""
        print(f"{label:60s} {warps:5d} {r['REG']:5d} {r['STACK']:6d} {r['SHARED']:7d} {r['STL']:5d}{mark}")


if __name__ == "__main__":
    main()
