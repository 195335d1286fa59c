"""How many compiled variants the Triton kernels need as the data's sizes change.

On a GPU every new specialisation is a JIT compile in the middle of a run; in two H200
training runs of PETR's multi-scale sizes the steps that met one ran at a median 3.5 and 2.5 images/s
against 6.3 and 6.9 for the others (``bench.train_run_sizes``). Sizes that follow the data (token
counts, people, queries) must not make new ones. Counted under Triton's interpreter by
:mod:`bench.triton_specialisations`, the way ``JITFunction.run`` keys its compiled kernels, and on a
GPU in Triton's own caches of compiled kernels.
"""

import importlib
import itertools

import pytest
import torch

from bench.triton_specialisations import compiles, recorded_launches
from jcra.matcher import HungarianMatcher
from jcra.targets import pad_targets
from kernels.dispatch import use_triton
from kernels.linear_assignment import linear_assignment
from kernels.ms_deform_attn import ms_deform_attn
from kernels.oks import COCO_SIGMAS, pose_matching_cost

oks_module = importlib.import_module("kernels.oks")  # the package re-exports functions under these names
la_module = importlib.import_module("kernels.linear_assignment")
msda_module = importlib.import_module("kernels.ms_deform_attn")
K = 17
# token counts S (1, 15, 16, 48: one, odd, divisible by 16) and query counts Lq alike
MAPS_AND_QUERIES = list(itertools.product([(1, 1), (3, 5), (4, 4), (8, 6)], [1, 15, 16, 32]))
# (images, queries, people): people 1 to 40, five tiles of people
COST_PROBLEMS = [
    ((1, 2, 3)[i % 3], (1, 15, 16, 48)[i % 4], g)
    for i, g in enumerate([1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 40])
]
# (images, queries, people) up to 128 columns: the encoder's proposals for up to 11 people, solved on
# G * G rows, among them
ASSIGNMENT_PROBLEMS = [
    (1, 15, 1),
    (2, 16, 2),
    (3, 40, 5),
    (2, 100, 16),
    (1, 128, 128),
    (2, 90, 3),
    (3, 127, 9),
]
interpreted = pytest.mark.skipif(
    not use_triton(torch.empty(0)),
    reason="counts launches through Triton's interpreter (TRITON_INTERPRET=1, set without CUDA)",
)


def _attend(device, sizes, gen):
    """Deformable attention forward and backward at each ((H, W), Lq) of ``sizes``."""
    for (h, w), lq in sizes:
        value = torch.randn(2, h * w, 2, 8, generator=gen).to(device).requires_grad_()
        loc = torch.rand(2, lq, 2, 1, 3, 2, generator=gen).to(device).requires_grad_()
        attn = torch.rand(2, lq, 2, 1, 3, generator=gen).to(device).requires_grad_()
        ms_deform_attn(value, [(h, w)], None, loc, attn).sum().backward()


def _costs(device, problems, gen):
    """The matching cost of each (images, queries, people) of ``problems``."""
    for b, q, g in problems:
        gt = torch.rand(b, g, K, 3, generator=gen)
        gt[..., 2] = 2.0
        inputs = (torch.randn(b, q, generator=gen), torch.rand(b, q, K, 2, generator=gen), gt)
        inputs += (0.01 + torch.rand(b, g, generator=gen), COCO_SIGMAS)
        pose_matching_cost(*(t.to(device) for t in inputs), w_class=2.0, w_kpt=70.0, w_oks=7.0)


def _assign(device, problems, gen):
    """The assignment of each (images, queries, people) of ``problems``, some images with fewer people."""
    for b, q, g in problems:
        linear_assignment(
            torch.rand(b, q, g, generator=gen).to(device), torch.randint(0, g + 1, (b,), generator=gen)
        )


@interpreted
def test_deformable_attention_compiles_once_for_every_map_and_query_count():
    with recorded_launches() as launches:
        _attend("cpu", MAPS_AND_QUERIES, torch.Generator().manual_seed(0))
    assert len(launches) == 32
    assert compiles(launches) == {"_ms_deform_attn_bwd_kernel": 1, "_ms_deform_attn_fwd_kernel": 1}


