"""kernels.oks: OKS against pycocotools on real annotations, the Triton kernel against the reference,
the custom ops, and the OKS loss built on the same formula."""

import contextlib
import copy
import io
import json
import warnings

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jcra.oks_loss import oks_loss
from kernels import oks
from kernels.oks import (
    COCO_SIGMAS,
    CROWDPOSE_SIGMAS,
    pairwise_oks,
    pairwise_oks_reference,
    pose_matching_cost,
    pose_matching_cost_reference,
)
from tests.shared_data import shared_path

# The kernels run where the tensors are: CUDA on a GPU machine, the interpreter on CPU (tests/conftest)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
WEIGHTS = {"w_class": 2.0, "w_kpt": 70.0, "w_oks": 2.0, "alpha": 0.25, "gamma": 2.0}

# ---------------------------------------------------------------------------------------------------
# Against COCOeval.computeOks on real annotations
# ---------------------------------------------------------------------------------------------------


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _jittered_predictions(dataset: dict, seed: int) -> list[dict]:
    """Three predictions per labelled person: the ground truth moved by noise of 2, 5 and 20 % of the
    person's scale, with unlabelled keypoints (at 0, 0) moved too."""
    rng = np.random.default_rng(seed)
    preds = []
    for ann in dataset["annotations"]:
        if ann.get("iscrowd", 0) or ann["num_keypoints"] == 0:
            continue
        xyv = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        for scale in (0.02, 0.05, 0.2):
            xy = xyv[:, :2] + rng.normal(size=xyv[:, :2].shape) * scale * np.sqrt(ann["area"])
            kpts = np.concatenate([xy, np.ones((len(xy), 1))], axis=1)
            preds.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": 1,
                    "keypoints": kpts.ravel().tolist(),
                    "score": rng.random(),
                }
            )
    return preds


def _check_against_cocoeval(dataset: dict, preds: list[dict], sigmas: torch.Tensor) -> None:
    """pairwise_oks on every image at once (padded) equals COCOeval.computeOks to 1e-6 for every
    ground truth with a labelled keypoint, and is 0 for the others."""
    gt = _coco(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(preds))
    ev = COCOeval(gt, dt, "keypoints")
    ev.params.kpt_oks_sigmas = sigmas.numpy()
    ev._prepare()
    img_ids = sorted({p["image_id"] for p in preds})
    k = len(sigmas)
    images = []
    for img in img_ids:
        expected = np.asarray(ev.computeOks(img, 1))
        dts = ev._dts[img, 1]
        # computeOks orders detections by score (stable) and keeps the first maxDets
        dts = [dts[i] for i in np.argsort([-d["score"] for d in dts], kind="mergesort")][
            : ev.params.maxDets[-1]
        ]
        gts = ev._gts[img, 1]
        images.append((expected, dts, gts))
    q = max(len(d) for _, d, _ in images)
    g = max(len(t) for _, _, t in images)
    pred = torch.zeros(len(images), q, k, 2, dtype=torch.float64)
    target = torch.zeros(len(images), g, k, 3, dtype=torch.float64)
    area = torch.zeros(len(images), g, dtype=torch.float64)
    for i, (_, dts, gts) in enumerate(images):
        for j, d in enumerate(dts):
            pred[i, j] = torch.tensor(d["keypoints"], dtype=torch.float64).reshape(k, 3)[:, :2]
        for j, t in enumerate(gts):
            target[i, j] = torch.tensor(t["keypoints"], dtype=torch.float64).reshape(k, 3)
            area[i, j] = t["area"]
    checked = 0
    # fp64 inputs agree to 1e-6; fp32 inputs round pixel coordinates by up to 3e-5 px, which moves OKS
    # by a few 1e-6 at worst
    for name, got, atol in (
        ("kernel fp64 input", _on_device(pairwise_oks, pred, target, area, sigmas), 1e-6),
        (
            "kernel fp32 input",
            _on_device(pairwise_oks, pred.float(), target.float(), area.float(), sigmas.float()),
            5e-6,
        ),
        ("reference fp64", pairwise_oks_reference(pred, target, area, sigmas), 1e-6),
    ):
        for i, (expected, dts, gts) in enumerate(images):
            if len(expected) == 0:
                continue
            labelled = torch.tensor([np.count_nonzero(np.asarray(t["keypoints"])[2::3] > 0) > 0 for t in gts])
            ours = got[i, : len(dts), : len(gts)].double()
            want = torch.from_numpy(expected)
            torch.testing.assert_close(ours[:, labelled], want[:, labelled], rtol=0, atol=atol, msg=name)
            assert torch.all(ours[:, ~labelled] == 0), name
            checked += int(labelled.sum()) * len(dts)
    assert checked > 0


