"""ms_deform_attn: the Triton kernels (Triton's interpreter on CPU) against the float64 reference."""

import importlib
import math

import numpy as np
import pytest
import torch
import triton

from jcra.deformable_attention import MSDeformAttn
from kernels.dispatch import use_triton
from kernels.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference

# the module itself (the package re-exports a function of that name)
msda = importlib.import_module("kernels.ms_deform_attn")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not use_triton(torch.empty(0, device=DEVICE)), reason="Triton kernels not active"
)

# (dtype, atol, rtol) against a float64 reference on the same (rounded) inputs, about twice what
# PyTorch's own fp32 / reduced-precision arithmetic gives on such sums.
DTYPES = [
    (torch.float32, 2e-5, 2e-5),
    (torch.bfloat16, 3e-2, 2e-2),
    (torch.float16, 4e-3, 3e-3),
]

# (N, Lq, M, D, shapes, P): one level, five levels, odd maps, P up to 17, D in {8, 16, 32, 64} and 24,
# Lq past one block of queries.
CASES = [
    (1, 5, 1, 8, ((7, 5),), 1),
    (2, 9, 2, 16, ((6, 9), (3, 5)), 3),
    (1, 7, 2, 32, ((5, 5), (4, 3), (2, 2)), 8),
    (2, 4, 1, 64, ((9, 7), (5, 4), (3, 2), (1, 1)), 17),
    (2, 6, 3, 24, ((8, 6), (4, 3), (2, 2), (1, 2), (1, 1)), 2),
    (1, 300, 2, 8, ((9, 11), (4, 6)), 2),  # more queries than one program's block holds
]


def make_inputs(N, Lq, M, D, shapes, P, dtype, seed, outside=0.3):
    """Fresh random inputs; locations spread `outside` beyond [0, 1] on each side."""
    gen = torch.Generator().manual_seed(seed)
    S, L = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(N, S, M, D, generator=gen).to(DEVICE, dtype)
    loc = (torch.rand(N, Lq, M, L, P, 2, generator=gen) * (1 + 2 * outside) - outside).to(DEVICE)
    attn = torch.rand(N, Lq, M, L, P, generator=gen).to(DEVICE, dtype)
    return value, loc, attn


def run(fn, value, shapes, loc, attn, grad):
    """Output and the three gradients of fn for an upstream gradient `grad`."""
    inputs = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = fn(inputs[0], shapes, inputs[1], inputs[2])
    out.backward(grad)
    return [out.detach()] + [t.grad for t in inputs]


def fused(value, shapes, loc, attn, **kwargs):
    return ms_deform_attn(value, shapes, None, loc, attn, **kwargs)


def reference64(value, shapes, loc, attn):
    return ms_deform_attn_reference(value.double(), shapes, loc.double(), attn.double())


