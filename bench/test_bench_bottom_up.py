"""Bottom-up baselines: post-processing time against the number of people, and network head time.

Post-processing (associative embedding as HigherHRNet decodes it, DEKR) runs on the maps a trained
network would give: rendered from real COCO poses pasted into crowds of N people (``../shared/data``;
random plausible poses when it is absent), with noise on the people's peaks and offsets (noise
proportional to the heat, ``add_peak_noise``: a trained network's tails stay below the decoders'
thresholds), in fp32 as the networks emit them. DEKR's centre maps also peak weakly where nobody is
centred (``add_false_centres``, ``PEOPLE_KEPT`` of them), as we assume a trained network's do (not
measured: no trained DEKR here), so that it decodes about its cap of centres (recorded as
``centres_decoded``), not the true ones alone. Each method must find the crowd (OKS AP above 0.9,
kept as ``oks_ap``). GPU: maps at stride 4 of an 800x1333
input, N in {1, 5, 10, 20, 50}; CPU: a 512x768 input and N in {1, 5, 20}.
The networks (ResNet-50 C5 upsampled to stride 4, then the heads) are timed separately on random
inputs of the same size, batch 1 and 8 on GPU, treated as JCRA is in ``test_bench_end_to_end.py``:
the ResNet in its ImageNet-weights layout (frozen batch norm) with random weights, bf16 autocast
and, on GPU, torch.compile at a fixed size replayed as a CUDA graph (``mode="reduce-overhead"``),
Dynamo checking the inputs only (``module_guards=False``).
Their post-processing cannot be a graph: peak and candidate counts, and so shapes, depend on the
image. It ends, as JCRA's does, in COCO records (:func:`jcra.postprocess.coco_records`: one copy to
the host, Python numbers), so both sides of a comparison stop at the same point.

Each method also runs flip-tested (``dekr+flip``, ``associative_embedding+flip``), as their published
COCO test settings do (:mod:`bench.baselines.flip_test`): the network on the image and its mirror as
one batch, the maps merged inside the compiled graph; the post-processing on merged maps, the mirror's
rendered from the mirrored crowd (its tags numbering the people in reverse) with its own noise.
Run: ``pytest bench/test_bench_bottom_up.py``.
"""

import pytest
import scipy
import torch
from torch import nn

from bench.baselines import HEADS
from bench.baselines.associative_embedding import decode_associative_embedding
from bench.baselines.dekr import CENTRE_THRESHOLD, centre_peaks, decode_dekr
from bench.baselines.flip_test import FLIP_TESTS, FlipTest
from bench.baselines.render import (
    add_false_centres,
    add_noise,
    add_peak_noise,
    load_people,
    mirror_poses,
    random_poses,
    render_dekr,
    render_heatmaps,
    render_tags,
    synthesize_crowd,
)
from bench.baselines.scoring import oks_ap
from bench.profiling import CROWD_GPU_ROUNDS, PEOPLE_KEPT, device_name
from jcra.backbone import resnet
from jcra.model import compile_arguments
from jcra.postprocess import coco_records
from tests.shared_data import SHARED_DATA

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
STRIDE = 4
IMAGE_HW = (800, 1333) if CUDA else (512, 768)


