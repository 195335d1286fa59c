"""Which compiled variants of the Triton kernels a piece of code launches, counted without a GPU.

Triton compiles a kernel once per *specialisation* of its arguments: their types, the constexprs, and
for every int or pointer not listed in ``do_not_specialize`` whether it is 1 or divisible by 16. On a
GPU each specialisation a process meets for the first time is a JIT compile. Under Triton's
interpreter (``TRITON_INTERPRET=1``, set before ``kernels`` is imported) :func:`recorded_launches`
keys every launch the way ``JITFunction.run`` keys its compiled kernels.
"""

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch
from triton.backends.compiler import BaseBackend
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction, create_function_from_signature


@contextlib.contextmanager
def recorded_launches(execute: bool = True) -> Iterator[list[tuple[str, str]]]:
    """Within the block, each Triton launch appends (kernel name, specialisation key) to the list
    yielded; two launches share a compiled kernel exactly when their entries are equal.

    ``execute=False`` records launches without running them (sizes too large for the interpreter): the
    tensors a launch gets are zero-filled instead, so the code after it reads well-formed values.
    """
    launches: list[tuple[str, str]] = []
    binders = {}
    run = InterpretedFunction.run

    def recording_run(kernel, *args, grid, warmup, **kwargs):
        if kernel not in binders:
            jit = JITFunction(kernel.fn, **kernel.kwargs)
            binders[kernel] = create_function_from_signature(jit.signature, jit.params, BaseBackend)
        _, specialisation, options = binders[kernel](*args, **kwargs)
        launches.append((kernel.fn.__name__, f"{specialisation} {sorted(options.items())}"))
        if execute:
            return run(kernel, *args, grid=grid, warmup=warmup, **kwargs)
        for arg in args:
            if isinstance(arg, torch.Tensor):
                arg.zero_()
        return None

    with mock.patch.object(InterpretedFunction, "run", recording_run):
        yield launches


def compiles(launches: list[tuple[str, str]]) -> dict[str, int]:
    """Distinct specialisations per kernel name: what a process compiles for these launches."""
    counts: dict[str, int] = {}
    for name, _ in set(launches):
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
