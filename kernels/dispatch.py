"""Which implementation a custom op runs for given tensors.

Every op in ``kernels`` is an opaque ``torch.library.custom_op`` whose body calls
:func:`use_triton`: CUDA tensors run the Triton kernels; CPU tensors run the pure-PyTorch
reference, or the Triton kernels through Triton's interpreter when ``TRITON_INTERPRET=1`` was set
before import (how CI tests the kernel code without a GPU). Keeping the choice inside an opaque op,
rather than registering a ``triton_op``, lets ``torch.compile(fullgraph=True)`` trace models on
machines where Triton has no active driver (CPU-only CI) as well as on GPUs. Ops without gradients
(OKS, matching cost, assignment) skip the op when called eagerly (:func:`eager_or_op`).
"""

import functools
import os

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    """True when ``tensor``'s op should run the Triton kernels rather than the reference."""
    return tensor.is_cuda or (INTERPRET and tensor.device.type == "cpu")


def eager_or_op(body, op, *args):
    """``op(*args)``, or for an op without gradients called eagerly, ``body(*args)`` under no_grad:
    the same result without the custom op's dispatch (about 10 us of host time a call, which the
    matcher pays every training step).

    Whatever intercepts ops must see the op itself (opaque, its outputs shaped by its fake), so the op
    runs under tracers (Dynamo, export, jit; make_fx and FakeTensorMode as dispatch modes), functorch
    transforms (vmap, grad, functionalize), torch function modes, a profiler (whose tables then name
    the op), and for meta tensors or tensor subclasses among ``args``.
    """
    if (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._are_functorch_transforms_active()
        or torch._C._is_torch_function_mode_enabled()
        or _get_current_dispatch_mode() is not None
        or torch._C._autograd._profiler_enabled()
        or any(
            isinstance(a, torch.Tensor) and (type(a) is not torch.Tensor or a.device.type == "meta")
            for a in args
        )
    ):
        return op(*args)
    with torch.no_grad():
        return body(*args)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device`` without a host synchronisation.

    A plain ``.to("cuda")`` of a CPU tensor returns only once the CUDA stream has drained (PyTorch
    synchronises the stream after a blocking copy); a non-blocking copy from pinned memory queues
    behind the stream's work instead, and the caching host allocator keeps the pinned block alive
    until the copy is done.
    """
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def device_table(rows, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small [R, C] table of Python numbers (sizes, offsets) on ``device``, with no host copy in
    steady state.

    Compiled, it is built on the device from the numbers: a tensor made from a Python list would be
    a host constant, copied (blocking) in every call, and Inductor makes no CUDA graph of a graph
    that holds one. Eager, one copy per table, dtype and device, kept for later calls; never from
    inside an opaque op, where a CUDA graph's warm-up would put the kept copy in the graph's memory.
    """
    if torch.compiler.is_compiling():
        values = [torch.full((), value, dtype=dtype, device=device) for row in rows for value in row]
        return torch.stack(values).view(len(rows), -1)
    return _cached_table(tuple(tuple(row) for row in rows), dtype, device)


@functools.lru_cache(maxsize=256)
def _cached_table(rows: tuple[tuple, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # a normal tensor even when first built under inference_mode: later training calls save it for
    # backward, which an inference tensor refuses
    with torch.inference_mode(False):
        return to_device(torch.tensor(rows, dtype=dtype), device)