def network_map_hw(image_hw: tuple[int, int]) -> tuple[int, int]:
    """The networks' map size for ``image_hw``: each of ResNet's five stride-2 layers rounds up
    (1333 -> 667 -> 334 -> 167 -> 84 -> 42), then the head doubles C5 three times to stride 4 (336,
    where ceil(1333 / 4) would be 334). ``test_bench_network`` checks it against the networks' output."""

    def c5(side: int) -> int:
        for _ in range(5):
            side = -(-side // 2)
        return side

    return tuple(c5(side) * 32 // STRIDE for side in image_hw)


MAP_HW = network_map_hw(IMAGE_HW)
PEOPLE = (1, 5, 10, 20, 50) if CUDA else (1, 5, 20)
BATCHES = (1, 8) if CUDA else (1,)
NOISE = 0.02
ANNOTATIONS = SHARED_DATA / "coco-mini" / "annotations" / "person_keypoints_train2017.json"


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _crowd(n: int) -> tuple[torch.Tensor, str]:
    """Ground-truth poses [n, 17, 3] and where they came from."""
    if ANNOTATIONS.exists():
        return synthesize_crowd(load_people(ANNOTATIONS), n, *IMAGE_HW, seed=n), "coco-mini crowd"
    return random_poses(n, *IMAGE_HW, seed=n), "synthetic poses"


def _ae_maps(gt, seed=0):
    heat = add_peak_noise(render_heatmaps(gt, MAP_HW, STRIDE), NOISE, seed)
    return heat, add_noise(render_tags(gt, MAP_HW, STRIDE), NOISE, seed + 1)


def _dekr_maps(gt, seed=0):
    heat, offsets = render_dekr(gt, MAP_HW, STRIDE)
    heat = add_false_centres(heat, PEOPLE_KEPT, STRIDE, seed=seed + 2)
    return add_peak_noise(heat, NOISE, seed), add_noise(offsets, 2 * NOISE, seed + 1)


def _flip_tested(render, merge):
    """``render`` of the crowd merged with ``render`` of its mirror (people in reverse order, so the
    mirror's tags differ from the image's, as a network's may)."""

    def maps(gt):
        return merge(render(gt), render(mirror_poses(gt, MAP_HW[1], STRIDE).flip(0), seed=2))

    return maps


METHODS = {
    "associative_embedding": (_ae_maps, decode_associative_embedding),
    "dekr": (_dekr_maps, decode_dekr),
}
METHODS.update(
    {f"{m}+flip": (_flip_tested(render, FLIP_TESTS[m][0]), decode) for m, (render, decode) in METHODS.items()}
)


def build_network(method: str) -> nn.Module:
    """``method``'s network (``+flip``: flip-tested) on a ResNet-50 in its ImageNet-weights layout."""
    base = method.removesuffix("+flip")
    backbone = resnet(50, frozen=True)
    network = HEADS[base](backbone, backbone.out_channels[-1], feature_stride=32)
    if method.endswith("+flip"):
        network = FlipTest(network, *FLIP_TESTS[base])
    return network


def _info(benchmark, **shape):
    benchmark.extra_info.update(
        **shape,
        device=device_name(),
        torch=torch.__version__,
        scipy=scipy.__version__,
    )


@pytest.mark.parametrize("people", PEOPLE)
@pytest.mark.parametrize("method", list(METHODS))
def test_bench_postprocess(benchmark, method, people):
    benchmark.group = f"bottom-up postprocess, {people} people"
    render, decode = METHODS[method]
    gt, source = _crowd(people)
    maps = [m.to(DEVICE) for m in render(gt)]

    def target():
        poses, scores = decode(*maps, STRIDE, max_people=PEOPLE_KEPT)
        return coco_records(poses[None], scores[None], [0])

    _info(
        benchmark,
        provider=method,
        people=people,
        map_hw=MAP_HW,
        image_hw=IMAGE_HW,
        source=source,
        noise=NOISE,
    )
    # checked before it is timed: a row stays in the JSON once timed, whatever fails after
    poses, scores = decode(*maps, STRIDE, max_people=PEOPLE_KEPT)
    ap = oks_ap(gt, poses, scores)
    assert ap > 0.9, f"{method} found {len(poses)} of {people} people, AP {ap:.3f}: timing a broken decoder"
    if method.startswith("dekr"):  # the false centres fill the cap: DEKR decodes a pose for each
        benchmark.extra_info["centres_decoded"] = len(
            centre_peaks(maps[0][-1:], PEOPLE_KEPT, CENTRE_THRESHOLD)[0]
        )
    rounds, warmup_rounds = (CROWD_GPU_ROUNDS, 3) if CUDA else (3, 1)
    records = benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup_rounds)
    benchmark.extra_info.update(people_found=len(records), oks_ap=ap)


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")  # -k b1 picks batch 1
@pytest.mark.parametrize("method", list(METHODS))
def test_bench_network(benchmark, method, batch):
    benchmark.group = f"bottom-up network, batch {batch}"
    head = build_network(method).to(DEVICE).eval()
    if CUDA:
        torch._dynamo.utils.counters.clear()
        head.compile(
            fullgraph=True, dynamic=False, **compile_arguments(mode="reduce-overhead", module_guards=False)
        )
    dtype = torch.bfloat16 if CUDA else torch.float32
    images = torch.randn(batch, 3, *IMAGE_HW, device=DEVICE)

    @torch.inference_mode()
    def target():
        with torch.autocast(DEVICE.type, dtype, enabled=CUDA):
            out = head(images)
        _sync()
        return out

    _info(
        benchmark,
        provider=method,
        batch=batch,
        image_hw=IMAGE_HW,
        dtype=str(dtype),
        backbone="resnet50 C5, ImageNet layout (frozen BN)",
        compiled=CUDA,
    )
    for _ in range(2 if CUDA else 0):  # compile, record the CUDA graph: before the GPU is warmed and timed
        target()
    maps = benchmark.pedantic(target, rounds=CROWD_GPU_ROUNDS if CUDA else 2, warmup_rounds=2 if CUDA else 1)
    # the post-processing suite's maps are of this size and dtype (the heads' last convs run in fp32)
    assert tuple(maps[0].shape[-2:]) == MAP_HW and maps[0].dtype == torch.float32, maps[0].dtype
    counters = torch._dynamo.utils.counters["inductor"]
    # partitions: Inductor split the graph around ops it left eager, each piece its own CUDA graph
    benchmark.extra_info.update(
        cuda_graph_skips=counters["cudagraph_skips"], cuda_graph_partitions=counters["cudagraph_partitions"]
    )