def _load(path) -> dict:
    """A COCO-format dataset; CrowdPose ground truth has no area field, so it gets its box area."""
    dataset = json.loads(path.read_text())
    for ann in dataset["annotations"]:
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    return dataset


@pytest.mark.parametrize(
    "path,sigmas",
    [
        (("coco-mini", "annotations", "person_keypoints_train2017.json"), COCO_SIGMAS),
        (("mmpose-testdata", "coco", "test_coco.json"), COCO_SIGMAS),
        (("mmpose-testdata", "ochuman", "test_ochuman.json"), COCO_SIGMAS),
        (("mmpose-testdata", "crowdpose", "test_crowdpose.json"), CROWDPOSE_SIGMAS),
    ],
    ids=["coco-mini", "mmpose-coco", "ochuman", "crowdpose"],
)
def test_oks_matches_cocoeval_on_jittered_ground_truth(path, sigmas):
    dataset = _load(shared_path(*path))
    _check_against_cocoeval(dataset, _jittered_predictions(dataset, seed=0), sigmas)


@pytest.mark.parametrize(
    "gt_file,pred_file,sigmas",
    [
        ("example_coco_val.json", "example_coco_preds.json", COCO_SIGMAS),
        ("example_crowdpose_val.json", "example_crowdpose_preds.json", CROWDPOSE_SIGMAS),
    ],
    ids=["coco", "crowdpose"],
)
def test_oks_matches_cocoeval_on_real_predictions(gt_file, pred_file, sigmas):
    folder = shared_path("xtcocoapi-examples", "annotations")
    preds = json.loads((folder / pred_file).read_text())
    _check_against_cocoeval(_load(folder / gt_file), preds, sigmas)


# ---------------------------------------------------------------------------------------------------
# Triton kernel (the interpreter on CPU) against the reference
# ---------------------------------------------------------------------------------------------------


def _on_device(fn, *args):
    """fn of the arguments moved to DEVICE, its result back on the CPU."""
    return fn(*(t.to(DEVICE) for t in args)).cpu()


