"""Fused Triton kernels, each beside its pure-PyTorch reference.

CUDA tensors run the Triton kernels; CPU tensors run the reference, or the Triton kernels under
the interpreter when ``TRITON_INTERPRET=1`` is set before import (this is how CI tests them).
"""

from kernels.linear_assignment import linear_assignment as linear_assignment
from kernels.ms_deform_attn import ms_deform_attn as ms_deform_attn
from kernels.ms_deform_attn import ms_deform_attn_reference as ms_deform_attn_reference
from kernels.oks import pairwise_oks as pairwise_oks
from kernels.oks import pose_matching_cost as pose_matching_cost
