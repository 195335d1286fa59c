"""Without a GPU, run the Triton kernels through Triton's interpreter so CI tests the kernel code.

The variable must be set before ``triton.jit`` decorates anything, hence here, before any import
of ``kernels``.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
