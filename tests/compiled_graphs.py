"""What the graphs ``torch.compile`` makes hold: a check shared by the model's and the baselines' tests."""

import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd


def host_constant_recorder():
    """A ``torch.compile`` backend and the list it fills: every tensor (not a scalar) that a forward or
    backward graph holds as a constant, ``"name (shape): [users]"``.

    Such a tensor is made from Python data on the host: on a GPU it costs a blocking copy in every
    call and keeps Inductor from capturing a CUDA graph (it skips graphs that hold CPU tensors).
    The graphs run as traced, without Inductor.
    """
    constants = []

    def record(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            value = getattr(graph_module, node.target) if node.op == "get_attr" else None
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                constants.append(f"{node.target} {tuple(value.shape)}: {[str(u) for u in node.users]}")
        return make_boxed_func(graph_module.forward)

    return aot_autograd(fw_compiler=record, bw_compiler=record), constants
