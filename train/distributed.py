"""The processes of a run: its device, the process group, the order each process reads the data in
(resumable part way through an epoch), and the collectives the loop needs."""

import datetime
import math
import os
import re

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

EVAL_TIMEOUT = datetime.timedelta(hours=1)
"""How long processes wait for each other (collectives, rank 0's evaluation) before torch gives up."""


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """auto, cpu, cuda or cuda:N as a torch device. ``auto`` is a GPU when torch sees one, else the CPU;
    ``cuda`` (and ``auto`` on a GPU) is this process's ``LOCAL_RANK`` GPU (0 outside torchrun, or when
    the process sees one GPU), so each process of a torchrun job has its own; ``cuda:N`` names one GPU,
    refused under several processes that see several (NCCL refuses two on one GPU). A ValueError names
    ``setting`` for anything else, or a GPU this machine lacks."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"{setting}: {name!r} is not auto, cpu, cuda or cuda:N")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    world, gpus = int(os.environ.get("WORLD_SIZE", 1)), torch.cuda.device_count()
    if name.startswith("cuda:") and world > 1 and gpus > 1:
        raise ValueError(f"{setting}: {name!r} puts all {world} processes on one GPU; use auto or cuda")
    # a process that sees one GPU (a scheduler gave each its own) uses it whatever its LOCAL_RANK
    local = int(os.environ.get("LOCAL_RANK", 0)) if gpus > 1 else 0
    device = torch.device("cuda", local) if ":" not in name else torch.device(name)
    if device.index >= torch.cuda.device_count():
        raise ValueError(
            f"{setting}: {name!r} is GPU {device.index}, but this machine has {torch.cuda.device_count()}"
        )
    return device


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
        # rank 0 evaluates the whole val split while the others wait in a collective: a COCO evaluation of
        # a large model can outlast the default 10 minutes
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=EVAL_TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


class ResumableSampler(Sampler[tuple[int, int]]):
    """A seeded shuffle per epoch, split over processes, that can start part way through an epoch.

    Yields (dataset index, augmentation seed) pairs for :class:`SeededSamples`. Epoch e's order is
    ``randperm(size)`` from a generator seeded ``seed + e``, padded by wrapping to a multiple of
    ``world_size``, and each position in it gets a seed from the same generator; process r takes every
    ``world_size``-th pair from r. ``set_epoch(e, start)`` skips this process's first ``start`` pairs
    (those a resumed run already trained on). A sample's augmentation thus depends on the run's seed,
    the epoch and its position alone: not on the worker that loads it, nor on where a run resumed.
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
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        padded = self.per_rank * self.world_size
        order = torch.randperm(self.size, generator=generator).repeat(math.ceil(padded / self.size))
        seeds = torch.randint(0, 2**62, (padded,), generator=generator)
        pairs = torch.stack([order[:padded], seeds], 1)[self.rank :: self.world_size]
        return iter(map(tuple, pairs[self.start :].tolist()))

    def __len__(self) -> int:
        """Pairs per process per epoch (the full count, independent of ``start``)."""
        return self.per_rank


class SeededSamples(Dataset):
    """``dataset`` read by (index, seed) pairs, as :class:`ResumableSampler` gives them: each sample is
    loaded and augmented with torch's generator seeded ``seed`` (transforms draw from it), and the
    caller's generator state is left as it was (so that dropout, in the main process when
    ``num_workers=0``, does not depend on the data)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, pair: tuple[int, int]):
        index, seed = pair
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU's alone: torch.manual_seed also seeds CUDA's
            return self.dataset[index]


def reduce_means(values: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """Each scalar's mean over processes, as Python floats: one all-reduce and one host sync for all."""
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if world > 1:
        dist.all_reduce(stacked)
        stacked /= world
    return dict(zip(values, stacked.tolist(), strict=True))


def gather_objects(obj, world: int) -> list:
    """Every process's ``obj`` (a one-element list without distributed)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def check_processes_agree(value, world: int, what: str) -> None:
    """A RuntimeError on every process unless all hold the same ``value``, ``what`` naming it; a
    collective, which every process calls."""
    values = gather_objects(value, world)
    if any(v != values[0] for v in values):
        raise RuntimeError(
            f"{what} differs between processes: "
            + ", ".join(f"rank {rank} {v}" for rank, v in enumerate(values))
        )