def assert_matches(got, want, atol, rtol, names=("output", "grad value", "grad locations", "grad weights")):
    """Output and value and weight gradients (in the inputs' dtype) within ``atol``/``rtol``; the
    location gradient, fp32 from exact products of the inputs whatever their dtype, within fp32's."""
    for name, g, w in zip(names, got, want, strict=True):
        assert not g.isnan().any(), f"{name} has NaN (unwritten elements?)"
        scale = max(w.abs().max().item(), 1.0)
        a, r = DTYPES[0][1:] if name == "grad locations" else (atol, rtol)
        torch.testing.assert_close(
            g.double(), w.double(), atol=a * scale, rtol=r, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.fixture
def poisoned(monkeypatch):
    """Fresh float allocations come back NaN-filled, so any element a kernel forgets to write shows."""

    def poison(alloc):
        def wrapped(*args, **kwargs):
            out = alloc(*args, **kwargs)
            return out.fill_(math.nan) if out.is_floating_point() else out

        return wrapped

    monkeypatch.setattr(torch, "empty", poison(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poison(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", poison(torch.Tensor.new_empty))


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_matches_reference(case, dtype, atol, rtol, deterministic, poisoned):
    N, Lq, M, D, shapes, P = CASES[case]
    value, loc, attn = make_inputs(N, Lq, M, D, shapes, P, dtype, seed=1000 * case + 7)
    grad = torch.randn(N, Lq, M * D, device=DEVICE).to(dtype)
    got = run(lambda *a: fused(*a, deterministic=deterministic), value, shapes, loc, attn, grad)
    want = run(reference64, value, shapes, loc, attn, grad.double())
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == torch.float32
    assert_matches(got, want, atol, rtol)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_locations_on_the_grid_lines_match_reference(deterministic, poisoned):
    """Where bilinear sampling has kinks: the map's borders 0 and 1, pixel edges k / W and pixel centres
    (k + 0.5) / W, each axis drawn from them; the one-sided gradient there must be grid_sample's. Sizes
    are powers of two, so these locations and their pixels are exact in fp32 and fp64 alike (a rounded
    one could fall on the other side of a kink in one of them)."""
    N, Lq, M, D, shapes, P = 2, 6, 2, 8, ((4, 8), (2, 1)), 4
    value, _, attn = make_inputs(N, Lq, M, D, shapes, P, torch.float32, seed=21)
    gen = torch.Generator().manual_seed(22)
    loc = torch.empty(N, Lq, M, len(shapes), P, 2)
    for level, (h, w) in enumerate(shapes):
        for axis, size in enumerate((w, h)):
            lines = torch.cat([torch.arange(size + 1) / size, (torch.arange(size) + 0.5) / size])
            pick = torch.randint(len(lines), loc[..., level, :, axis].shape, generator=gen)
            loc[..., level, :, axis] = lines[pick]
    loc = loc.to(DEVICE)
    grad = torch.randn(N, Lq, M * D, device=DEVICE)
    got = run(lambda *a: fused(*a, deterministic=deterministic), value, shapes, loc, attn, grad)
    assert_matches(got, run(reference64, value, shapes, loc, attn, grad.double()), *DTYPES[0][1:])


@pytest.mark.parametrize("path", ["triton", "reference"])
@pytest.mark.parametrize(("N", "Lq"), [(0, 5), (2, 0)], ids=["no-images", "no-queries"])
def test_empty_batches_and_query_sets(N, Lq, path, monkeypatch):
    if path == "reference":
        monkeypatch.setattr(msda, "use_triton", lambda t: False)
    shapes = ((4, 5), (3, 2))
    value, loc, attn = make_inputs(N, Lq, 2, 8, shapes, 3, torch.float32, seed=23)
    got = run(fused, value, shapes, loc, attn, torch.randn(N, Lq, 16, device=DEVICE))
    assert got[0].shape == (N, Lq, 16)
    assert [g.shape for g in got[1:]] == [value.shape, loc.shape, attn.shape]
    assert not got[1].any()  # nothing sampled: no gradient reaches the values


def _ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` numbers at each value of ``x`` (fp64)."""
    bits, min_exponent = {torch.bfloat16: (7, -126), torch.float16: (10, -14)}[dtype]
    _, exponent = torch.frexp(x.abs())
    return torch.pow(2.0, (exponent - 1).clamp(min=min_exponent).double() - bits)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_reduced_precision_sums_in_fp32_and_rounds_once(case, dtype, deterministic):
    """Output, value and weight gradients in bf16/fp16: each element within 2 ulps of the exact sum
    (one rounding, to nearest on GPUs, towards zero in the interpreter) plus 2^-18 of the sum of its
    terms' magnitudes (fp32 accumulation). Sums with cancellation show any term rounded to the dtype
    on the way, which the scale-relative tolerances above cannot. The locations lie on a 2^-16 grid,
    where the kernel's fp32 pixel coordinate loc * W - 0.5 is exact, as the float64 reference's:
    elsewhere its rounding moves a corner weight proportional to a fraction f by up to 2^-22 / f of
    itself, past the 2^-18 where the sum cancels (one gradient seed in about 150 did so)."""
    N, Lq, M, D, shapes, P = CASES[case]
    value, loc, attn = make_inputs(N, Lq, M, D, shapes, P, dtype, seed=1000 * case + 7)
    loc = torch.round(loc * 2.0**16) / 2.0**16
    gen = torch.Generator().manual_seed(1000 * case + 8)
    grad = torch.randn(N, Lq, M * D, generator=gen).to(DEVICE, dtype)
    got = run(lambda *a: fused(*a, deterministic=deterministic), value, shapes, loc, attn, grad)
    want = run(reference64, value, shapes, loc, attn, grad.double())
    # every term's magnitude: the same sums over absolute values (bilinear weights are >= 0)
    magnitude = run(reference64, value.abs(), shapes, loc, attn.abs(), grad.double().abs())
    for name, i in (("output", 0), ("grad value", 1), ("grad weights", 3)):
        bound = 2 * _ulp(want[i], dtype) + 2.0**-18 * magnitude[i].abs()
        excess = ((got[i].double() - want[i]).abs() / bound).max().item()
        assert excess <= 1.0, f"{name}: error {excess:.1f} times its bound"


@pytest.mark.skipif(DEVICE != "cuda", reason="autotuning runs only for CUDA launches")
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES[:2], ids=["float32", "bfloat16"])
def test_autotuned_launch_matches_reference(dtype, atol, rtol):
    """A launch large enough to autotune (N * Lq * M >= 2^14) runs the chosen config correctly, and
    the atomic value gradient is zeroed again after the tuning runs."""
    shapes = ((40, 60), (20, 30), (10, 15), (5, 8))
    S = sum(h * w for h, w in shapes)
    value, loc, attn = make_inputs(2, S, 8, 32, shapes, 4, dtype, seed=11)
    assert 2 * S * 8 >= msda._TUNE_MIN_ROWS
    grad = torch.randn(2, S, 8 * 32, device=DEVICE).to(dtype)
    got = run(fused, value, shapes, loc, attn, grad)
    want = run(reference64, value, shapes, loc, attn, grad.double())
    assert_matches(got, want, atol, rtol)


@pytest.mark.parametrize(
    ("block_d", "direction", "expected"),
    [  # (BLOCK_Q, warps) holding BLOCK_Q * BLOCK_D / (32 * warps) = 4 to 16 (backward 8) elements a thread
        (8, "forward", [(128, 4), (64, 4)]),
        (32, "forward", [(64, 4), (32, 4), (16, 4), (64, 8), (32, 8)]),
        (64, "backward", [(16, 4), (8, 4), (32, 8)]),
        (512, "forward", [(4, 4)]),  # 16 elements: just in budget
        (512, "backward", [(4, 4)]),  # 16 > 8: none fits, the smallest tile rather than none
    ],
)
def test_launch_candidates_fit_the_register_budget(block_d, direction, expected):
    assert msda._candidates(block_d, direction) == expected


def test_noncontiguous_inputs_and_sum_backward():
    """Views with odd strides in, and the expanded (stride-0) gradient that out.sum() sends back."""
    N, Lq, M, D, shapes, P = 2, 5, 2, 16, ((5, 7), (3, 3)), 4
    value, loc, attn = make_inputs(N, Lq, M, D, shapes, P, torch.float32, seed=3)
    value_t = value.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    loc_t = torch.stack([loc, loc], dim=-1)[..., 0]  # same values, stride 2 in the last dim
    attn_t = attn.transpose(1, 2).contiguous().transpose(1, 2)
    assert not value_t.is_contiguous() and not loc_t.is_contiguous() and not attn_t.is_contiguous()
    one = torch.tensor(1.0, device=DEVICE)
    got = run(lambda v, s, lc, a: fused(v, s, lc, a).sum(), value_t, shapes, loc_t, attn_t, one)
    want = run(lambda v, s, lc, a: reference64(v, s, lc, a).sum(), value, shapes, loc, attn, one)
    assert_matches(got, want, 2e-5, 2e-5)


def test_spatial_shapes_as_tensors():
    """Deformable-DETR's calling convention: shapes and level starts as int64 tensors."""
    shapes = ((6, 5), (3, 3))
    value, loc, attn = make_inputs(1, 4, 2, 8, shapes, 2, torch.float32, seed=11)
    shapes_t = torch.tensor(shapes, dtype=torch.int64, device=DEVICE)
    starts_t = torch.tensor([0, 30], dtype=torch.int64, device=DEVICE)
    out = ms_deform_attn(value, shapes_t, starts_t, loc, attn)
    torch.testing.assert_close(out.double(), reference64(value, shapes, loc, attn), atol=1e-5, rtol=1e-5)
    # numpy sizes were refused as "sizes must be integers, got ((np.int64(6), ...)"
    torch.testing.assert_close(ms_deform_attn(value, np.array(shapes), None, loc, attn), out, rtol=0, atol=0)


@pytest.mark.parametrize("far", [1e9, float("inf"), float("nan")], ids=["huge", "inf", "nan"])
def test_far_outside_and_non_finite_locations_give_zero(far):
    """Locations far off the map, infinite or NaN, sample zeros and send back zero gradients."""
    shapes = ((4, 4), (2, 2))
    value, loc, attn = make_inputs(1, 3, 1, 8, shapes, 2, torch.float32, seed=5)
    loc = torch.full_like(loc, far)
    loc[0, 0] = -far
    loc[0, 1, ..., 1] = 0.5  # y on the map, x not
    got = run(fused, value, shapes, loc, attn, torch.ones(1, 3, 8, device=DEVICE))
    for t in got:
        assert torch.count_nonzero(t) == 0


def test_deterministic_backward_is_bitwise_reproducible():
    shapes = ((9, 8), (5, 4))
    # Few positions, many queries: many samples land on the same value rows.
    value, loc, attn = make_inputs(1, 40, 2, 16, shapes, 4, torch.float32, seed=21)
    grad = torch.randn(1, 40, 32, device=DEVICE)
    first = run(lambda *a: fused(*a, deterministic=True), value, shapes, loc, attn, grad)
    second = run(lambda *a: fused(*a, deterministic=True), value, shapes, loc, attn, grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_deterministic_backward_gathers_and_atomic_does_not(monkeypatch):
    """Which value-gradient path ran (both give the same values, and the interpreter's atomics are
    serial, so only this tells them apart on a CPU)."""
    launches = []
    kernel = msda._gather_grad_value_kernel

    class Spy:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(msda, "_gather_grad_value_kernel", Spy())
    shapes = ((5, 4), (2, 3))
    value, loc, attn = make_inputs(1, 6, 2, 8, shapes, 2, torch.float32, seed=4)
    grad = torch.randn(1, 6, 16, device=DEVICE)
    run(lambda *a: fused(*a, deterministic=False), value, shapes, loc, attn, grad)
    assert launches == []
    run(lambda *a: fused(*a, deterministic=True), value, shapes, loc, attn, grad)
    assert launches == [(1 * 26 * 2,)]  # one program per value row (N * S * M)


def test_training_after_a_first_call_under_inference_mode():
    """The level table cached by the first call must not be an inference tensor, or every later
    training call with those shapes fails to save it for backward."""
    shapes = ((4, 7), (2, 5))  # shapes no other test uses, so this call fills the cache
    value, loc, attn = make_inputs(1, 3, 1, 8, shapes, 2, torch.float32, seed=8)
    with torch.inference_mode():
        fused(value, shapes, loc, attn)
    got = run(fused, value, shapes, loc, attn, torch.ones(1, 3, 8, device=DEVICE))
    assert_matches(
        got,
        run(reference64, value, shapes, loc, attn, torch.ones(1, 3, 8, device=DEVICE).double()),
        2e-5,
        2e-5,
    )


def test_deterministic_follows_torch_switch(monkeypatch):
    calls = []
    original = msda._ms_deform_attn_backward_triton
    monkeypatch.setattr(
        msda, "_ms_deform_attn_backward_triton", lambda *a: calls.append(a[-1]) or original(*a)
    )
    shapes = ((3, 3),)
    value, loc, attn = make_inputs(1, 2, 1, 8, shapes, 1, torch.float32, seed=2)
    value.requires_grad_()
    torch.use_deterministic_algorithms(True)
    try:
        fused(value, shapes, loc, attn).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    fused(value, shapes, loc, attn).sum().backward()
    assert calls == [True, False]


def test_reference_gradcheck_float64():
    shapes = ((3, 4), (2, 2))
    value, loc, attn = make_inputs(1, 2, 2, 3, shapes, 2, torch.float64, seed=9, outside=0.2)
    # Keep locations off the pixel grid lines, where bilinear sampling has kinks.
    loc = loc.double().cpu()
    inputs = [t.cpu().double().requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(lambda v, lc, a: ms_deform_attn_reference(v, shapes, lc, a), inputs)


def test_float64_values_run_in_float64():
    """The kernels sum in fp32; fp64 values take the fp64 reference, on fp64 locations, on every
    device, so the public function passes gradcheck."""
    shapes = ((3, 4), (2, 2))
    value, loc, attn = make_inputs(1, 2, 2, 3, shapes, 2, torch.float64, seed=9, outside=0.2)
    inputs = [t.double().requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(lambda v, lc, a: fused(v, shapes, lc, a), inputs)


def test_more_batch_heads_than_the_grid_holds_are_refused_by_the_kernels():
    shapes = ((5, 4), (2, 3))
    value, loc, attn = make_inputs(1, 3, 1, 8, shapes, 2, torch.float32, seed=0)
    n = msda.MAX_BATCH_HEADS + 1
    many = [t.expand(n, *t.shape[1:]) for t in (value, loc, attn)]
    with pytest.raises(ValueError, match=r"value: N \* M = 65536 exceeds 65535"):
        fused(many[0], shapes, many[1], many[2])
    # the reference, which has no grid, runs them (fp64 values take it)
    assert fused(many[0].double(), shapes, many[1], many[2]).shape == (n, 3, 8)


def test_the_grid_limit_itself_is_launched():
    """N * M = 65535 fills the grid's second axis and is legal (a stub kernel: 65535 programs would take
    minutes under the interpreter)."""
    grids = []

    class Stub:
        def __getitem__(self, grid):
            return lambda *args, **meta: grids.append(grid)

    msda._launch(Stub(), Stub(), "forward", 3, msda.MAX_BATCH_HEADS, torch.zeros(1), BLOCK_D=8)
    assert len(grids) == 1 and grids[0][1] == 65535


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # fakes' dtypes are checked too
def test_opcheck(dtype):
    shapes = [5, 4, 2, 3]  # flattened (H, W) pairs, as the op takes them
    value, loc, attn = make_inputs(2, 3, 2, 8, ((5, 4), (2, 3)), 2, dtype, seed=4)
    value.requires_grad_()
    levels = torch.tensor([[5, 4, 0], [2, 3, 20]], device=DEVICE)  # (H, W, start) per level
    args = (value, shapes, levels, loc.requires_grad_(), attn.requires_grad_(), False)
    torch.library.opcheck(torch.ops.jcra.ms_deform_attn.default, args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_reference_backward_in_closed_form_equals_autograd_of_the_reference(dtype):
    """grid_sampler_2d_backward per level against autograd through grid_sample, one level of 1 x 7
    and one of 3 x 1 among them, locations off the maps included, in each input's dtype."""
    shapes = ((4, 5), (1, 7), (3, 1))
    value, loc, attn = make_inputs(2, 5, 3, 6, shapes, 2, dtype, seed=11, outside=0.3)
    value, loc, attn = (t.cpu() for t in (value, loc, attn))
    grad = torch.randn(2, 5, 18, generator=torch.Generator().manual_seed(12)).to(dtype)
    inputs = [t.detach().requires_grad_() for t in (value, loc, attn)]
    want = torch.autograd.grad(ms_deform_attn_reference(*inputs[:1], shapes, *inputs[1:]), inputs, grad)
    got = msda.ms_deform_attn_reference_backward(grad, value, shapes, loc, attn)
    for g, w, name in zip(got, want, ("value", "locations", "weights"), strict=True):
        assert g.dtype == w.dtype and g.is_contiguous(), name
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", ["triton", "reference"])
def test_opcheck_backward(path, dtype, monkeypatch):
    if path == "reference":
        monkeypatch.setattr(msda, "use_triton", lambda t: False)
    shapes = [5, 4, 2, 3]
    value, loc, attn = make_inputs(2, 3, 2, 8, ((5, 4), (2, 3)), 2, dtype, seed=4)
    levels = torch.tensor([[5, 4, 0], [2, 3, 20]], device=DEVICE)
    grad = torch.randn(2, 3, 16, device=DEVICE).to(dtype)
    for deterministic in (False, True):
        args = (grad, value, shapes, levels, loc, attn, deterministic)
        torch.library.opcheck(torch.ops.jcra.ms_deform_attn_backward.default, args)


def test_a_training_step_counts_its_flops_on_the_reference_path(monkeypatch):
    """A dispatch mode (FlopCounterMode, an MFU measurement) saw the reference backward's functorch
    wrappers and failed: "Cannot access storage of TensorWrapper"."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setattr(msda, "use_triton", lambda t: False)
    shapes = ((4, 5), (3, 2))
    value, loc, attn = (t.requires_grad_() for t in make_inputs(1, 3, 2, 8, shapes, 2, torch.float32, 5))
    with FlopCounterMode(display=False):
        fused(value, shapes, loc, attn).sum().backward()
    assert value.grad.isfinite().all() and loc.grad.isfinite().all() and attn.grad.isfinite().all()


def test_compiled_module_fullgraph_matches_eager():
    torch.manual_seed(0)
    module = MSDeformAttn(embed_dim=32, num_heads=4, num_levels=2, num_points=3).to(DEVICE)
    torch.nn.init.normal_(module.attention_weights.weight, std=0.5)  # non-uniform weights
    shapes = ((6, 5), (3, 3))
    S = sum(h * w for h, w in shapes)
    query, value = torch.randn(2, 7, 32, device=DEVICE), torch.randn(2, S, 32, device=DEVICE)
    ref_points = torch.rand(2, 7, 2, 2, device=DEVICE)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(
        compiled(query, ref_points, value, shapes), module(query, ref_points, value, shapes)
    )


@pytest.mark.parametrize("path", ["triton", "reference"])
def test_compiled_backward_matches_eager(path, monkeypatch):
    """Compiled training graphs call the backward op below the autograd key, on either path."""
    if path == "reference":
        monkeypatch.setattr(msda, "use_triton", lambda t: False)
    torch.manual_seed(2)
    module = MSDeformAttn(embed_dim=32, num_heads=4, num_levels=2, num_points=3).to(DEVICE)
    shapes = ((6, 5), (3, 3))
    query = torch.randn(2, 7, 32, device=DEVICE, requires_grad=True)
    value = torch.randn(2, 39, 32, device=DEVICE, requires_grad=True)
    ref_points = torch.rand(2, 7, 2, 2, device=DEVICE)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (module, compiled):
        fn(query, ref_points, value, shapes).square().sum().backward()
        grads.append([query.grad, value.grad] + [p.grad for p in module.parameters()])
        query.grad = value.grad = None
        module.zero_grad(set_to_none=True)
    for eager, comp in zip(*grads, strict=True):
        torch.testing.assert_close(comp, eager)


@pytest.mark.parametrize("shape", [(1, 2, 2), (1, 2, 2, 3), (1, 2, 3, 2), (1, 2, 2, 4, 2)])
def test_module_names_reference_points_of_another_shape(shape):
    """[N, Lq, 2] with Lq == L broadcast query q's reference to level q, without an error."""
    module = MSDeformAttn(embed_dim=32, num_heads=4, num_levels=2, num_points=3)
    shapes = ((3, 4), (2, 2))
    with pytest.raises(ValueError, match=r"reference_points must be \[N, Lq, L, 2\] or \[N, Lq, L, P, 2\]"):
        module(torch.randn(1, 2, 32), torch.rand(shape), torch.randn(1, 16, 32), shapes)


def test_module_fused_equals_reference_and_respects_padding():
    torch.manual_seed(1)
    module = MSDeformAttn(embed_dim=32, num_heads=4, num_levels=2, num_points=4).to(DEVICE)
    shapes = ((5, 6), (3, 3))
    S = sum(h * w for h, w in shapes)
    query, value = torch.randn(1, 6, 32, device=DEVICE), torch.randn(1, S, 32, device=DEVICE)
    ref_points = torch.rand(1, 6, 2, 2, device=DEVICE)
    mask = torch.rand(1, S, device=DEVICE) < 0.3
    out = module(query, ref_points, value, shapes, value_padding_mask=mask)
    module.use_fused = False
    torch.testing.assert_close(out, module(query, ref_points, value, shapes, value_padding_mask=mask))
    # Padded positions are zeroed before sampling: changing them changes nothing.
    noisy = torch.where(mask[..., None], torch.randn_like(value) * 100, value)
    torch.testing.assert_close(out, module(query, ref_points, noisy, shapes, value_padding_mask=mask))


def test_module_initialisation_is_deformable_detrs():
    module = MSDeformAttn(embed_dim=64, num_heads=8, num_levels=4, num_points=4)
    bias = module.sampling_offsets.bias.view(8, 4, 4, 2)
    assert torch.count_nonzero(module.sampling_offsets.weight) == 0
    assert torch.count_nonzero(module.attention_weights.weight) == 0
    # Head 0 points along +x at radius 1..P on every level; head 2 (90 degrees) along +y.
    torch.testing.assert_close(bias[0, 2, :, 0], torch.arange(1.0, 5.0))
    torch.testing.assert_close(bias[2, 1, :, 1], torch.arange(1.0, 5.0))
    assert bias[:, :, 0].abs().max(-1).values.eq(1).all()  # on the unit square's border


BAD_INPUTS = [
    ("value", lambda v, s, st, lc, a: (v[0], s, st, lc, a), "value must be"),
    ("value", lambda v, s, st, lc, a: ((v * 10).long(), s, st, lc, a), "value must be a floating"),
    ("spatial_shapes", lambda v, s, st, lc, a: (v, [(5, 4)], None, lc[:, :, :, :1], a[:, :, :, :1]), "S=26"),
    (
        "spatial_shapes",
        lambda v, s, st, lc, a: (v, torch.tensor([5, 4, 2, 3]), st, lc, a),
        "spatial_shapes must",
    ),
    ("spatial_shapes", lambda v, s, st, lc, a: (v, [(5, 4), (0, 3)], st, lc, a), "positive"),
    ("spatial_shapes", lambda v, s, st, lc, a: (v, [(5.5, 4), (2, 3)], st, lc, a), "must be integers"),
    (
        "spatial_shapes",
        lambda v, s, st, lc, a: (v, torch.ones(2, 2, dtype=torch.bool), st, lc, a),
        "integers",
    ),
    ("level_start_index", lambda v, s, st, lc, a: (v, s, [0, 19], lc, a), "level_start_index"),
    ("level_start_index", lambda v, s, st, lc, a: (v, s, [0, 20.5], lc, a), "level_start_index"),
    ("level_start_index", lambda v, s, st, lc, a: (v, s, torch.tensor(20), lc, a), "level_start_index must"),
    ("sampling_locations", lambda v, s, st, lc, a: (v, s, st, lc[..., :1], a), "sampling_locations must be"),
    ("sampling_locations", lambda v, s, st, lc, a: (v, s, st, lc[:, :, :1], a), "sampling_locations must be"),
    ("attention_weights", lambda v, s, st, lc, a: (v, s, st, lc, a[..., :1]), "attention_weights must be"),
    (
        "attention_weights",
        lambda v, s, st, lc, a: (v, s, st, lc, a.to("meta")),
        "attention_weights is on meta",
    ),
]


@pytest.mark.parametrize(
    "argument,mutate,message", BAD_INPUTS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_INPUTS)]
)
def test_bad_input_names_the_argument(argument, mutate, message):
    shapes = ((5, 4), (2, 3))
    value, loc, attn = make_inputs(1, 3, 2, 8, shapes, 2, torch.float32, seed=0)
    with pytest.raises(ValueError, match=message) as err:
        ms_deform_attn(*mutate(value, shapes, [0, 20], loc, attn))
    assert argument in str(err.value)


def test_deterministic_must_be_a_bool_or_none():
    shapes = ((5, 4), (2, 3))
    value, loc, attn = make_inputs(1, 3, 2, 8, shapes, 2, torch.float32, seed=0)
    with pytest.raises(ValueError, match="deterministic must be True, False or None, got 'no'"):
        ms_deform_attn(value, shapes, None, loc, attn, deterministic="no")


def test_offsets_past_int32():
    """N*S*M*D above 2^31: samples at the far end of `value` must read the right elements.

    4.3 GB of fp16 that is never initialised except where sampled; samples sit on pixel centres, so
    each output is exactly a weighted sum of picked elements (no reference pass over the whole tensor).
    Only the forward kernel: the backward shares its offset helpers but would need an 8.6 GB fp32
    value gradient. Triton's interpreter does integer arithmetic in wide numpy types, so on CPU this
    checks the indexing but cannot show an int32 overflow; on a GPU it can.
    """
    H = W = 4100
    N, M, D, P = 2, 1, 64, 3
    assert N * H * W * M * D > 2**31
    value = torch.empty(N, H * W, M, D, dtype=torch.float16, device=DEVICE)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.stack(
        [torch.randint(W - 50, W, (P,), generator=gen), torch.randint(H - 50, H, (P,), generator=gen)], -1
    )
    positions = pixels[:, 1] * W + pixels[:, 0]
    picked = torch.randn(P, D, generator=gen).half()
    value[1, positions.to(DEVICE), 0] = picked.to(DEVICE)
    loc = torch.full((N, 1, M, 1, P, 2), 5.0)  # image 0 samples off the map: nothing is read there
    loc[1, 0, 0, 0] = (pixels.float() + 0.5) / torch.tensor([W, H], dtype=torch.float32)
    attn = torch.rand(N, 1, M, 1, P, generator=gen)
    out = ms_deform_attn(value, ((H, W),), None, loc.to(DEVICE), attn.to(DEVICE)).cpu()
    expected = (attn[1, 0, 0, 0][:, None] * picked.float()).sum(0)
    torch.testing.assert_close(out[1, 0].float(), expected, atol=2e-3, rtol=2e-3)
    assert torch.count_nonzero(out[0]) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("use_fused", [True, False])
def test_module_forward_never_synchronises_with_the_host(use_fused):
    """Eager forward, fused or reference, after a first call (which builds the level table and, for
    large launches, autotunes): no call waits for the GPU (sync debug mode raises on one)."""
    module = MSDeformAttn(embed_dim=32, num_heads=4, num_levels=2, num_points=3).cuda()
    module.use_fused = use_fused
    shapes = ((6, 5), (3, 3))
    query, value = torch.randn(2, 7, 32, device="cuda"), torch.randn(2, 39, 32, device="cuda")
    ref_points = torch.rand(2, 7, 2, 2, device="cuda")
    expected = module(query, ref_points, value, shapes)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = module(query, ref_points, value, shapes)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out, expected)


def test_tuned_tiles_name_each_directions_picks(monkeypatch):
    """What the benchmarks record of the autotuner: its pick per tuning key and direction."""
    monkeypatch.setattr(
        msda._fwd_tuned, "cache", {(4, 4, 32, "torch.bfloat16"): triton.Config({"BLOCK_Q": 64}, num_warps=4)}
    )
    monkeypatch.setattr(msda._bwd_tuned, "cache", {})
    assert msda.tuned_tiles() == {
        "forward": {"(4, 4, 32, 'torch.bfloat16')": "BLOCK_Q=64 warps=4"},
        "backward": {},
    }
