"""The ``jcra`` command: predict on a folder (results JSON and drawings), evaluate, bad input."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from jcra import cli
from jcra.cli import main
from train.checkpoint import load_checkpoint


@pytest.fixture
def bad_files(data, checkpoint, tmp_path) -> Path:
    """``tmp_path`` with ``truncated/`` (a good image, then two truncated ones), ``clash/`` (``photo.png`` and
    ``photo.png.png``, its drawing's name), ``twin/a.jpg`` (named as the good image of ``truncated/``), a
    plain state dict, a JSON file, a truncated checkpoint, one without a weight, one whose layout has 14
    keypoints, and annotation files with 14 keypoints,
    without categories and with a crowdIndex that is a string."""
    image = sorted(Path(data["val_images"]).iterdir())[0]
    for folder, names in {
        "truncated": ["a.jpg"],
        "clash": ["photo.png", "photo.png.png"],
        "twin": ["a.jpg"],
    }.items():
        (tmp_path / folder).mkdir()
        for name in names:
            shutil.copy(image, tmp_path / folder / name)
    for name in ("b.jpg", "c.jpg"):
        (tmp_path / "truncated" / name).write_bytes(image.read_bytes()[:-200])
    torch.save(load_checkpoint(checkpoint)["model"], tmp_path / "state_dict.pt")
    (tmp_path / "not_checkpoint.pt").write_text('{"step": 1}')
    (tmp_path / "truncated.pt").write_bytes(Path(checkpoint).read_bytes()[:5000])
    state = load_checkpoint(checkpoint)
    state["model"].pop(next(iter(state["model"])))
    torch.save(state, tmp_path / "missing_weight.pt")
    state = load_checkpoint(checkpoint)
    state["data_config"]["keypoint_layout"] = "crowdpose"
    torch.save(state, tmp_path / "crowdpose_layout.pt")
    coco = json.loads(Path(data["val_ann"]).read_text())  # the same people with CrowdPose's 14 keypoints
    for category in coco["categories"]:
        category["keypoints"] = category["keypoints"][:14]
    for annotation in coco["annotations"]:
        annotation["keypoints"] = annotation["keypoints"][:42]
    (tmp_path / "k14.json").write_text(json.dumps(coco))
    coco = json.loads(Path(data["val_ann"]).read_text())
    del coco["categories"]  # the dataset reads it, but COCO evaluation needs it
    (tmp_path / "no_categories.json").write_text(json.dumps(coco))
    coco["categories"] = json.loads(Path(data["val_ann"]).read_text())["categories"]
    coco["images"][0]["crowdIndex"] = "0.3"  # scoring it failed after every image had run
    (tmp_path / "crowd_index.json").write_text(json.dumps(coco))
    return tmp_path


def test_predict_folder_writes_results_and_drawings(data, checkpoint, tmp_path, capsys):
    assert main(["predict", checkpoint, data["val_images"], "--out", str(tmp_path), "--device", "cpu"]) == 0
    records = json.loads((tmp_path / "results.json").read_text())
    images = sorted(Path(data["val_images"]).iterdir())
    assert {r["image_id"] for r in records} == set(range(len(images)))
    assert {(r["image_id"], Path(r["file_name"]).name) for r in records} == {
        (index, path.name) for index, path in enumerate(images)
    }  # ids follow the folder's images sorted by name
    assert all(len(r["keypoints"]) == 17 * 3 and 0 <= r["score"] <= 1 for r in records)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name + ".png" for p in images)
    assert "results.json" in capsys.readouterr().out


def test_predict_draws_the_people_scoring_at_least_the_threshold_on_the_layouts_skeleton(
    data, checkpoint, tmp_path, monkeypatch
):
    """At a threshold equal to the third best score, the drawing is exactly the image with the three
    best people on COCO's skeleton (and differs from the two best alone, so a > for >= shows; the
    test checkpoint's poses are too small for their limbs to show, so the skeleton is also checked as
    it is passed)."""
    from PIL import Image

    import jcra.visualize
    from jcra.data.images import read_rgb
    from jcra.data.keypoint_layouts import COCO
    from jcra.visualize import draw_keypoints

    skeletons = []

    def recorded(image, people, skeleton, **kwargs):
        skeletons.append(skeleton)
        return draw_keypoints(image, people, skeleton, **kwargs)

    monkeypatch.setattr(jcra.visualize, "draw_keypoints", recorded)
    path = sorted(Path(data["val_images"]).iterdir())[0]
    main(["predict", checkpoint, str(path), "--out", str(tmp_path / "all"), "--device", "cpu"])
    records = json.loads((tmp_path / "all" / "results.json").read_text())
    threshold = sorted((r["score"] for r in records), reverse=True)[2]
    out = tmp_path / "three"
    main(["predict", checkpoint, str(path), "--out", str(out), "--device", "cpu"]
         + ["--score-threshold", repr(threshold)])  # fmt: skip
    assert skeletons == [COCO.skeleton] * 2

    def drawn(people):
        return np.asarray(draw_keypoints(read_rgb(path, upright=True), people, COCO.skeleton))

    best = sorted(records, key=lambda r: -r["score"])
    expected = drawn([r for r in records if r["score"] >= threshold])
    assert not np.array_equal(expected, drawn(best[:2]))
    with Image.open(out / f"{path.name}.png") as drawing:
        np.testing.assert_array_equal(np.asarray(drawing), expected)


def test_predict_into_input_folder_keeps_inputs_and_same_stems_apart(data, checkpoint, tmp_path):
    image = sorted(Path(data["val_images"]).iterdir())[0]
    inputs = {name: tmp_path / name for name in ("photo.jpg", "photo.png")}
    for path in inputs.values():
        shutil.copy(image, path)
    assert main(["predict", checkpoint, str(tmp_path), "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert all(path.read_bytes() == image.read_bytes() for path in inputs.values())
    assert sorted(p.name for p in tmp_path.glob("*.*.png")) == ["photo.jpg.png", "photo.png.png"]


def test_evaluate_command_prints_ap(data, checkpoint, tmp_path, capsys):
    args = ["evaluate", checkpoint, "--ann-file", data["val_ann"], "--image-dir", data["val_images"]]
    assert main([*args, "--out", str(tmp_path), "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["AP"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_evaluate_and_predict_run_the_model_in_the_precision_asked(data, checkpoint, tmp_path, monkeypatch):
    import train.train

    asked, autocast = [], train.train.autocast

    def spy(device, precision):
        asked.append(precision)
        return autocast(device, precision)

    monkeypatch.setattr(train.train, "autocast", spy)
    args = ["evaluate", checkpoint, "--ann-file", data["val_ann"], "--image-dir", data["val_images"]]
    assert main([*args, "--device", "cpu", "--precision", "bf16"]) == 0
    images = [str(path) for path in sorted(Path(data["val_images"]).iterdir())]
    assert main(["predict", checkpoint, *images, "--out", str(tmp_path), "--precision", "fp16"]) == 0
    assert asked == ["bf16"] + ["fp16"] * len(images)  # evaluate: one batch of the two images


def test_predict_compiled_writes_the_records_of_predict(data, checkpoint, tmp_path, eager_compile):
    """--compile: the same records (traced by Dynamo, run eager: ``eager_compile``)."""
    images = [str(path) for path in sorted(Path(data["val_images"]).iterdir())]
    records = {}
    for flags in ([], ["--compile"]):
        out = tmp_path / "-".join(["run", *flags])
        assert main(["predict", checkpoint, *images, "--out", str(out), "--device", "cpu", *flags]) == 0
        records[tuple(flags)] = json.loads((out / "results.json").read_text())
    torch._dynamo.reset()
    assert len(eager_compile) == 1 and records[()]  # top_k 100 of each image's queries
    for got, want in zip(records[("--compile",)], records[()], strict=True):
        assert got["image_id"] == want["image_id"] and got["file_name"] == want["file_name"]
        np.testing.assert_allclose(got["keypoints"], want["keypoints"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=1e-5)


def test_evaluate_compiled_pads_to_canvases_and_writes_the_records_of_evaluate(
    data, checkpoint, tmp_path, eager_compile, padded_sizes
):
    """--compile: batches on canvases of the checkpoint's val_scale (48) and max_size (80), and the same
    records and AP (traced by Dynamo, run eager: ``eager_compile``). The 62 x 64 and 64 x 62 images,
    48 pixels on the short side, go on the 48 x 80 canvases; eager, each batch is padded to its own."""
    state = torch.load(checkpoint, weights_only=True)
    state["data_config"] = {**state["data_config"], "val_scale": 48, "max_size": 80}
    torch.save(state, tmp_path / "sized.pt")
    args = [
        "evaluate",
        str(tmp_path / "sized.pt"),
        "--ann-file",
        data["val_ann"],
        "--image-dir",
        data["val_images"],
    ]
    records, metrics = {}, {}
    for flags in ([], ["--compile"]):
        out = tmp_path / "-".join(["run", *flags])
        assert main([*args, "--out", str(out), "--device", "cpu", "--batch-size", "1", *flags]) == 0
        records[tuple(flags)] = json.loads((out / "results.json").read_text())
        metrics[tuple(flags)] = json.loads((out / "metrics.json").read_text())
    torch._dynamo.reset()
    assert padded_sizes == [(64, 64), (64, 64), (96, 64), (64, 96)]
    assert eager_compile == [{"mode": None, "module_guards": False}] and records[()]  # GPU: "reduce-overhead"
    for got, want in zip(records[("--compile",)], records[()], strict=True):
        assert got["image_id"] == want["image_id"]
        np.testing.assert_allclose(got["keypoints"], want["keypoints"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=1e-5)
    assert metrics[("--compile",)]["AP"] == pytest.approx(metrics[()]["AP"], abs=1e-3)


def test_evaluate_takes_the_checkpoints_sizes(data, checkpoint, tmp_path, monkeypatch):
    """Images are read at the checkpoint's val_scale and max_size (the test checkpoints have both at
    the images' size, where taking one for the other would not show)."""
    state = torch.load(checkpoint, weights_only=True)
    state["data_config"] = {**state["data_config"], "val_scale": 32, "max_size": 48}
    torch.save(state, tmp_path / "sized.pt")
    seen = []

    def stop_at_the_dataset(ann_file, image_dir, train, cfg, layout):
        seen.append((cfg.val_scale, cfg.max_size))
        raise KeyboardInterrupt

    monkeypatch.setattr("train.train.build_dataset", stop_at_the_dataset)
    with pytest.raises(KeyboardInterrupt):
        cli.evaluate(tmp_path / "sized.pt", data["val_ann"], data["val_images"], device="cpu")
    assert seen == [(32, 48)]


