"""Fused Triton kernels, each beside its pure-PyTorch reference.

CUDA tensors run the Triton kernels; CPU tensors run the reference, or the Triton kernels under
the interpreter when ``TRITON_INTERPRET=1`` is set before import (this is how CI tests them).
"""

from kernels.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference  # noqa: E402
