"""kernels.dispatch: which implementation runs, copies that never wait for the GPU, level tables."""

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import dispatch
from kernels.dispatch import device_table, eager_or_op, to_device, use_triton


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine CUDA tensors run Triton")
def test_cpu_tensors_run_the_kernels_under_the_interpreter():
    """tests/conftest.py sets TRITON_INTERPRET=1 without a GPU: every kernel test then runs the Triton
    code. Were CPU tensors sent to the reference, the Triton-only tests would skip, not fail."""
    assert os.environ["TRITON_INTERPRET"] == "1" and dispatch.INTERPRET
    assert use_triton(torch.empty(0))


def test_cpu_tensors_run_the_reference_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(dispatch, "INTERPRET", False)
    assert not use_triton(torch.ones(3))


def test_a_table_is_built_once_and_serves_backward_after_inference_mode():
    """The kept copy is one tensor per (rows, dtype, device) (a new copy a call would be a blocking
    host copy a step on a GPU), and a table first built under inference_mode is a normal tensor that
    a later training step may save for backward."""
    rows = [(3, 5, 0), (2, 7, 15)]
    with torch.inference_mode():
        first = device_table(rows, torch.float32, torch.device("cpu"))
    assert device_table(rows, torch.float32, torch.device("cpu")) is first
    assert not first.is_inference()
    torch.testing.assert_close(first, torch.tensor(rows, dtype=torch.float32))
    weight = torch.ones(3, requires_grad=True)
    (first * weight).sum().backward()  # saves the table for backward
    torch.testing.assert_close(weight.grad, first.sum(0))


def test_a_tensor_already_there_is_returned_as_is():
    t = torch.arange(5)
    assert to_device(t, torch.device("cpu")) is t


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_to_gpu_copy_is_asynchronous_and_exact():
    """Queued behind a long kernel, the copy neither synchronises (sync debug mode would raise) nor
    lands before the values are read on the stream; the host tensor may change afterwards."""
    busy = torch.randn(4096, 4096, device="cuda")
    host = torch.randn(1000, dtype=torch.float64)
    expected = host.clone()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        busy = busy @ busy
        moved = to_device(host, torch.device("cuda"))
        host.zero_()  # the copy reads a pinned staging copy, not this tensor
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert moved.is_cuda and moved.dtype == torch.float64
    torch.testing.assert_close(moved.cpu(), expected, rtol=0, atol=0)


def _route(*args) -> str:
    """Which way eager_or_op sends ``args``: "op" or "body"."""
    return eager_or_op(lambda *a: "body", lambda *a: "op", *args)


class _Subclass(torch.Tensor):
    pass


def test_eager_calls_run_the_body_and_interceptors_see_the_op():
    """Plain eager tensors skip the op; a torch function mode, a tensor subclass, meta tensors, vmap
    and a profiler each see the op. (Tracers: the ops' own tests trace them.)"""
    from torch.overrides import TorchFunctionMode

    x = torch.ones(3)
    assert _route(x, 2.0, None) == "body"
    with TorchFunctionMode():
        assert _route(x) == "op"
    assert _route(x, x.as_subclass(_Subclass)) == "op"
    assert _route(x, x.to("meta")) == "op"
    seen = []
    torch.vmap(lambda row: seen.append(_route(row)) or row)(torch.ones(2, 3))
    assert seen == ["op"]
    with torch.profiler.profile():
        assert _route(x) == "op"
    with _PassThrough():  # a dispatch mode on real tensors (a logger, a FLOP counter)
        assert _route(x) == "op"


class _PassThrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))