def test_evaluate_writes_the_results_before_scoring_them(data, checkpoint, tmp_path, monkeypatch):
    """An error in scoring lost every prediction of the run."""
    import jcra.evaluation

    def fail(results, ann_file):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(jcra.evaluation, "evaluate_keypoints", fail)
    args = ["evaluate", checkpoint, "--ann-file", data["val_ann"], "--image-dir", data["val_images"]]
    with pytest.raises(RuntimeError, match="scoring failed"):
        main([*args, "--out", str(tmp_path), "--device", "cpu"])
    records = json.loads((tmp_path / "results.json").read_text())
    images = json.loads(Path(data["val_ann"]).read_text())["images"]
    assert records and {r["image_id"] for r in records} == {image["id"] for image in images}


def test_evaluate_scores_under_the_files_person_category(data, checkpoint, tmp_path, capsys):
    """A file whose person category has id 2: records name it, and score as under COCO's id 1."""
    args = ["--image-dir", data["val_images"], "--device", "cpu"]
    assert main(["evaluate", checkpoint, "--ann-file", data["val_ann"], *args]) == 0
    expected = json.loads(capsys.readouterr().out)
    gt = json.loads(Path(data["val_ann"]).read_text())
    for entry in gt["categories"] + gt["annotations"]:
        entry["id" if "name" in entry else "category_id"] = 2
    (tmp_path / "cat2.json").write_text(json.dumps(gt))
    out = tmp_path / "out"
    assert (
        main(["evaluate", checkpoint, "--ann-file", str(tmp_path / "cat2.json"), *args, "--out", str(out)])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == expected
    assert {r["category_id"] for r in json.loads((out / "results.json").read_text())} == {2}


@pytest.mark.filterwarnings("ignore:.*crowdposetools takes 0.53:UserWarning")  # synthetic areas
def test_metrics_json_is_strict_with_an_empty_crowd_level(data, checkpoint, tmp_path, capsys):
    """Every image easy: the medium and hard levels have none (nan), written as null, not NaN."""
    gt = json.loads(Path(data["val_ann"]).read_text())
    for image in gt["images"]:
        image["crowdIndex"] = 0.05
    (tmp_path / "crowd.json").write_text(json.dumps(gt))
    args = ["--ann-file", str(tmp_path / "crowd.json"), "--image-dir", data["val_images"], "--device", "cpu"]
    assert main(["evaluate", checkpoint, *args, "--out", str(tmp_path)]) == 0

    def strict(constant):
        raise AssertionError(f"{constant} is not JSON")

    for text in (capsys.readouterr().out, (tmp_path / "metrics.json").read_text()):
        metrics = json.loads(text, parse_constant=strict)
        assert metrics["AP_medium"] is None and metrics["AP_hard"] is None
        assert 0.0 <= metrics["AP_easy"] <= 1.0


def test_bad_out_stops_before_the_model_loads(data, checkpoint, bad_files, monkeypatch, capsys):
    monkeypatch.setattr("jcra.cli.load_model", lambda *args: pytest.fail("the model loaded"))
    out = str(bad_files / "k14.json" / "sub")  # under a file
    for command in (
        ["predict", checkpoint, data["val_images"], "--out", out],
        [
            "evaluate",
            checkpoint,
            "--ann-file",
            data["val_ann"],
            "--image-dir",
            data["val_images"],
            "--out",
            out,
        ],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--device", "cpu"])
        assert exit_info.value.code == 2
        assert re.search(r"--out: cannot create folder .*k14\.json/sub", capsys.readouterr().err)


def test_predict_reads_tiff_and_gif_names_other_files_and_turns_photos_upright(data, tmp_path, checkpoint):
    from PIL import Image

    with Image.open(sorted(Path(data["val_images"]).iterdir())[0]) as photo:
        image = photo.convert("RGB").resize((64, 48))
    folder = tmp_path / "in"
    folder.mkdir()
    image.save(folder / "a.tif")
    image.save(folder / "b.gif")
    exif = image.getexif()
    exif[0x0112] = 6  # shown turned a quarter clockwise: 48 x 64
    image.save(folder / "phone.jpg", exif=exif)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden").write_text("")
    (folder / "sub").mkdir()  # its images are not read
    image.save(folder / "sub" / "c.png")
    out = tmp_path / "out"
    with pytest.warns(
        UserWarning,
        match=r"skipping 2 entries of .*in that are folders or lack an image suffix: "
        r"\['notes\.txt', 'sub/'\]",
    ):
        assert main(["predict", checkpoint, str(folder), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a.tif.png", "b.gif.png", "phone.jpg.png"]
    with Image.open(out / "phone.jpg.png") as drawing:
        assert drawing.size == (48, 64)
    records = json.loads((out / "results.json").read_text())
    phone = [r["keypoints"] for r in records if r["file_name"].endswith("phone.jpg")]
    assert phone and max(max(kp[0::3]) for kp in phone) <= 48 and max(max(kp[1::3]) for kp in phone) <= 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "{ckpt}", "/nonexistent.png", "--out", "{out}"], "IMAGES"),
        (["predict", "{ckpt}", "{images}", "--out", "{out}", "--score-threshold", "2"], "score_threshold"),
        (["predict", "/nonexistent.pt", "{images}", "--out", "{out}"], "checkpoint"),
        (["evaluate", "{ckpt}", "--ann-file", "/nonexistent.json", "--image-dir", "{images}"], "ann_file"),
        (["predict", "{ckpt}", "{out}/clash", "--out", "{out}/clash"], r"--out.*clash/photo\.png\.png"),
        (  # every unreadable image named at once
            ["predict", "{ckpt}", "{out}/truncated", "--out", "{out}"],
            r"2 of 3 images cannot be read:\n  .*truncated/b\.jpg.*\n  .*truncated/c\.jpg",
        ),
        (["predict", "{ckpt}", "{images}", "--out", "{out}", "--device", "gpu"], "--device"),
        (["predict", "{ckpt}", "{images}", "--out", "{out}", "--device", "cuda:99"], "--device"),
        (["predict", "{ckpt}", "{images}", "--out", "{out}", "--device", "cuda:{gpus}"], "--device"),
        (["predict", "{ckpt}", "{images}", "--out", "{out}", "--device", "cpux"], "--device"),
        (
            ["predict", "{ckpt}", "{out}/twin", "{out}/truncated", "--out", "{out}"],
            r"a\.jpg would both be drawn",
        ),
        (
            ["evaluate", "{ckpt}", "--ann-file", "{ann}", "--image-dir", "{images}", "--device", "gpu"],
            "--device",
        ),
        (["predict", "{out}/state_dict.pt", "{images}", "--out", "{out}"], r"state_dict\.pt.*model_config"),
        (["predict", "{out}/not_checkpoint.pt", "{images}", "--out", "{out}"], r"not_checkpoint\.pt"),
        (["predict", "{out}/truncated.pt", "{images}", "--out", "{out}"], r"truncated\.pt"),
        (
            ["predict", "{out}/missing_weight.pt", "{images}", "--out", "{out}"],
            r"missing_weight\.pt: its weights do not fit its model_config",
        ),
        (
            ["predict", "{out}/crowdpose_layout.pt", "{images}", "--out", "{out}"],
            r"crowdpose_layout\.pt: its model has 17 keypoints, its keypoint_layout 'crowdpose' 14",
        ),
        (
            ["evaluate", "{ckpt}", "--ann-file", "{out}/k14.json", "--image-dir", "{images}"],
            r"k14\.json.*14 keypoints.*'coco'",
        ),
        (
            ["evaluate", "{ckpt}", "--ann-file", "{out}/no_categories.json", "--image-dir", "{images}"],
            r"no_categories\.json.*'categories'",
        ),
        (["evaluate", "{ckpt}", "--ann-file", "{out}/twin", "--image-dir", "{images}"], r"twin is a folder"),
        (
            ["evaluate", "{ckpt}", "--ann-file", "{out}/crowd_index.json", "--image-dir", "{images}"],
            r"crowd_index\.json: image 1 has crowdIndex '0\.3', expected a number in \[0, 1\]",
        ),
        (
            ["evaluate", "{ckpt}", "--ann-file", "{ann}", "--image-dir", "{images}", "--batch-size", "0"],
            "--batch-size must be an integer >= 1",
        ),
        (
            ["predict", "{ckpt}", "{images}", "--out", "{out}/fresh", "--top-k", "0"],
            "top_k must be an integer >= 1",
        ),
        (
            ["predict", "{ckpt}", "{images}", "--out", "{out}/fresh", "--precision", "fp64"],
            "--precision must be one of fp32, bf16, fp16, got 'fp64'",
        ),
        (
            ["evaluate", "{ckpt}", "--ann-file", "{ann}", "--image-dir", "{images}", "--out", "{out}/fresh"]
            + ["--precision", "int8"],
            "--precision must be one of fp32, bf16, fp16, got 'int8'",
        ),
        (["predict", "{out}/typo.pt", "{images}", "--out", "{out}/fresh"], r"typo\.pt' does not exist"),
        (
            ["evaluate", "{out}/typo.pt", "--ann-file", "{ann}", "--image-dir", "{images}"]
            + ["--out", "{out}/fresh"],
            r"typo\.pt' does not exist",
        ),
    ],
)
def test_bad_input_exits_with_message(data, checkpoint, bad_files, capsys, args, message):
    fill = {
        "ckpt": checkpoint,
        "out": str(bad_files),
        "images": data["val_images"],
        "ann": data["val_ann"],
        "gpus": torch.cuda.device_count(),  # one past the last GPU
    }
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**fill) for a in args])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    # nothing written: every image is decoded before the model runs and draws
    assert not (bad_files / "results.json").exists() and not list(bad_files.glob("*.png"))
    assert not (bad_files / "fresh").exists()  # nor --out made for a bad --top-k or checkpoint path


