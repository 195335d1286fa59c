"""kernels.dispatch.to_device: copies that never wait for the GPU."""

import pytest
import torch

from kernels.dispatch import to_device


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
