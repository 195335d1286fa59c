"""jcra.PoseEstimator: a checkpoint as a function of images, as ``jcra predict`` runs it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jcra import PoseEstimator
from jcra.cli import main


@pytest.fixture(scope="module")
def estimator(checkpoint):
    return PoseEstimator.from_checkpoint(checkpoint, device="cpu", top_k=20)


def _val_images(data) -> list[Path]:
    return sorted(Path(data["val_images"]).iterdir())


def test_people_are_those_jcra_predict_writes(data, checkpoint, estimator, tmp_path):
    """The same people, keypoints in the image's pixels, scores highest first; a threshold keeps those
    scoring at least it."""
    path = _val_images(data)[0]
    main(["predict", checkpoint, str(path), "--out", str(tmp_path), "--device", "cpu", "--top-k", "20"])
    records = json.loads((tmp_path / "results.json").read_text())
    people = estimator(Image.open(path))
    assert people["keypoints"].shape == (20, 17, 2) and people["scores"].shape == (20,)
    want = torch.tensor([r["keypoints"] for r in records]).view(20, 17, 3)[..., :2]
    torch.testing.assert_close(people["keypoints"], want, rtol=0, atol=1e-4)
    torch.testing.assert_close(
        people["scores"], torch.tensor([r["score"] for r in records]), rtol=0, atol=1e-6
    )
    assert (people["scores"].diff() <= 0).all()
    threshold = people["scores"][7].item()
    kept = estimator(Image.open(path), score_threshold=threshold)
    assert len(kept["scores"]) == len(kept["keypoints"]) == int((people["scores"] >= threshold).sum()) >= 8


def test_any_image_form_and_a_batch_give_each_images_people(data, estimator):
    """A PIL image, a numpy [H, W, 3] and a torch [3, H, W] uint8 array give the same people; a list is
    one padded batch, each image's people as alone (an image cut smaller makes the sizes differ)."""
    first, second = (Image.open(path).convert("RGB") for path in _val_images(data)[:2])
    second = second.crop((0, 0, 48, 40))
    alone = [estimator(image) for image in (first, second)]
    array = np.array(first)
    for form in (array, torch.from_numpy(array).permute(2, 0, 1)):
        torch.testing.assert_close(estimator(form)["keypoints"], alone[0]["keypoints"], rtol=0, atol=0)
    batched = estimator([first, second])
    for got, want in zip(batched, alone, strict=True):
        torch.testing.assert_close(got["keypoints"], want["keypoints"], rtol=0, atol=1e-3)
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-5)