@pytest.mark.parametrize("during", ["reading", "drawing"])
def test_an_interrupted_predict_keeps_the_results_of_the_images_done(
    data, checkpoint, tmp_path, monkeypatch, capsys, during
):
    """Ctrl-C while the second image is read, or drawn: results.json holds the records of the images
    the model ran on, the drawings made stay, and the command exits with the shell's status for an
    interrupt."""
    import jcra.cli
    import jcra.visualize

    images = sorted(Path(data["val_images"]).iterdir())[:3]
    module, name = (jcra.cli, "read_rgb") if during == "reading" else (jcra.visualize, "draw_keypoints")
    calls, original = [], getattr(module, name)
    nth = len(images) + 2 if during == "reading" else 2  # reads: every image checked, then one a run

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", checkpoint, *map(str, images), "--out", str(tmp_path), "--device", "cpu"])
    assert exit_info.value.code == 130
    done = images[:1] if during == "reading" else images[:2]
    assert f"stopped after {len(done)} of {len(images)} images" in capsys.readouterr().err
    records = json.loads((tmp_path / "results.json").read_text())
    assert records and {r["file_name"] for r in records} == set(map(str, done))
    assert [p.name for p in tmp_path.glob("*.png")] == [f"{images[0].name}.png"]


def test_predict_keeps_top_k_and_draws_only_what_passes_the_threshold(data, checkpoint, tmp_path):
    from PIL import Image

    from jcra.data.images import read_rgb

    image = sorted(Path(data["val_images"]).iterdir())[0]
    out = tmp_path / "out"
    args = ["predict", checkpoint, str(image), "--out", str(out), "--device", "cpu", "--top-k", "3"]
    assert main([*args, "--score-threshold", "1"]) == 0
    assert len(json.loads((out / "results.json").read_text())) == 3
    with Image.open(out / f"{image.name}.png") as drawing:  # no score reaches 1: nothing drawn
        assert np.array_equal(np.asarray(drawing.convert("RGB")), np.asarray(read_rgb(image, upright=True)))


