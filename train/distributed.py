"""The processes of a run: its device, the process group, the order each process reads the data in
(resumable part way through an epoch), and the collectives the loop needs."""

import datetime
import math
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

EVAL_TIMEOUT = datetime.timedelta(hours=1)
"""How long processes wait for each other (collectives, rank 0's evaluation) before torch gives up."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is the local CUDA device when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun (or a test's spawn) described in the environment: (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    if device.type == "cuda":
        # collectives (all_gather_object) and new CUDA state use the current device: cuda:0 on every
        # rank unless set, and NCCL refuses two ranks on one GPU
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # rank 0 evaluates the whole val split while the others wait at a barrier: a COCO evaluation of
        # a large model can outlast the default 10 minutes
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=EVAL_TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


class ResumableSampler(Sampler[int]):
    """A seeded shuffle per epoch, split over processes, that can start part way through an epoch.

    Epoch e's order is ``randperm(size)`` from a generator seeded ``seed + e``, padded by wrapping to a
    multiple of ``world_size``; process r takes every ``world_size``-th index from r. ``set_epoch(e,
    start)`` skips this process's first ``start`` indices (those a resumed run already trained on).
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        order = order.repeat(math.ceil(self.per_rank * self.world_size / self.size))
        order = order[: self.per_rank * self.world_size][self.rank :: self.world_size]
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        """Indices per process per epoch (the full count, independent of ``start``)."""
        return self.per_rank


def seed_workers(loader: DataLoader, seed: int, rank: int, epoch: int) -> None:
    """Seed the generator each iterator of ``loader`` draws its workers' seeds from, for this process
    and epoch: processes augment differently, and an epoch's augmentations are the same whether or
    not the run was resumed before it (with ``num_workers=0`` transforms draw from the restored global
    RNG instead)."""
    loader.generator.manual_seed(int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0]))


def reduce_mean(value: torch.Tensor, world: int) -> float:
    """The mean of a scalar over processes, as a Python float (one host sync per step)."""
    value = value.detach().float().clone()
    if world > 1:
        dist.all_reduce(value)
        value /= world
    return float(value)


def gather_objects(obj, world: int) -> list:
    """Every process's ``obj`` (a one-element list without distributed)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