@interpreted
def test_matching_cost_compiles_once_per_block_of_people():
    """One compile per BLOCK_G the launcher picks, a power of two from 2 to 32 (the tile follows the
    people: a fixed one would be mostly padding)."""
    with recorded_launches() as launches:
        _costs("cpu", COST_PROBLEMS, torch.Generator().manual_seed(1))
    blocks = {oks_module._blocks(g) for _, _, g in COST_PROBLEMS}
    assert len(blocks) == 5
    assert compiles(launches) == {"_pose_cost_kernel": len(blocks)}


@interpreted
def test_assignment_compiles_once_up_to_128_columns():
    with recorded_launches() as launches:
        _assign("cpu", ASSIGNMENT_PROBLEMS, torch.Generator().manual_seed(2))
    assert len(launches) == len(ASSIGNMENT_PROBLEMS)
    assert compiles(launches) == {"_linear_assignment_kernel": 1}


def _compiled_kernels(kernel) -> int:
    """How many variants of ``kernel`` Triton holds compiled in this process (its own caches)."""
    return sum(len(caches[0]) for caches in kernel.device_caches.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts what Triton compiled on the GPU")
@pytest.mark.parametrize(
    ("run", "sizes", "kernels"),
    [
        (_attend, MAPS_AND_QUERIES, ("_ms_deform_attn_fwd_kernel", "_ms_deform_attn_bwd_kernel")),
        (_costs, [p for p in COST_PROBLEMS if p[2] in (3, 4)], ("_pose_cost_kernel",)),  # one tile
        (_assign, ASSIGNMENT_PROBLEMS, ("_linear_assignment_kernel",)),
    ],
)
def test_on_a_gpu_new_sizes_compile_no_new_kernel(run, sizes, kernels):
    """After the first size, the others leave Triton's caches of compiled kernels as they were."""
    modules = (msda_module, oks_module, la_module)
    found = [getattr(m, name) for name in kernels for m in modules if hasattr(m, name)]
    gen = torch.Generator().manual_seed(4)
    run("cuda", sizes[:1], gen)
    before = [_compiled_kernels(kernel) for kernel in found]
    run("cuda", sizes[1:], gen)
    torch.cuda.synchronize()
    assert len(sizes) > 1 and min(before) >= 1
    assert [_compiled_kernels(kernel) for kernel in found] == before


@interpreted
def test_a_training_runs_matching_compiles_once_per_block_of_people():
    """The matcher over batches as a multi-scale run brings them: decoder layers and the encoder's
    proposals (one a token, their count following the image size; above 4096 they are solved on G * G
    rows), 0 to 6 people an image."""
    gen = torch.Generator().manual_seed(3)
    matcher = HungarianMatcher(COCO_SIGMAS, solver="triton")
    people_seen = []
    with recorded_launches() as launches:
        for tokens, counts in [
            (4100, [1, 0]),
            (4133, [2, 3]),
            (4250, [4, 1]),
            (4161, [6, 5]),
            (4144, [1, 1]),
        ]:
            targets = []
            for g in counts:
                keypoints = torch.rand(g, K, 3, generator=gen)
                keypoints[..., 2] = 2.0
                size = torch.tensor([640.0, 480.0])
                targets.append(
                    {"keypoints": keypoints, "area": 0.05 + torch.rand(g, generator=gen), "size": size}
                )
            padded = pad_targets(targets, K, "cpu").normalised()
            people_seen.append(padded.keypoints.shape[1])
            for stages, queries in ((3, 30), (1, tokens)):
                logits = torch.randn(stages, len(counts), queries, generator=gen)
                matcher.match(logits, torch.rand(stages, len(counts), queries, K, 2, generator=gen), padded)
    blocks = {oks_module._blocks(g) for g in people_seen}
    assert len(blocks) == 3  # people 1 to 6: BLOCK_G 2, 4 and 8
    assert compiles(launches) == {"_linear_assignment_kernel": 1, "_pose_cost_kernel": len(blocks)}