def test_a_checkpoint_trained_with_imagenet_weights_and_fused_kernels_loads_on_the_cpu(checkpoint, tmp_path):
    """Its weights come from the checkpoint (no download) and the reference ops run (no Triton)."""
    from jcra.cli import load_model

    state = load_checkpoint(checkpoint)
    state["model_config"]["overrides"].update(pretrained=True, use_fused_kernels=True)
    torch.save(state, tmp_path / "gpu.pt")
    model, _ = load_model(tmp_path / "gpu.pt", torch.device("cpu"))
    assert model.use_fused_kernels is False and not model.training


def test_a_checkpoint_keeps_the_decoder_offset_scale_it_was_trained_with(checkpoint, tmp_path):
    """Checkpoints record it; one written before it was recorded (the scale was 0.25 then, PETR's 0.5
    since) loads with 0.25, not with the new default, which would change its predictions unannounced."""
    from jcra.cli import load_model

    state = load_checkpoint(checkpoint)
    assert state["model_config"]["overrides"]["extent_scale"] == 0.5
    model, _ = load_model(checkpoint, torch.device("cpu"))
    assert model.decoder.extent_scale == 0.5
    del state["model_config"]["overrides"]["extent_scale"]
    torch.save(state, tmp_path / "old.pt")
    model, _ = load_model(tmp_path / "old.pt", torch.device("cpu"))
    assert model.decoder.extent_scale == 0.25


def test_a_folders_images_come_sorted_by_name(tmp_path):
    """image_id is an image's place in this list: it must not depend on the file system's order."""
    from jcra.cli import image_paths

    names = ["c.jpg", "a.png", "d.jpg", "b.jpg", "e10.jpg", "e9.jpg"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in image_paths([str(tmp_path)])] == sorted(names)