def test_bad_input_is_named(estimator):
    with pytest.raises(TypeError, match=r"images\[0\] as a tensor must be \[3, H, W\] uint8"):
        estimator(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="score_threshold"):
        estimator(Image.new("RGB", (32, 32)), score_threshold=2.0)
    with pytest.raises(ValueError, match="images and image_ids"):
        estimator([])
    with pytest.raises(ValueError, match=r"images\[1\] has no pixels"):
        estimator([np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\]: the image is 0x5 pixels"):
        estimator(Image.new("RGB", (0, 5)))


def test_a_file_is_read_upright_as_jcra_predict_reads_it(data, estimator, tmp_path):
    """A phone photo stores its pixels turned and says so in EXIF: given its path, the people are in
    the upright frame, those of the upright image."""
    upright = Image.open(_val_images(data)[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn the stored pixels 90 degrees clockwise to show them
    path = tmp_path / "phone.png"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    want = estimator(upright)
    for got in (estimator(path), estimator(str(path)), estimator([path])[0]):
        torch.testing.assert_close(got["keypoints"], want["keypoints"], rtol=0, atol=1e-4)
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-6)


def test_a_model_in_another_precision_gets_pixels_in_its_precision(checkpoint, data):
    """The batch is made inside the call, so it takes the model's dtype (it cannot be cast outside)."""
    from jcra.inference import load_model

    image = Image.open(_val_images(data)[0])
    model, data_config = load_model(checkpoint, torch.device("cpu"))
    want = PoseEstimator(model, data_config)(image)
    wide = PoseEstimator(load_model(checkpoint, torch.device("cpu"))[0].double(), data_config)(image)
    torch.testing.assert_close(wide["keypoints"].float(), want["keypoints"], rtol=0, atol=1e-3)
    half = PoseEstimator(load_model(checkpoint, torch.device("cpu"))[0].bfloat16(), data_config)(image)
    assert half["keypoints"].shape == want["keypoints"].shape and half["keypoints"].isfinite().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_precision_runs_the_model_under_its_autocast(checkpoint, data, dtype):
    """``precision`` is autocast around the model and nothing else: the people of the fp32 estimator run
    under autocast by hand, from layers that computed in that dtype, the weights left fp32. (On this
    untrained model bf16 moves some people by up to 54 of 64 pixels against fp32, as near-tied proposals
    swap; fp16 by under 0.001.)"""
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    image = Image.open(_val_images(data)[0])
    estimator = PoseEstimator.from_checkpoint(checkpoint, device="cpu", top_k=20, precision=precision)
    computed = []
    linears = [m for m in estimator.model.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_hook(lambda m, i, out: computed.append(out.dtype)) for m in linears]
    got = estimator(image)
    for hook in hooks:
        hook.remove()
    assert set(computed) == {dtype, torch.float32}  # a few layers (the heads' scores) keep fp32 on purpose
    assert {p.dtype for p in estimator.model.parameters()} == {torch.float32}
    plain = PoseEstimator.from_checkpoint(checkpoint, device="cpu", top_k=20)
    with torch.autocast("cpu", dtype=dtype):
        want = plain(image)
    torch.testing.assert_close(got["keypoints"], want["keypoints"], rtol=0, atol=0)
    torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        PoseEstimator(plain.model, {"keypoint_layout": "coco", "val_scale": 64, "max_size": 64}, 20, "fp8")


def _images_of_three_canvases(data) -> list[np.ndarray]:
    """Landscape, portrait, landscape at another aspect and square: at ``val_scale`` 48 and ``max_size``
    80 on canvases (48, 80), (80, 48), (48, 80) again and (48, 48), padded to multiples of 32 (64, 96),
    (96, 64), (64, 96), (64, 64); the third alone would be padded to (64, 64)."""
    base = np.array(Image.open(_val_images(data)[0]).convert("RGB"))
    return [np.resize(base, (h, w, 3)) for h, w in [(64, 96), (96, 64), (64, 80), (64, 64)]]


CANVAS_SETTINGS = {"keypoint_layout": "coco", "val_scale": 48, "max_size": 80}


def test_a_compiled_estimator_pads_to_a_few_canvases_and_finds_the_same_people(
    checkpoint, data, padded_sizes, eager_compile
):
    """``compile=True``: images of four sizes go in on three canvases, one graph each, and give the people
    found without compiling, where each batch is padded only to its own size. Dynamo's tracing is what
    is checked here (``eager_compile``); the Inductor graphs run in the CUDA test below."""
    from jcra.inference import load_model

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cpu = torch.device("cpu")
    compiled = PoseEstimator(load_model(checkpoint, cpu)[0], CANVAS_SETTINGS, 20, compile=True)
    plain = PoseEstimator(load_model(checkpoint, cpu)[0], CANVAS_SETTINGS, 20)
    # on a GPU "reduce-overhead": one CUDA graph a canvas; Dynamo checks the inputs only
    assert eager_compile == [{"mode": None, "module_guards": False}]
    for image in _images_of_three_canvases(data):
        got, want = compiled(image), plain(image)
        torch.testing.assert_close(got["keypoints"], want["keypoints"], rtol=0, atol=1e-3)
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-5)
    assert padded_sizes[0::2] == [(64, 96), (96, 64), (64, 96), (64, 64)]
    assert padded_sizes[1::2] == [(64, 96), (96, 64), (64, 64), (64, 64)]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3
    torch._dynamo.reset()


def test_a_compiled_estimator_runs_a_shape_past_the_recompile_limit_uncompiled(
    checkpoint, data, eager_compile
):
    """Under ``fullgraph=True`` Dynamo raises on a graph past its recompile limit: the estimator runs such
    a batch uncompiled, with a warning, and finds the same people."""
    from jcra.inference import load_model

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cpu = torch.device("cpu")
    compiled = PoseEstimator(load_model(checkpoint, cpu)[0], CANVAS_SETTINGS, 20, compile=True)
    plain = PoseEstimator(load_model(checkpoint, cpu)[0], CANVAS_SETTINGS, 20)
    landscape, portrait, _, square = _images_of_three_canvases(data)
    with torch._dynamo.config.patch(recompile_limit=2):
        compiled(landscape), compiled(portrait)
        with pytest.warns(UserWarning, match=r"2 batch shapes compiled.*\(1, 3, 64, 64\) runs uncompiled"):
            got = compiled(square)
        assert compiled(landscape)["scores"].shape == (20,)  # a compiled shape stays compiled
    want = plain(square)
    torch.testing.assert_close(got["keypoints"], want["keypoints"], rtol=0, atol=1e-3)
    torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()


def test_a_compiled_estimator_refuses_a_model_put_back_in_training(checkpoint, data, eager_compile):
    """Its graphs do not guard the model's mode (``module_guards=False``): it checks the mode itself."""
    from jcra.inference import load_model

    torch._dynamo.reset()
    compiled = PoseEstimator(
        load_model(checkpoint, torch.device("cpu"))[0], CANVAS_SETTINGS, 20, compile=True
    )
    image = _images_of_three_canvases(data)[0]
    compiled(image)
    compiled.model.train()
    with pytest.raises(RuntimeError, match="put in training mode; call .eval"):
        compiled(image)
    compiled.model.eval()
    assert compiled(image)["scores"].shape == (20,)
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_compiled_estimator_on_a_gpu_finds_eagers_people(checkpoint, data):
    """The whole forward through Inductor, replayed as CUDA graphs, fused kernels included: the people
    of the eager estimator (fp32, no TF32 for either) on images of three canvases."""
    from jcra.inference import load_model

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    device = torch.device("cuda")
    compiled = PoseEstimator(load_model(checkpoint, device)[0], CANVAS_SETTINGS, 20, compile=True)
    plain = PoseEstimator(load_model(checkpoint, device)[0], CANVAS_SETTINGS, 20)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        # each canvas's graph: its first call warms up, the second records, the third replays
        for image in _images_of_three_canvases(data) * 3:
            got, want = compiled(image), plain(image)
            torch.testing.assert_close(got["keypoints"], want["keypoints"], rtol=0, atol=1e-2)
            torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-4)
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0
    torch._dynamo.reset()