def _random_batch(b, q, g, k, dtype, seed, device=DEVICE):
    """Image-normalised poses with unlabelled keypoints, a ground truth with none labelled, and padding
    (area 0) in the last image, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, g, k, 3, generator=gen)
    gt[..., 2] = torch.randint(0, 3, (b, g, k), generator=gen).float()
    # predictions near the ground truth, so OKS spans (0, 1) rather than sitting at 0
    centre = (
        gt[:, torch.randint(0, max(g, 1), (q,), generator=gen) % max(g, 1), :, :2]
        if g
        else torch.rand(b, q, k, 2)
    )
    pred = centre + 0.05 * torch.randn(b, q, k, 2, generator=gen)
    area = 0.01 + 0.3 * torch.rand(b, g, generator=gen)
    if g > 1:
        gt[0, 1, :, 2] = 0
        area[-1, g // 2 :] = 0
        gt[-1, g // 2 :] = 0
    logits = 3 * torch.randn(b, q, generator=gen)
    return [t.to(device, dtype) for t in (logits, pred, gt, area)]


def _image_size(b, sized, seed=0):
    """[B, 2] (w, h) of random non-square images, or None."""
    return (
        torch.randint(100, 1400, (b, 2), generator=torch.Generator().manual_seed(seed)).to(
            DEVICE, torch.float32
        )
        if sized
        else None
    )


CASES = [
    # (B, Q, G, K, dtype)
    (2, 37, 5, 17, torch.float32),
    (3, 1, 4, 17, torch.float32),  # Q = 1
    (2, 9, 1, 17, torch.float32),  # G = 1
    (2, 7, 0, 17, torch.float32),  # G = 0
    (2, 5, 9, 14, torch.float32),  # Q < G, CrowdPose K
    (1, 150, 35, 17, torch.float32),  # several blocks along Q and G
    (2, 30, 6, 17, torch.bfloat16),
]
CASE_IDS = ["basic", "q1", "g1", "g0", "q<g-k14", "blocks", "bf16"]


def _sigmas(k):
    return (COCO_SIGMAS if k == 17 else CROWDPOSE_SIGMAS).to(DEVICE, torch.float32)


@pytest.mark.parametrize("sized", [False, True], ids=["units", "image_size"])
@pytest.mark.parametrize("b,q,g,k,dtype", CASES, ids=CASE_IDS)
def test_pairwise_oks_kernel_matches_reference(b, q, g, k, dtype, sized):
    _, pred, gt, area = _random_batch(b, q, g, k, dtype, seed=1)
    size = _image_size(b, sized)
    got = pairwise_oks(pred, gt, area, _sigmas(k), image_size=size)
    size64 = None if size is None else size.double()
    want = pairwise_oks_reference(pred.double(), gt.double(), area.double(), _sigmas(k).double(), size64)
    assert got.dtype == torch.float32 and got.shape == (b, q, g)
    # fp32 compute on both dtypes' values; exp of an fp32 exponent is good to a few 1e-8
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    if g > 1:
        assert torch.all(got[0, :, 1] == 0) and torch.all(got[-1, :, g // 2 :] == 0)


@pytest.mark.parametrize("sized", [False, True], ids=["units", "image_size"])
@pytest.mark.parametrize("b,q,g,k,dtype", CASES, ids=CASE_IDS)
def test_pose_matching_cost_kernel_matches_reference(b, q, g, k, dtype, sized):
    logits, pred, gt, area = _random_batch(b, q, g, k, dtype, seed=2)
    size = _image_size(b, sized)
    got = pose_matching_cost(logits, pred, gt, area, _sigmas(k), **WEIGHTS, image_size=size)
    want = pose_matching_cost_reference(
        logits.double(),
        pred.double(),
        gt.double(),
        area.double(),
        _sigmas(k).double(),
        **WEIGHTS,
        image_size=None if size is None else size.double(),
    )
    assert got.dtype == torch.float32 and got.shape == (b, q, g)
    # costs reach ~70 (the L1 weight); fp32 keeps about 7 digits
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize(
    "weights",
    [(1.0, 5.0, 3.0, 0.25, 2.0), (2.0, 70.0, 7.0, 0.4, 1.0), (0.5, 10.0, 2.0, 0.1, 1.5)],
    ids=["distinct-weights", "gamma-1", "gamma-1.5"],
)
def test_pose_matching_cost_kernel_takes_every_weight(weights):
    """Each weight, alpha and gamma reaches its term: distinct values, unlike the defaults' w_class =
    w_oks and gamma = 2."""
    w_class, w_kpt, w_oks, alpha, gamma = weights
    logits, pred, gt, area = _random_batch(2, 37, 5, 17, torch.float32, seed=3)
    size = _image_size(2, True)
    kwargs = dict(w_class=w_class, w_kpt=w_kpt, w_oks=w_oks, alpha=alpha, gamma=gamma)
    got = pose_matching_cost(logits, pred, gt, area, _sigmas(17), **kwargs, image_size=size)
    want = pose_matching_cost_reference(
        logits.double(), pred.double(), gt.double(), area.double(), _sigmas(17).double(), **kwargs,
        image_size=size.double(),
    )  # fmt: skip
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize("fn", ["reference", "kernel"])
def test_ground_truth_of_zero_area_has_no_oks(fn):
    """A person with labelled keypoints but area 0 (padding, or a degenerate box) scores OKS 0 even
    against a perfect prediction, so its cost's OKS term is the whole w_oks."""
    gt = torch.rand(1, 2, 17, 3, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    gt[..., 2] = 2.0
    area = torch.tensor([[0.0, 0.2]], device=DEVICE)
    pred = gt[:, :, :, :2].clone()  # query q predicts ground truth q exactly
    oks = (pairwise_oks if fn == "kernel" else pairwise_oks_reference)(pred, gt, area, _sigmas(17))
    assert oks[0, 0, 0].item() == 0 and oks[0, 1, 1].item() == pytest.approx(1.0)
    cost_fn = pose_matching_cost if fn == "kernel" else pose_matching_cost_reference
    cost = cost_fn(
        torch.zeros(1, 2, device=DEVICE), pred, gt, area, _sigmas(17), w_class=0.0, w_kpt=0.0, w_oks=3.0
    )
    assert cost[0, 0, 0].item() == pytest.approx(3.0) and cost[0, 1, 1].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("fn", ["reference", "kernel"])
def test_image_size_gives_oks_in_pixels(fn):
    """Normalised coordinates with image_size give the OKS of the same poses in pixels, on images far
    from square, where OKS of the normalised coordinates alone differs."""
    _, pred, gt, area = _random_batch(3, 11, 4, 17, torch.float64, seed=11)
    size = torch.tensor([[1333.0, 300.0], [240.0, 960.0], [800.0, 800.0]], dtype=torch.float64, device=DEVICE)
    scale = size[:, None, None]  # [B, 1, 1, 2]
    pixel_gt = torch.cat([gt[..., :2] * scale, gt[..., 2:]], -1)
    pixel_area = area * size.prod(-1, keepdim=True)
    sigmas = _sigmas(17).double()
    want = pairwise_oks_reference(pred * scale, pixel_gt, pixel_area, sigmas)
    oks_of = pairwise_oks_reference if fn == "reference" else lambda *a: pairwise_oks(*a[:4], image_size=a[4])
    got = oks_of(pred, gt, area, sigmas, size)
    torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=2e-6)
    unscaled = pairwise_oks_reference(pred, gt, area, sigmas)
    assert (unscaled[:2] - want[:2]).abs().max() > 0.05  # non-square images: the units matter
    torch.testing.assert_close(unscaled[2], want[2].to(unscaled.dtype))  # a square one: they do not


