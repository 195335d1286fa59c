"""Shared builders for the model tests: the tiny config on the reference attention path, padded batches."""

import pytest
import torch

from jcra import build_model
from kernels.oks import pose_matching_cost_reference


def randomise_zero_init(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every all-zero parameter (zero-initialised heads and offsets) small random values, so
    gradients reach the layers before them and the outputs depend on every input."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def pad_batch(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [3, h, w] to a zero-padded batch [B, 3, H, W] and its mask [B, H, W] (True where padded)."""
    H = max(i.shape[1] for i in images)
    W = max(i.shape[2] for i in images)
    batch = torch.zeros(len(images), 3, H, W)
    mask = torch.ones(len(images), H, W, dtype=torch.bool)
    for b, img in enumerate(images):
        batch[b, :, : img.shape[1], : img.shape[2]] = img
        mask[b, : img.shape[1], : img.shape[2]] = False
    return batch, mask


@pytest.fixture
def tiny_model():
    """A seeded ``jcra_tiny`` without dropout, on the plain-PyTorch attention path (the interpreter is
    far too slow for whole models; the fused op has its own tests)."""
    torch.manual_seed(0)
    return build_model("jcra_tiny", use_fused_kernels=False, dropout=0.0)


@pytest.fixture(autouse=True)
def reference_matching_cost(monkeypatch):
    """The matcher's cost by plain PyTorch: the Triton cost kernel has its own tests, and under the
    interpreter it would dominate these tests' time."""
    monkeypatch.setattr("jcra.matcher.pose_matching_cost", pose_matching_cost_reference)