def test_a_torch_device_is_taken_as_it_is(checkpoint):
    estimator = PoseEstimator.from_checkpoint(checkpoint, device=torch.device("cpu"))
    assert next(estimator.model.parameters()).device == torch.device("cpu")


def test_a_checkpoint_lacking_its_data_settings_is_named(checkpoint, tmp_path):
    from train.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(checkpoint)
    del state["data_config"]["val_scale"]
    save_checkpoint(tmp_path / "cut.pt", state)
    with pytest.raises(ValueError, match=r"cut\.pt: its data_config must hold keypoint_layout, val_scale"):
        PoseEstimator.from_checkpoint(tmp_path / "cut.pt", device="cpu")


def test_images_are_resized_to_the_checkpoints_scale_and_people_come_back_in_their_pixels():
    """Every test checkpoint evaluates at the size its images have, where a wrong scale or people left in
    the resized frame would not show: a model that puts every keypoint at (0.75, 0.5) of what it sees,
    asked about a 64 x 48 image at val_scale 32 (short side 32: 43 x 32 pixels go in)."""
    seen = []

    class Fixed(torch.nn.Module):
        num_keypoints = 17

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images, padding_mask):
            valid = ~padding_mask
            seen.append((int(valid.any(2).sum(1).max()), int(valid.any(1).sum(1).max())))
            keypoints = torch.tensor([0.75, 0.5]).expand(images.shape[0], 2, 17, 2)
            return {"logits": torch.zeros(images.shape[0], 2), "keypoints": keypoints}

    settings = {"keypoint_layout": "coco", "val_scale": 32, "max_size": 64}
    people = PoseEstimator(Fixed(), settings, top_k=2)(Image.new("RGB", (64, 48)))
    assert seen == [(32, 43)]
    expected = torch.tensor([0.75 * 64, 0.5 * 48]) - 0.5  # the labels' pixel indices
    torch.testing.assert_close(people["keypoints"], expected.expand(2, 17, 2))