def test_kernel_reads_strided_inputs():
    """Ground truth expanded over stages (stride 0) and a transposed prediction give the same result."""
    logits, pred, gt, area = _random_batch(1, 20, 6, 17, torch.float32, seed=3)
    pred_t = pred.transpose(-1, -2).contiguous().transpose(-1, -2)
    args = (logits.expand(3, -1), pred_t.expand(3, -1, -1, -1), gt.expand(3, -1, -1, -1), area.expand(3, -1))
    got = pose_matching_cost(*args, _sigmas(17), **WEIGHTS)
    want = pose_matching_cost(logits, pred, gt, area, _sigmas(17), **WEIGHTS)
    torch.testing.assert_close(got, want.expand(3, -1, -1), rtol=0, atol=0)


def test_kernel_reads_every_input_by_its_strides():
    """Every input a view with strides the contiguous layout does not have: keypoints and coordinates
    of the ground truth, its areas, the sigmas, the logits and the image sizes."""
    logits, pred, gt, area = _random_batch(2, 13, 5, 17, torch.float32, seed=6)
    size = _image_size(2, True)
    sigmas = _sigmas(17)

    def spread(t: torch.Tensor, dim: int) -> torch.Tensor:
        """The same values, every step along ``dim`` two elements apart in memory."""
        return torch.stack([t, torch.full_like(t, float("nan"))], dim + 1).select(dim + 1, 0)

    views = (
        spread(logits, 1),
        pred,
        spread(spread(gt, 2), 3),
        spread(area, 1),
        spread(sigmas, 0),
        spread(size, 1),
    )
    assert not any(v.is_contiguous() for v in views if v is not pred)
    got = pose_matching_cost(*views[:5], **WEIGHTS, image_size=views[5])
    want = pose_matching_cost(logits, pred, gt, area, sigmas, **WEIGHTS, image_size=size)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "reference"])
