"""How many compiled variants the Triton kernels need as the data's sizes change.

On a GPU every new specialisation is a JIT compile in the middle of a run (about a second); in an H200
training run of PETR's multi-scale sizes every step that met one ran at a median 2.5-3.6 images/s
against 6.3-6.9 for the others (``bench.train_run_sizes``). Sizes that follow the data (token counts,
people, queries) must not make new ones. Counted under Triton's interpreter by
:mod:`bench.triton_specialisations`, the way ``JITFunction.run`` keys its compiled kernels.
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
K = 17


@pytest.fixture(autouse=True)
def _interpreted():
    if not use_triton(torch.empty(0)):
        pytest.skip("counts launches through Triton's interpreter (TRITON_INTERPRET=1, set without CUDA)")


def test_deformable_attention_compiles_once_for_every_map_and_query_count():
    """Token counts S (1, 15, 16, 48: one, odd, divisible by 16) and query counts Lq alike."""
    gen = torch.Generator().manual_seed(0)
    with recorded_launches() as launches:
        for (h, w), lq in itertools.product([(1, 1), (3, 5), (4, 4), (8, 6)], [1, 15, 16, 32]):
            value = torch.randn(2, h * w, 2, 8, generator=gen, requires_grad=True)
            loc = torch.rand(2, lq, 2, 1, 3, 2, generator=gen, requires_grad=True)
            attn = torch.rand(2, lq, 2, 1, 3, generator=gen, requires_grad=True)
            ms_deform_attn(value, [(h, w)], None, loc, attn).sum().backward()
    assert len(launches) == 32
    assert compiles(launches) == {"_ms_deform_attn_bwd_kernel": 1, "_ms_deform_attn_fwd_kernel": 1}


def _cost_inputs(b, q, g, gen):
    logits = torch.randn(b, q, generator=gen)
    pred = torch.rand(b, q, K, 2, generator=gen)
    gt = torch.rand(b, g, K, 3, generator=gen)
    gt[..., 2] = 2.0
    return logits, pred, gt, 0.01 + torch.rand(b, g, generator=gen), COCO_SIGMAS


def test_matching_cost_compiles_once_per_block_of_people():
    """Images, queries and people (1 to 40) of any count: one compile per BLOCK_G the launcher picks,
    a power of two from 2 to 32 (the tile follows the people: a fixed one would be mostly padding)."""
    gen = torch.Generator().manual_seed(1)
    people = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 40]
    with recorded_launches() as launches:
        for i, g in enumerate(people):
            b, q = (1, 2, 3)[i % 3], (1, 15, 16, 48)[i % 4]
            pose_matching_cost(*_cost_inputs(b, q, g, gen), w_class=2.0, w_kpt=70.0, w_oks=7.0)
    blocks = {oks_module._blocks(g) for g in people}
    assert len(blocks) == 5
    assert compiles(launches) == {"_pose_cost_kernel": len(blocks)}


def test_assignment_compiles_once_up_to_128_columns():
    """Problems of up to 128 columns (the encoder's proposals for up to 11 people, solved on G * G
    rows), of any batch, query and people count, share one compiled solver."""
    gen = torch.Generator().manual_seed(2)
    problems = [(1, 15, 1), (2, 16, 2), (3, 40, 5), (2, 100, 16), (1, 128, 128), (2, 90, 3), (3, 127, 9)]
    with recorded_launches() as launches:
        for b, q, g in problems:
            num_gt = torch.randint(0, g + 1, (b,), generator=gen)
            linear_assignment(torch.rand(b, q, g, generator=gen), num_gt)
    assert len(launches) == len(problems)
    assert compiles(launches) == {"_linear_assignment_kernel": 1}


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