@pytest.mark.parametrize("bt", [1, 2, 3])
def test_targets_of_fewer_images_serve_every_image_by_its_remainder(bt, kernel, monkeypatch):
    """B = 6 images against targets of B' (a divisor): image b is scored against the targets of b % B',
    as against those targets repeated, by both the kernel and the reference path."""
    monkeypatch.setattr(oks, "use_triton", lambda tensor: kernel)
    logits, pred, _, _ = _random_batch(6, 11, 4, 17, torch.float32, seed=12)
    _, _, gt, area = _random_batch(bt, 11, 4, 17, torch.float32, seed=13)
    size = _image_size(bt, True)
    repeat = 6 // bt
    got = pose_matching_cost(logits, pred, gt, area, _sigmas(17), **WEIGHTS, image_size=size)
    want = pose_matching_cost_reference(
        logits, pred, gt.repeat(repeat, 1, 1, 1), area.repeat(repeat, 1), _sigmas(17), **WEIGHTS,
        image_size=size.repeat(repeat, 1),
    )  # fmt: skip
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-5)
    got = pairwise_oks(pred, gt, area, _sigmas(17), image_size=size)
    want = pairwise_oks_reference(
        pred, gt.repeat(repeat, 1, 1, 1), area.repeat(repeat, 1), _sigmas(17), size.repeat(repeat, 1)
    )
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "reference"])
def test_costs_are_stored_ground_truth_by_ground_truth(kernel, monkeypatch):
    """Stride 1 along Q, on every path and in the fake (meta): the solver's layout, read without a copy."""
    monkeypatch.setattr(oks, "use_triton", lambda tensor: kernel)
    logits, pred, gt, area = _random_batch(2, 7, 3, 17, torch.float32, seed=14)
    for device in (DEVICE, "meta"):
        args = [t.to(device) for t in (logits, pred, gt, area, _sigmas(17))]
        for out in (pose_matching_cost(*args, **WEIGHTS), pairwise_oks(*args[1:])):
            assert out.shape == (2, 7, 3) and out.stride() == (21, 1, 7), device


def test_cpu_path_without_triton_is_the_reference(monkeypatch):
    monkeypatch.setattr(oks, "use_triton", lambda tensor: False)
    logits, pred, gt, area = _random_batch(2, 9, 4, 17, torch.float32, seed=4)
    got = pose_matching_cost(logits, pred, gt, area, _sigmas(17), **WEIGHTS)
    want = pose_matching_cost_reference(logits, pred, gt, area, _sigmas(17), **WEIGHTS)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_focal_class_cost_equals_detr_form():
    """Our softplus form equals DETR's ``-log(p + 1e-8)`` form where the 1e-8 is negligible (|x| <= 4)."""
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    p = x.sigmoid()
    detr = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log() - 0.75 * p**2 * -(1 - p + 1e-8).log()
    torch.testing.assert_close(oks.focal_class_cost(x, 0.25, 2.0), detr, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "value"), [("w_kpt", float("nan")), ("w_class", "a"), ("gamma", -1.0), ("w_oks", True)]
)
def test_bad_cost_weights_are_named(name, value):
    """A NaN weight made every cost NaN; a string failed in float() naming nothing."""
    logits, pred, gt, area = _random_batch(2, 4, 3, 17, torch.float32, seed=5)
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        pose_matching_cost(logits, pred, gt, area, _sigmas(17), **{**WEIGHTS, name: value})


@pytest.mark.parametrize(
    "name,mutate",
    [
        ("pred_kpts", lambda a: {**a, "pred_kpts": a["pred_kpts"][..., :1]}),
        ("gt_kpts", lambda a: {**a, "gt_kpts": a["gt_kpts"][:, :, :14]}),  # K mismatch
        ("gt_kpts", lambda a: {**a, "gt_kpts": a["gt_kpts"][[0, 1, 0]]}),  # B' = 3 does not divide B = 2
        ("gt_areas", lambda a: {**a, "gt_areas": a["gt_areas"][:, :1]}),
        ("sigmas", lambda a: {**a, "sigmas": _sigmas(14)}),
        ("logits", lambda a: {**a, "logits": a["logits"][:, None]}),
        ("gt_kpts", lambda a: {**a, "gt_kpts": a["gt_kpts"].long()}),
        ("image_size", lambda a: {**a, "image_size": a["image_size"][:1]}),
        ("image_size", lambda a: {**a, "image_size": a["image_size"].long()}),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(name, mutate):
    logits, pred, gt, area = _random_batch(2, 4, 3, 17, torch.float32, seed=5)
    args = {"logits": logits, "pred_kpts": pred, "gt_kpts": gt, "gt_areas": area, "sigmas": _sigmas(17)}
    args = mutate({**args, "image_size": _image_size(2, True)})
    with pytest.raises(ValueError, match=name):
        pose_matching_cost(**args, **WEIGHTS)
    if name != "logits":
        with pytest.raises(ValueError, match=name):
            pairwise_oks(
                args["pred_kpts"],
                args["gt_kpts"],
                args["gt_areas"],
                args["sigmas"],
                image_size=args["image_size"],
            )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the fakes' fp32 cost is checked too
def test_opcheck(dtype):
    logits, pred, gt, area = _random_batch(2, 5, 3, 17, dtype, seed=6)
    sigmas = _sigmas(17)
    for size in (None, _image_size(2, True)):
        torch.library.opcheck(torch.ops.jcra.pairwise_oks.default, (pred, gt, area, sigmas, size))
        torch.library.opcheck(
            torch.ops.jcra.pose_matching_cost.default,
            (logits, pred, gt, area, sigmas, size, 2.0, 70.0, 2.0, 0.25, 2.0),
        )


def test_compiled_fullgraph_equals_eager():
    logits, pred, gt, area = _random_batch(2, 6, 3, 17, torch.float32, seed=7)
    sigmas = _sigmas(17)

    size = _image_size(2, True)

    def fn(logits, pred, gt, area):
        return pose_matching_cost(logits, pred, gt, area, sigmas, **WEIGHTS, image_size=size), pairwise_oks(
            pred, gt, area, sigmas
        )

    compiled = torch.compile(fn, fullgraph=True)
    for got, want in zip(compiled(logits, pred, gt, area), fn(logits, pred, gt, area), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "reference"])
@pytest.mark.parametrize("name", ["pose_matching_cost", "pairwise_oks"])
def test_tracers_and_meta_tensors_see_the_op_and_eager_calls_have_no_gradient(name, kernel, monkeypatch):
    """Eager calls run the op's body without its dispatch: the same values, no gradient, as the op.
    make_fx and jit.trace record the op (their graphs compute a new batch), meta tensors get its
    fake's shape, a profiler and vmap see the op."""
    from torch.fx.experimental.proxy_tensor import make_fx

    monkeypatch.setattr(oks, "use_triton", lambda tensor: kernel and tensor.device.type != "meta")
    fns = {
        "pose_matching_cost": lambda logits, pred, gt, area, sigmas, size: pose_matching_cost(
            logits, pred, gt, area, sigmas, **WEIGHTS, image_size=size
        ),
        "pairwise_oks": lambda logits, pred, gt, area, sigmas, size: pairwise_oks(
            pred, gt, area, sigmas, image_size=size
        ),
    }
    fn, op = fns[name], getattr(torch.ops.jcra, name).default
    args = (*_random_batch(2, 6, 3, 17, torch.float32, seed=8), _sigmas(17), _image_size(2, True))
    other = (*_random_batch(2, 6, 3, 17, torch.float32, seed=9), *args[4:])
    eager = fn(*(t.clone().requires_grad_() for t in args))
    assert not eager.requires_grad
    op_args = args[1:] if name == "pairwise_oks" else (*args, *WEIGHTS.values())
    torch.testing.assert_close(eager, op(*op_args), rtol=0, atol=0)
    graph = make_fx(fn)(*args)
    assert f"jcra.{name}.default" in [str(node.target) for node in graph.graph.nodes]
    torch.testing.assert_close(graph(*other), fn(*other), rtol=0, atol=0)
    out = fn(*(t.to("meta") for t in args))
    assert (out.device.type, tuple(out.shape), out.dtype) == ("meta", (2, 6, 3), torch.float32)
    with torch.profiler.profile() as profile:  # a profile names the op
        fn(*args)
    assert f"jcra::{name}" in {event.name for event in profile.events()}
    traced = torch.jit.trace(fn, args, check_trace=False)
    assert f"jcra::{name}" in str(traced.graph)
    torch.testing.assert_close(traced(*other), fn(*other), rtol=0, atol=0)
    # vmap over two batches: the op (by torch's per-sample fallback), not its body on batched tensors
    stacked = [torch.stack(pair) for pair in zip(args[:4], other[:4], strict=True)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's performance warning
        mapped = torch.vmap(fn, in_dims=(0, 0, 0, 0, None, None))(*stacked, *args[4:])
    torch.testing.assert_close(mapped, torch.stack([fn(*args), fn(*other)]), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------
# OKS loss (jcra.oks_loss), on the same formula
# ---------------------------------------------------------------------------------------------------


def test_oks_loss_is_one_minus_pairwise_oks_on_the_diagonal():
    _, pred, gt, area = _random_batch(1, 6, 6, 17, torch.float32, seed=8, device="cpu")
    pred, gt, area = pred[0].double(), gt[0].double(), area[0].double()
    full = pairwise_oks_reference(pred[None], gt[None], area[None], COCO_SIGMAS)[0].diagonal()
    torch.testing.assert_close(oks_loss(pred, gt, area, COCO_SIGMAS, mode="linear"), 1 - full)
    torch.testing.assert_close(
        oks_loss(pred, gt, area, COCO_SIGMAS),
        -full.clamp(min=1e-6).log(),  # PETR's, the default
    )


@pytest.mark.parametrize("mode", ["linear", "log"])
def test_oks_loss_gradcheck(mode):
    """Near their ground truth (OKS 0.3-0.9), where both modes are smooth and the gradient large enough
    for gradcheck to see a wrong one; far off, below the log's clamp, the log's gradient is zero."""
    f64 = torch.float64
    gen = torch.Generator().manual_seed(9)
    gt = torch.cat([torch.rand(4, 5, 2, generator=gen, dtype=f64), torch.full((4, 5, 1), 2.0, dtype=f64)], -1)
    area = 0.05 + 0.1 * torch.rand(4, generator=gen, dtype=f64)
    pred = gt[..., :2] + 0.05 * area.sqrt()[:, None, None] * torch.randn(4, 5, 2, generator=gen, dtype=f64)
    sigmas = COCO_SIGMAS[:5]
    oks_values = 1 - oks_loss(pred, gt, area, sigmas, mode="linear")
    assert (oks_values > 0.3).all() and (oks_values < 0.9).all()
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: oks_loss(p, gt, area, sigmas, mode=mode), (pred,))
    far = (gt[..., :2] + 1.0).requires_grad_()
    assert (1 - oks_loss(far, gt, area, sigmas, mode="linear") < 1e-6).all()
    oks_loss(far, gt, area, sigmas, mode="log").sum().backward()
    assert not far.grad.any()


def _near_pairs(seed):
    """fp64 predictions near their ground truth (some keypoints unlabelled), areas in image units."""
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(4, 17, 3, generator=gen, dtype=torch.float64)
    gt[..., 2] = torch.randint(0, 3, (4, 17), generator=gen).double()
    pred = gt[..., :2] + 0.01 * torch.randn(4, 17, 2, generator=gen, dtype=torch.float64)
    return pred, gt, 0.05 + 0.2 * torch.rand(4, generator=gen, dtype=torch.float64)


def test_nan_at_unlabelled_keypoints_reaches_no_oks_and_no_gradient():
    pred, gt, area = _near_pairs(0)
    results = []
    for fill in (0.0, float("nan")):
        filled = torch.cat([torch.where(gt[..., 2:] > 0, gt[..., :2], fill), gt[..., 2:]], -1)
        p = pred.clone().requires_grad_()
        loss = oks_loss(p, filled, area, COCO_SIGMAS, mode="linear")
        loss.sum().backward()
        results.append((loss.detach(), p.grad))
    (loss, grad), (nan_loss, nan_grad) = results
    assert nan_loss.isfinite().all() and nan_grad.isfinite().all()
    torch.testing.assert_close(nan_loss, loss, rtol=0, atol=0)
    torch.testing.assert_close(nan_grad, grad, rtol=0, atol=0)


def test_oks_loss_in_image_units_takes_the_image_size():
    """With ``image_size`` (w, h), OKS is taken in pixels: the same as pixel coordinates and areas."""
    pred, gt, area = _near_pairs(1)
    size = torch.tensor([[1333, 300], [240, 960], [900, 400], [500, 700]], dtype=torch.float64)
    pixel_gt = torch.cat([gt[..., :2] * size[:, None], gt[..., 2:]], -1)
    pixels = oks_loss(pred * size[:, None], pixel_gt, area * size.prod(-1), COCO_SIGMAS, mode="linear")
    got = oks_loss(pred, gt, area, COCO_SIGMAS, mode="linear", image_size=size)
    torch.testing.assert_close(got, pixels)
    assert (got - oks_loss(pred, gt, area, COCO_SIGMAS, mode="linear")).abs().max() > 1e-3


def test_oks_loss_gradient_is_finite_and_zero_for_padding():
    gen = torch.Generator().manual_seed(10)
    gt = torch.cat([torch.rand(3, 17, 2, generator=gen), torch.full((3, 17, 1), 2.0)], dim=-1)
    area = torch.full((3,), 0.1)
    pred = gt[..., :2] + 0.01 * torch.randn(3, 17, 2, generator=gen)
    pred[0] += 10.0  # a padding row's prediction is anything: far off, exp(-e) overflows at area < 0
    pred.requires_grad_()
    area[0] = 0  # padding
    gt[1, :, 2] = 0  # nothing labelled
    for padding_area in (0.0, -1.0):  # a negative one too: exp(-e) of its e is inf, masked
        area[0] = padding_area
        pred.grad = None
        oks_loss(pred, gt, area, COCO_SIGMAS, mode="log").sum().backward()
        assert torch.isfinite(pred.grad).all()
        assert torch.all(pred.grad[:2] == 0) and pred.grad[2].abs().sum() > 0


def test_oks_loss_rejects_bad_mode_and_shapes():
    pred, gt, area = torch.zeros(2, 17, 2), torch.zeros(2, 17, 3), torch.ones(2)
    with pytest.raises(ValueError, match="mode"):
        oks_loss(pred, gt, area, COCO_SIGMAS, mode="square")
    with pytest.raises(ValueError, match="gt"):
        oks_loss(pred, gt[:, :14], area, COCO_SIGMAS)
    with pytest.raises(ValueError, match="area"):
        oks_loss(pred, gt, area[:1], COCO_SIGMAS)
    with pytest.raises(ValueError, match="image_size"):
        oks_loss(pred, gt, area, COCO_SIGMAS, image_size=torch.ones(2))
