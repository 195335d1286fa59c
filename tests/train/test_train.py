"""Training loop on CPU: a short run end to end, bitwise resume, DDP on gloo, NaN stop, bad input."""

import contextlib
import dataclasses
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from jcra import PoseEstimator, build_model
from tests.train.conftest import IMAGE_SIZE, tiny_config
from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import TrainConfig, config_from
from train.distributed import ResumableSampler, SeededSamples
from train.metrics_log import MetricsLog
from train.train import accumulate, build_optimizer, train


def test_short_run_end_to_end(data, tmp_path):
    result = train(tiny_config(data, tmp_path, eval_every=1))
    assert result["step"] == 6 and result["epoch"] == 2
    assert set(result["metrics"]) >= {"AP", "AP50"} and 0.0 <= result["metrics"]["AP"] <= 1.0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if line["kind"] == "train"]
    assert [line["step"] for line in train_lines] == list(range(1, 7))
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in train_lines)
    assert sum(line["kind"] == "val" for line in lines) == 2  # eval_every=1 over 2 epochs
    records = json.loads((tmp_path / "val_results.json").read_text())
    assert records and {"image_id", "category_id", "keypoints", "score"} <= set(records[0])
    state = load_checkpoint(result["checkpoint"])
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 2, 0)
    assert state["model_config"]["name"] == "jcra_tiny"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_after_interruption_is_bitwise(data, tmp_path, num_workers):
    """Stop after 2 steps and resume to 5 (across the epoch boundary) == 5 steps uninterrupted, the
    augmentations drawn in the main process or in workers."""
    full = train(tiny_config(data, tmp_path / "full", max_steps=5, num_workers=num_workers))
    train(tiny_config(data, tmp_path / "cut", max_steps=2, num_workers=num_workers))
    resumed = train(tiny_config(data, tmp_path / "cut", max_steps=5, resume=True, num_workers=num_workers))
    assert resumed["step"] == full["step"] == 5
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert (a["epoch"], a["batch_in_epoch"]) == (b["epoch"], b["batch_in_epoch"]) == (1, 2)
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=0, msg=name)
    for index, slot in a["optimizer"]["state"].items():
        for key, value in slot.items():
            torch.testing.assert_close(b["optimizer"]["state"][index][key], value, rtol=0, atol=0)
    assert a["scheduler"] == b["scheduler"]
    torch.testing.assert_close(a["rng"][0]["torch"], b["rng"][0]["torch"], rtol=0, atol=0)


def test_evaluation_every_eval_every_th_epoch_and_after_the_last(data, tmp_path):
    """eval_every=2 over 3 epochs of 3 steps: after epoch 2 (step 6) and the last (step 9)."""
    train(tiny_config(data, tmp_path, epochs=3, eval_every=2))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["kind"] == "val"] == [6, 9]


def test_gradient_accumulation_steps_once_per_grad_accum_micro_batches(data, tmp_path):
    """6 images at batch 1: 3 optimizer steps (how the micro-batches average is the next test's)."""
    result = train(tiny_config(data, tmp_path, batch_size=1, grad_accum=2, epochs=1))
    assert result["step"] == 3


class _Affine(torch.nn.Module):
    """A model of the training loop's interface: ``(images, padding_mask) -> outputs``."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))

    def forward(self, images, padding_mask):
        return {"out": images @ self.weight}


def test_accumulate_divides_every_micro_batch_by_the_whole_batchs_counts():
    """Each micro-batch's loss, a sum, is divided by the count of all three (as one batch's would be),
    and the step's loss is their sum."""
    model = _Affine()
    micro = [
        torch.tensor([[1.0, 2.0, 3.0]]),
        torch.tensor([[-4.0, 0.0, 8.0]]),
        torch.tensor([[0.0, 1.0, 1.0]]),
    ]

    class Criterion:
        @staticmethod
        def count(targets):  # the people of a micro-batch: 1, 2 and 3
            return torch.tensor([float(targets[0]), 0.0, 0.0])

        def __call__(self, outputs, targets, counts):
            loss = (outputs["out"] * targets).sum() ** 2 / counts[0]
            return {"loss": loss, "loss_part": 2 * loss}

    batches = [
        (x, torch.zeros(1, dtype=torch.bool), torch.tensor([float(i + 1)])) for i, x in enumerate(micro)
    ]
    cfg = SimpleNamespace(grad_accum=3, precision="fp32")
    totals = accumulate(
        model, Criterion(), batches, cfg, torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False)
    )
    # loss_i = (t_i x_i . w)^2 / 6: gradient 2 t_i^2 (x_i . w) x_i / 6
    w = model.weight.detach()
    losses = [float(((i + 1) * (x @ w)).sum() ** 2) / 6 for i, x in enumerate(micro)]
    grads = [2 * (i + 1) ** 2 * (x @ w).sum() * x[0] / 6 for i, x in enumerate(micro)]
    torch.testing.assert_close(model.weight.grad, sum(grads))
    torch.testing.assert_close(totals["loss"], torch.tensor(sum(losses)))
    torch.testing.assert_close(totals["loss_part"], torch.tensor(2 * sum(losses)))


def test_accumulate_synchronises_processes_on_the_last_micro_batch_alone():
    """DDP's gradient all-reduce runs on a backward outside ``no_sync``: the last micro-batch's, once the
    others have accumulated (a sync on any other leaves the later ones unreduced, the processes'
    weights drifting apart)."""

    class Distributed(_Affine):
        def __init__(self):
            super().__init__()
            self.synced, self.in_no_sync = [], False

        @contextlib.contextmanager
        def no_sync(self):
            self.in_no_sync = True
            yield
            self.in_no_sync = False

        def forward(self, images, padding_mask):
            self.synced.append(not self.in_no_sync)
            return super().forward(images, padding_mask)

    class Criterion:
        @staticmethod
        def count(targets):
            return torch.ones(3)

        def __call__(self, outputs, targets, counts):
            return {"loss": outputs["out"].sum()}

    model = Distributed()
    for accum in (1, 3):
        model.synced.clear()
        batches = [(torch.ones(1, 3), torch.zeros(1, dtype=torch.bool), None)] * accum
        cfg = SimpleNamespace(grad_accum=accum, precision="fp32")
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        accumulate(model, Criterion(), batches, cfg, torch.device("cpu"), scaler)
        assert model.synced == [False] * (accum - 1) + [True]


def test_images_per_second_count_every_micro_batch(data, tmp_path, monkeypatch):
    """A step of grad_accum 2 at batch 1 trains 2 images; on a clock that moves 1 s a reading (the
    step's start, its batches loaded, its end), the log says 1 image/s and 1 s waiting for data, and
    the pixels of both micro-batches as padded."""
    import train.train as loop

    clock = iter(range(1000))
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    train(tiny_config(data, tmp_path, batch_size=1, grad_accum=2, epochs=1, eval_every=0))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["images_per_s"] for line in lines if line["kind"] == "train"] == [1.0] * 3
    assert [line["data_s"] for line in lines if line["kind"] == "train"] == [1.0] * 3
    assert [line["megapixels"] for line in lines if line["kind"] == "train"] == [2 * IMAGE_SIZE**2 / 1e6] * 3
    assert [line["padded_hw"] for line in lines if line["kind"] == "train"] == [[[IMAGE_SIZE] * 2] * 2] * 3


def test_accumulated_micro_batches_give_the_gradient_of_one_batch(data):
    """Batch 1 x grad_accum 2 against batch 2: the same losses and gradients (the images hold other
    numbers of people, which a mean of per-micro-batch losses weighs unequally: 0.5 of the norm off)."""
    from jcra.data import collate
    from train.train import build_criterion, build_dataset, build_model_from, keypoint_layout

    cfg = tiny_config(data, "unused", model_overrides={"use_fused_kernels": False, "dropout": 0.0})
    layout = keypoint_layout(cfg.keypoint_layout)
    dataset = build_dataset(cfg.val_ann, cfg.val_images, False, cfg, layout)
    people = [len(dataset[i][1]["keypoints"]) for i in range(len(dataset))]
    pair = [dataset[people.index(min(people))], dataset[people.index(max(people))]]
    assert min(people) != max(people)
    criterion = build_criterion(cfg, layout)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    runs = []
    for batches, accum in (([pair], 1), ([pair[:1], pair[1:]], 2)):
        torch.manual_seed(0)
        model = build_model_from(cfg.model, {"num_keypoints": 17, **cfg.model_overrides}).train()
        step = SimpleNamespace(grad_accum=accum, precision="fp32")
        losses = accumulate(model, criterion, list(map(collate, batches)), step, torch.device("cpu"), scaler)
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        runs.append((losses, grads))
    (one, grad_one), (two, grad_two) = runs
    assert float((grad_two - grad_one).norm() / grad_one.norm()) < 1e-4  # padding moves a few by 1e-6
    for key in ("loss", "loss_cls", "loss_kpt", "loss_oks", "loss_hm", "loss_kpt_enc"):
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)


def _stops_at_step_3_keeping_step_2(data, tmp_path, monkeypatch, builder: str, poison, message: str):
    """Train with ``train.train.<builder>``'s product passed through ``poison(product, at_third_call)``:
    the run stops at step 3 with ``message`` and its checkpoint holds step 2's finite weights."""
    import train.train as loop

    build, calls = getattr(loop, builder), {"n": 0}

    def third_call() -> bool:
        calls["n"] += 1
        return calls["n"] == 3

    monkeypatch.setattr(loop, builder, lambda *args: poison(build(*args), third_call))
    with pytest.raises(FloatingPointError, match=message):
        train(tiny_config(data, tmp_path, checkpoint_every=1))
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_gradient_stops_and_keeps_last_checkpoint(data, tmp_path, monkeypatch):
    """A finite loss with a NaN gradient (fp32 or bf16: no scaler skips the step) would put NaN in
    every weight and then in the checkpoint."""

    def poison(model, third_call):
        param = next(p for p in model.parameters() if p.requires_grad)
        param.register_hook(lambda grad: grad * float("nan") if third_call() else grad)
        return model

    message = "non-finite gradient norm nan at step 3.*intact"
    _stops_at_step_3_keeping_step_2(data, tmp_path, monkeypatch, "build_model_from", poison, message)


def test_nan_loss_stops_and_keeps_last_checkpoint(data, tmp_path, monkeypatch):
    def poison(criterion, third_call):
        forward = criterion.forward

        def forward_nan(outputs, targets, counts=None):
            losses = forward(outputs, targets, counts)
            return {**losses, "loss": losses["loss"] * float("nan")} if third_call() else losses

        criterion.forward = forward_nan
        return criterion

    message = "non-finite loss .* step 3.*intact"
    _stops_at_step_3_keeping_step_2(data, tmp_path, monkeypatch, "build_criterion", poison, message)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": float("nan")}, "lr"),
        ({"clip_grad": 0}, "clip_grad"),
        ({"precision": "fp8"}, "precision"),
        ({"train_scales": []}, "train_scales"),
        ({"max_steps": 0}, "max_steps"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"train_ann": "/nonexistent/train.json"}, "train_ann"),
        ({"val_images": "/nonexistent/images"}, "val_images"),
        ({"model": "jcra_r1000"}, "name"),
        ({"model_overrides": {"no_such_key": 1}}, "no_such_key"),
        ({"batch_size": 8}, "exceeds"),
        ({"batch_size": "abc"}, "batch_size"),  # what a hydra override of a wrong type gives
        ({"epochs": 1.5}, "epochs"),
        ({"train_scales": 256}, "train_scales"),
        ({"lr_drop_epochs": 10}, "lr_drop_epochs"),
        ({"rotation": "30"}, "rotation"),
        ({"keypoint_layout": "crowdpose"}, "keypoint_layout"),  # 14 keypoints against COCO's 17
        ({"model_overrides": None}, "model_overrides must be a mapping"),
        ({"matcher_weights": {"w_cls": 1.0}}, r"matcher_weights has unknown keys \['w_cls'\]"),
        ({"loss_weights": {"heatmap": 1.0}}, r"loss_weights has unknown keys \['heatmap'\]"),
        ({"val_scale": 2 * IMAGE_SIZE}, r"val_scale \(128\) must not exceed max_size \(64\)"),
        ({"train_scales": [32, 2 * IMAGE_SIZE]}, r"train_scales \(128\) must not exceed max_size"),
        (
            {"train_scales": [32, 48], "train_max_size": 40},
            r"train_scales \(48\) must not exceed train_max_size \(40\)",
        ),
        ({"train_scale_mode": "uniform"}, r"train_scale_mode must be one of \('list', 'range'\)"),
        ({"train_scales": [32, 40, 48], "train_scale_mode": "range"}, r"\[smallest, largest\] with .* range"),
        ({"train_scales": [48, 32], "train_scale_mode": "range"}, r"\[smallest, largest\] with .* range"),
        ({"train_max_size": 0}, "train_max_size must be an integer >= 1"),
        ({"crop_scale": 1.5}, "crop_scale must be an integer >= 4"),
        ({"crop_scale": 3}, "crop_scale must be an integer >= 4"),
        ({"top_k": 0}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"num_workers": -1}, "num_workers"),
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"lr": True}, "lr"),
        ({"epochs": True}, "epochs"),
        ({"train_scales": [0]}, "train_scales entry"),
        ({"train_images": "/nonexistent/images"}, "train_images"),
        ({"rotation": float("inf")}, "rotation must be a finite number"),
        ({"shear": 90.0}, r"shear must be a number of degrees in \[0, 90\), got 90.0"),
        ({"shear": -2.0}, "shear must be"),
        ({"lr_backbone_mult": float("inf")}, "lr_backbone_mult must be a finite number"),
        ({"lr_offsets_mult": -1.0}, "lr_offsets_mult must be a finite number >= 0"),
        ({"lr_gamma": 0.0}, "lr_gamma must be a finite number > 0"),
        ({"lr_gamma": float("nan")}, "lr_gamma must be a finite number > 0"),
        ({"grad_accum": 0}, "grad_accum"),  # no step would ever end
        ({"log_every": 0}, "log_every"),
        ({"eval_every": -1}, "eval_every"),
        ({"checkpoint_every": -1}, "checkpoint_every"),
        ({"lr_drop_epochs": [0]}, "lr_drop_epochs entry"),
        ({"device": "gpu"}, "device: 'gpu' is not auto, cpu, cuda or cuda:N"),
        ({"device": "cuda:99"}, "device: 'cuda:99' is GPU 99, but this machine has"),
        ({"loss_weights": {"cls": -1.0}}, r"weights\['cls'\] must be a finite number >= 0"),
        ({"matcher_weights": {"w_kpt": float("nan")}}, "w_kpt must be a finite number >= 0"),
        ({"oks_mode": "lin"}, r"oks_mode must be one of \('log', 'linear'\), got 'lin'"),
        ({"encoder_oks": "no"}, "encoder_oks must be true or false, got 'no'"),
        ({"train_negatives": 1}, "train_negatives must be true or false, got 1"),
        ({"heatmap_target": "petr"}, r"heatmap_target must be one of \('box', 'fixed'\), got 'petr'"),
        ({"resume": "no"}, "resume must be true or false, got 'no'"),  # it resumed
        ({"compile": "off"}, "compile must be true or false, got 'off'"),  # it compiled
        ({"compile_whole": True}, "compile_whole needs compile: true"),  # it trained eager
        ({"compile": True, "compile_whole": "yes"}, "compile_whole must be true or false, got 'yes'"),
        (
            {"model_overrides": {"num_keypoints": 14}},
            r"model_overrides.num_keypoints \(14\) must be .*'coco'",
        ),
        ({"model_overrides": {"pretrained": "no"}}, "pretrained must be true or false"),
        ({"lr_drop_epochs": [1, 1]}, r"lr_drop_epochs must not repeat an epoch, got \[1, 1\]"),  # gamma**2
    ],
)
def test_bad_input_fails_before_training(data, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_config(data, tmp_path, **change))
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_range_of_one_size_is_accepted(data, tmp_path):
    cfg = tiny_config(data, tmp_path, train_scales=[48, 48], train_scale_mode="range")
    cfg.validate()
    assert cfg.training_scales() == range(48, 49)


def test_a_learning_rate_drop_the_run_never_reaches_warns(data, tmp_path):
    """COCO's [80] kept with epochs=50 never dropped the rate, without a word."""
    with pytest.warns(UserWarning, match=r"lr_drop_epochs \[2, 5\] are not before epochs=2"):
        train(tiny_config(data, tmp_path, lr_drop_epochs=[1, 2, 5], max_steps=1))


def test_a_run_configured_with_paths_and_numpy_numbers_reads_its_own_checkpoint(data, tmp_path):
    """TrainConfig takes Path and numpy settings; pickled into the checkpoint they were globals that
    weights_only loading refuses, so the run could neither resume nor be evaluated."""
    paths = {key: Path(value) for key, value in data.items()}
    cfg = tiny_config(paths, tmp_path / "run", max_steps=1, lr=np.float64(1e-3))
    cfg = dataclasses.replace(cfg, out_dir=tmp_path / "run")
    train(cfg)
    assert train(dataclasses.replace(cfg, max_steps=2, resume=True))["step"] == 2
    PoseEstimator.from_checkpoint(tmp_path / "run" / "checkpoint.pt", device="cpu")


def test_an_empty_out_dir_is_refused_and_a_path_object_taken(data, tmp_path, monkeypatch):
    """It wrote the checkpoint and log into the working folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="out_dir must be a folder path, got ''"):
        train(dataclasses.replace(tiny_config(data, tmp_path), out_dir=""))
    assert not list(tmp_path.iterdir())
    dataclasses.replace(tiny_config(data, tmp_path), out_dir=tmp_path / "run").validate()


def test_a_validation_file_evaluation_would_refuse_stops_the_run_before_training(data, tmp_path):
    coco = json.loads(open(data["val_ann"]).read())
    del coco["categories"]
    (tmp_path / "val.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"val\.json is not a COCO annotation file: it needs a 'categories'"):
        train(tiny_config(data, tmp_path / "run", val_ann=str(tmp_path / "val.json")))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_file_naming_its_keypoints_in_another_order_is_refused(data, tmp_path):
    """Flips would swap the wrong joints: the count of 17 matches, the order does not."""
    coco = json.loads(open(data["train_ann"]).read())
    names = coco["categories"][0]["keypoints"]
    names[5], names[6] = names[6], names[5]
    (tmp_path / "train.json").write_text(json.dumps(coco))
    with pytest.raises(
        ValueError, match=r"train\.json lists keypoint 5 as 'right_shoulder', which .* index 6"
    ):
        train(tiny_config(data, tmp_path / "run", train_ann=str(tmp_path / "train.json")))


def test_training_set_without_labelled_people_is_named(data, tmp_path):
    coco = json.loads(open(data["train_ann"]).read())
    for ann in coco["annotations"]:
        ann["keypoints"] = [0] * len(ann["keypoints"])
        ann["num_keypoints"] = 0
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="train_ann: .*empty.json has no image with a labelled"):
        train(tiny_config({**data, "train_ann": str(empty)}, tmp_path / "run"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 1}, "batch_size 2 -> 1"),
        ({"lr_drop_epochs": [1]}, "lr_drop_epochs"),
        ({"seed": 1}, "seed"),
        ({"rotation": 10.0}, "rotation"),
        ({"shear": 2.0}, "shear 0.0 -> 2.0"),
        ({"train_negatives": False}, "train_negatives True -> False"),
        ({"clip_grad": 1.0}, "clip_grad"),
        ({"train_scales": [48]}, "train_scales"),
        ({"loss_weights": {"oks": 100.0}}, "loss_weights"),
        ({"matcher_weights": {"w_class": 50.0}}, "matcher_weights"),
        ({"oks_mode": "linear"}, "oks_mode 'log' -> 'linear'"),
        ({"encoder_oks": True}, "encoder_oks"),
        ({"heatmap_target": "fixed"}, "heatmap_target 'box' -> 'fixed'"),
    ],
)
def test_resume_with_other_settings_is_refused(data, tmp_path, monkeypatch, change, message):
    """A resumed run that would train other images at its position, or on another schedule, stops
    before it builds the model and reads the data (minutes on COCO)."""
    import train.train as loop

    train(tiny_config(data, tmp_path, max_steps=2))
    monkeypatch.setattr(loop, "build_model_from", None)
    with pytest.raises(ValueError, match=f"resume: .*{message}"):
        train(tiny_config(data, tmp_path, max_steps=4, resume=True, **change))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


def test_resume_on_a_training_file_of_another_size_under_the_same_path_is_refused(data, tmp_path):
    """An edited or regenerated train_ann: the checkpoint's lr milestones and sampler position are
    counted in steps of the old set, so the schedule would drop mid-epoch and samples repeat."""
    coco = json.loads(open(data["train_ann"]).read())
    train_ann = tmp_path / "train.json"
    train_ann.write_text(json.dumps(coco))
    cfg = tiny_config({**data, "train_ann": str(train_ann)}, tmp_path / "run", max_steps=2)
    train(cfg)
    kept = coco["images"][: len(coco["images"]) // 2]
    ids = {image["id"] for image in kept}
    coco.update(images=kept, annotations=[a for a in coco["annotations"] if a["image_id"] in ids])
    train_ann.write_text(json.dumps(coco))
    with pytest.raises(
        ValueError, match=r"resume: .*trained on \d+ images of train_ann .*train\.json, which now"
    ):
        train(dataclasses.replace(cfg, max_steps=3, resume=True))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2


def test_a_checkpoint_from_before_the_loss_settings_resumes_with_the_losses_it_had(data, tmp_path):
    """Its losses were 1 - OKS with one on the proposals, its heatmap Gaussians of one sigma: resumed
    under PETR's, it would change them."""
    from train.checkpoint import save_checkpoint

    train(tiny_config(data, tmp_path, max_steps=2))
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    for name in ("oks_mode", "encoder_oks", "heatmap_target"):
        del state["train_config"][name]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    changed = "oks_mode 'linear' -> 'log'; encoder_oks True -> False; heatmap_target 'fixed' -> 'box'"
    with pytest.raises(ValueError, match=changed):
        train(tiny_config(data, tmp_path, max_steps=3, resume=True))
    old = {"oks_mode": "linear", "encoder_oks": True, "heatmap_target": "fixed"}
    assert train(tiny_config(data, tmp_path, max_steps=3, resume=True, **old))["step"] == 3


def test_a_checkpoint_from_before_the_data_settings_resumes_only_with_the_data_it_had(data, tmp_path):
    """It trained on a list of sizes, capped at max_size, its crop branch sized by its largest scale,
    with no shear, on the images with people alone."""
    from train.checkpoint import save_checkpoint

    train(tiny_config(data, tmp_path, max_steps=1))
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    for name in ("train_scale_mode", "train_max_size", "crop_scale", "shear", "train_negatives"):
        del state["train_config"][name]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    changes = [
        (
            {"train_scale_mode": "range", "train_scales": [48, IMAGE_SIZE]},
            "train_scale_mode 'list' -> 'range'",
        ),
        ({"train_max_size": IMAGE_SIZE}, "train_max_size None -> 64"),
        ({"crop_scale": 32}, "crop_scale None -> 32"),
        ({"shear": 2.0}, "shear 0.0 -> 2.0"),
        ({}, "train_negatives False -> True"),
    ]
    for change, message in changes:
        with pytest.raises(ValueError, match=message):
            train(tiny_config(data, tmp_path, max_steps=2, resume=True, **change))
    assert train(tiny_config(data, tmp_path, max_steps=2, resume=True, train_negatives=False))["step"] == 2


@pytest.mark.parametrize("negatives", [True, False])
def test_the_training_set_keeps_images_of_unlabelled_people_as_petr_does(data, tmp_path, negatives):
    """An image whose people have no labelled keypoint trains as one to find nobody in (PETR's), or
    not at all; the validation set keeps every image either way."""
    from train.train import build_dataset, keypoint_layout

    coco = json.loads(open(data["train_ann"]).read())
    image_id = coco["annotations"][0]["image_id"]
    for ann in coco["annotations"]:
        if ann["image_id"] == image_id:
            ann["keypoints"], ann["num_keypoints"] = [0] * len(ann["keypoints"]), 0
    (tmp_path / "train.json").write_text(json.dumps(coco))
    cfg = tiny_config(
        {**data, "train_ann": str(tmp_path / "train.json")}, tmp_path, train_negatives=negatives
    )
    train_set = build_dataset(cfg.train_ann, cfg.train_images, True, cfg, keypoint_layout("coco"))
    val_set = build_dataset(cfg.train_ann, cfg.train_images, False, cfg, keypoint_layout("coco"))
    assert (image_id in train_set.ids) == negatives and image_id in val_set.ids
    assert len(train_set) == len(val_set) - (not negatives) - sum(
        1 for i in val_set.ids if not len(val_set.targets[i][0]) and i not in val_set.annotated
    )


def test_the_training_dataset_takes_the_scale_settings(data, tmp_path):
    """build_dataset hands the range, the training cap and the crop branch's size to the transforms."""
    from train.train import build_dataset, keypoint_layout

    cfg = tiny_config(
        data,
        tmp_path,
        train_scales=[40, IMAGE_SIZE],
        train_scale_mode="range",
        train_max_size=80,
        crop_scale=48,
    )
    cfg.validate()
    dataset = build_dataset(cfg.train_ann, cfg.train_images, True, cfg, keypoint_layout("coco"))
    plain, crop = dataset.transforms.transforms[-2].first, dataset.transforms.transforms[-2].second.transforms
    assert (plain.scales, plain.max_size) == (list(range(40, IMAGE_SIZE + 1)), 80)
    assert crop[0].scales == [24, 30, 36] and (crop[1].min_size, crop[1].max_size) == (23, 36)
    assert (crop[2].scales, crop[2].max_size) == (plain.scales, 80)
    cfg.shear = 2.0
    affine = build_dataset(cfg.train_ann, cfg.train_images, True, cfg, keypoint_layout("coco")).transforms
    assert affine.transforms[3].max_shear == 2.0  # after photometric distortion and flip


def test_trains_with_petrs_heatmap_target(data, tmp_path, monkeypatch):
    """The data pipeline's targets carry each person's box through rotation, flips and crops, so the
    box heatmap target trains; its radii are whole cells in [0, 3]."""
    from jcra import criterion

    radii = []
    radius_of = criterion.box_heatmap_radius
    monkeypatch.setattr(
        criterion, "box_heatmap_radius", lambda *a, **k: radii.append(radius_of(*a, **k)) or radii[-1]
    )
    result = train(tiny_config(data, tmp_path, max_steps=3))  # the default
    assert result["step"] == 3 and len(radii) == 3
    assert all(((r >= 0) & (r <= 3) & (r == r.floor())).all() for r in radii)


def test_resume_may_change_precision(data, tmp_path):
    """fp16's loss scaler starts afresh when the checkpoint was written without one."""
    train(tiny_config(data, tmp_path, max_steps=2))
    assert train(tiny_config(data, tmp_path, max_steps=3, resume=True, precision="fp16"))["step"] == 3


def test_an_existing_run_is_not_overwritten_without_resume(data, tmp_path, monkeypatch):
    """Refused before the model and data are built."""
    import train.train as loop

    train(tiny_config(data, tmp_path, max_steps=1))
    log = (tmp_path / "metrics.jsonl").read_text()
    monkeypatch.setattr(loop, "build_model_from", None)
    with pytest.raises(ValueError, match=r"out_dir: .* already holds a run .*train\.resume=true"):
        train(tiny_config(data, tmp_path, max_steps=2))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1
    assert (tmp_path / "metrics.jsonl").read_text() == log


def test_a_run_is_refused_while_another_process_writes_its_out_dir(data, tmp_path):
    """The workers of a SIGKILLed torchrun train on: a resume started beside them stops rather than
    write the same folder; once they are gone (the lock goes with its process), it runs."""
    hold = "import sys, time; from pathlib import Path; from train.checkpoint import out_dir_lock\n"
    hold += "with out_dir_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(300)"
    # an earlier run's longer text in the lock file: the holder's replaces it whole
    (tmp_path / ".lock").write_text("pid 999999999 on a-host-with-a-much-longer-name-than-this-one")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        held_by = re.escape(f"(pid {holder.pid} on {socket.gethostname()})")
        with pytest.raises(RuntimeError, match=rf"out_dir: .* is in use by another run {held_by}; "):
            train(tiny_config(data, tmp_path, max_steps=1))
        assert not (tmp_path / "checkpoint.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train(tiny_config(data, tmp_path, max_steps=1))["step"] == 1


def test_an_out_dir_that_cannot_be_locked_is_used_with_a_warning(tmp_path, monkeypatch):
    import errno

    import train.checkpoint as checkpoints

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(checkpoints.fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot be locked .*No locks available"):
        with checkpoints.out_dir_lock(tmp_path):
            pass


def test_a_run_resumes_with_the_decoder_offset_scale_it_trained_with(data, tmp_path):
    """A checkpoint written before the scale was recorded trained with 0.25: resumed, the model keeps it
    (the new default, 0.5, would change the model mid-run) and the next checkpoint records it."""
    train(tiny_config(data, tmp_path, max_steps=1))
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["model_config"]["overrides"]["extent_scale"]
    save_checkpoint(path, state)
    train(tiny_config(data, tmp_path, max_steps=2, resume=True))
    assert load_checkpoint(path)["model_config"]["overrides"]["extent_scale"] == 0.25


def test_resume_without_a_checkpoint_says_it_starts_a_new_run(data, tmp_path, capsys):
    """``make demo`` resumes its own run or starts one; a mistyped out_dir must not start over unannounced."""
    assert train(tiny_config(data, tmp_path / "typo", max_steps=1, resume=True))["step"] == 1
    assert (
        f"train.resume=true: no checkpoint in {tmp_path / 'typo'}, starting a new run"
        in capsys.readouterr().out
    )


def test_a_foreign_checkpoint_is_named(data, tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": {}})
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint\.pt: missing optimizer"):
        train(tiny_config(data, tmp_path, max_steps=1, resume=True))


def test_the_last_model_is_evaluated_and_its_metrics_survive_a_resume(data, tmp_path, capsys):
    """max_steps mid-epoch after an epoch's evaluation still evaluates the final model; resuming the
    finished run trains and evaluates nothing more and returns the same metrics."""
    cfg = tiny_config(data, tmp_path, epochs=3, eval_every=1, max_steps=4)
    result = train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["kind"] == "val"] == [3, 4]
    state = load_checkpoint(result["checkpoint"])
    assert (state["step"], state["metrics_step"], state["metrics"]) == (4, 4, result["metrics"])
    capsys.readouterr()
    again = train(dataclasses.replace(cfg, resume=True))
    assert (again["step"], again["metrics"]) == (4, result["metrics"])
    assert "is at step 4, epoch 1: the run asked for (epochs 3, max_steps 4)" in capsys.readouterr().out
    assert (tmp_path / "metrics.jsonl").read_text().count('"val"') == 2


def test_a_kill_during_an_evaluation_keeps_the_epoch_and_the_resumed_run_evaluates_it(
    data, tmp_path, monkeypatch
):
    """The epoch's checkpoint comes before its evaluation: killed there, the resumed run evaluates
    that epoch's model first and goes on as if never stopped."""
    import train.train as loop

    full = train(tiny_config(data, tmp_path / "full", eval_every=1))
    evaluation = loop.run_evaluation
    monkeypatch.setattr(loop, "run_evaluation", _killed)
    cfg = tiny_config(data, tmp_path / "cut", eval_every=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (state["step"], state["epoch"], state["batch_in_epoch"], state["metrics_step"]) == (3, 1, 0, None)
    monkeypatch.setattr(loop, "run_evaluation", evaluation)
    resumed = train(dataclasses.replace(cfg, resume=True))
    logs = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("full", "cut")]
    vals = [[json.loads(line) for line in lines if '"val"' in line] for lines in logs]
    assert [line["step"] for line in vals[1]] == [3, 6]
    assert vals[0] == vals[1] and resumed["metrics"] == full["metrics"]
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=0, msg=name)


def _logged(out_dir) -> list[dict]:
    """The lines of ``out_dir``'s metrics.jsonl without their timings, which differ from run to run."""
    logged = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    timings = ("images_per_s", "data_s")  # padded_hw and megapixels stay: they follow the run's seeds
    return [{k: v for k, v in json.loads(line).items() if k not in timings} for line in logged]


def _record_writes(monkeypatch) -> list:
    """(step, metrics_step) of each checkpoint the run writes from now on."""
    import train.train as loop

    writes, save = [], loop.save_checkpoint
    monkeypatch.setattr(
        loop, "save_checkpoint", lambda p, s: writes.append((s["step"], s["metrics_step"])) or save(p, s)
    )
    return writes


def test_each_state_is_checkpointed_once_and_a_stop_on_a_checkpoint_step_writes_one(
    data, tmp_path, monkeypatch
):
    """checkpoint_every falls on the epochs' ends, and on the step a SIGTERM stops after: each state of
    the run (a step, or its evaluation) is written once, which a scheduler's grace period needs."""
    import train.train as loop

    writes = _record_writes(monkeypatch)
    train(tiny_config(data, tmp_path / "full", eval_every=1, checkpoint_every=3))
    assert writes == [(3, None), (3, 3), (6, 3), (6, 6)]
    writes.clear()
    accumulate = loop.accumulate

    def signalled(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return accumulate(*args)

    monkeypatch.setattr(loop, "accumulate", signalled)
    stopped = train(tiny_config(data, tmp_path / "stopped", epochs=3, checkpoint_every=1))
    assert (stopped["step"], stopped["stopped"], writes) == (1, "SIGTERM", [(1, None)])


@pytest.mark.parametrize("resumed", [False, True], ids=["fresh", "resumed"])
def test_a_stop_while_the_run_is_built_stops_it_before_any_step(data, tmp_path, monkeypatch, resumed):
    """SIGTERM while the model and data are built (minutes on COCO) was acted on after a first step,
    which was then checkpointed: now no step runs and nothing is written."""
    import train.train as loop

    cfg = tiny_config(data, tmp_path, max_steps=2)
    if resumed:
        train(cfg)
        cfg = dataclasses.replace(cfg, max_steps=4, resume=True)
    build_dataset, steps = loop.build_dataset, []

    def signalled(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return build_dataset(*args)

    monkeypatch.setattr(loop, "build_dataset", signalled)
    monkeypatch.setattr(loop, "accumulate", lambda *args: steps.append(1))
    writes = _record_writes(monkeypatch)
    stopped = train(cfg)
    assert (stopped["step"], stopped["stopped"], steps, writes) == (2 if resumed else 0, "SIGTERM", [], [])


@pytest.mark.parametrize("evaluation", [1, 2], ids=["epoch-1", "last"])
def test_a_stop_during_an_evaluation_abandons_it_and_the_resumed_run_redoes_it(
    data, tmp_path, monkeypatch, evaluation
):
    """SIGTERM during an evaluation (the first epoch's, or the run's last): it stops there, with no
    further step, no result or log of it, no checkpoint written again; the resumed run evaluates that
    model and ends as the run never stopped."""
    import train.train as loop

    full = train(tiny_config(data, tmp_path / "full", eval_every=1))
    run_evaluation, calls = loop.run_evaluation, []

    def signalled(*args):
        calls.append(1)
        if len(calls) == evaluation:
            os.kill(os.getpid(), signal.SIGTERM)
        return run_evaluation(*args)

    monkeypatch.setattr(loop, "run_evaluation", signalled)
    writes = _record_writes(monkeypatch)
    cfg = tiny_config(data, tmp_path / "cut", eval_every=1)
    stopped = train(cfg)
    step = 3 * evaluation
    assert (stopped["step"], stopped["stopped"]) == (step, "SIGTERM")
    assert writes[-1] == (step, None if evaluation == 1 else 3) and len(set(writes)) == len(writes)
    log = _logged(tmp_path / "cut")
    assert [line["step"] for line in log if line["kind"] == "val"] == [3] * (evaluation - 1)
    assert max(line["step"] for line in log) == step
    assert (tmp_path / "cut" / "val_results.json").exists() == (evaluation == 2)
    resumed = train(dataclasses.replace(cfg, resume=True))
    assert (resumed["step"], resumed["stopped"], resumed["metrics"]) == (6, None, full["metrics"])
    assert _logged(tmp_path / "full") == _logged(tmp_path / "cut")
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=0, msg=name)


def test_logged_lr_is_the_one_the_step_used(data, tmp_path):
    """3 steps an epoch, the lr dropped after epoch 1: steps 1-3 at 1e-3, steps 4-6 at 1e-4."""
    train(tiny_config(data, tmp_path, lr_drop_epochs=[1]))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [line["lr"] for line in lines if line["kind"] == "train"]
    assert logged == pytest.approx([1e-3] * 3 + [1e-4] * 3)


class _Draws(torch.utils.data.Dataset):
    """Item i is (i, a random number drawn where it loads), as the augmentations draw theirs."""

    def __len__(self):
        return 6

    def __getitem__(self, index):
        return torch.tensor([float(index), torch.rand(()).item()])


def _epoch(rank, epoch, start=0, num_workers=0, world_size=2):
    sampler = ResumableSampler(6, seed=0, rank=rank, world_size=world_size)
    sampler.set_epoch(epoch, start)
    loader = torch.utils.data.DataLoader(
        SeededSamples(_Draws()), batch_size=1, sampler=sampler, num_workers=num_workers,
        generator=torch.Generator(), multiprocessing_context="fork" if num_workers else None,
    )  # fmt: skip
    return torch.cat(list(loader)).tolist()


def test_augmentations_depend_on_seed_epoch_and_position_only(monkeypatch):
    """Each sample draws the same numbers in the main process or a worker, resumed part way or not;
    processes and epochs draw their own; the caller's generator is left as it was."""
    state, cuda_seeds = torch.get_rng_state(), []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", cuda_seeds.append)
    first = {(rank, epoch): _epoch(rank, epoch) for rank in (0, 1) for epoch in (0, 1)}
    assert torch.equal(torch.get_rng_state(), state) and cuda_seeds == []  # GPU dropout's generator too
    draws = [d for _, d in sum(first.values(), [])]
    assert len(set(draws)) == len(draws) == 12  # every process, epoch and position its own stream
    assert _epoch(1, 1, num_workers=1) == first[1, 1]
    assert _epoch(1, 1, start=2, num_workers=2) == first[1, 1][2:]
    # one process reads the same samples, drawing the same numbers, as the two together
    alone = _epoch(0, 1, world_size=1)
    assert sorted(map(tuple, alone)) == sorted(map(tuple, first[0, 1] + first[1, 1]))


def test_resume_drops_the_metrics_logged_after_the_last_checkpoint(data, tmp_path):
    """A run killed after its checkpoint at step 2 had logged step 3 and half a line (and the file holds a
    stray line that is no record): the resumed run redoes step 3, and the log holds each step once."""
    train(tiny_config(data, tmp_path, max_steps=2))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "kind": "train", "loss": 1.0}) + "\n3\n" + '{"step": 4, "ki')
    train(tiny_config(data, tmp_path, max_steps=4, resume=True))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["kind"] == "train"] == [1, 2, 3, 4]


def test_hydra_configs_compose():
    from hydra import compose, initialize

    with initialize(version_base=None, config_path="../../train/conf"):
        demo = config_from(compose("config").train)
        r50 = config_from(compose("config", overrides=["experiment=coco_r50"]).train)
        crowd = config_from(compose("config", overrides=["experiment=crowdpose"]).train)
        linked = config_from(compose("config", overrides=["train.val_scale=${train.max_size}"]).train)
        swin = config_from(compose("config", overrides=["experiment=coco_swinl"]).train)
        with pytest.raises(ValueError, match="unknown config keys"):
            config_from(compose("config", overrides=["+train.bogus=1"]).train)
        with pytest.raises(Exception, match=r"Could not find 'experiment/coco_r5'"):  # it trained the demo
            compose("config", overrides=["experiment=coco_r5"])
    assert demo.model == "jcra_tiny" and demo.model_overrides["use_fused_kernels"] is False
    assert (r50.model, r50.lr, r50.lr_backbone_mult, r50.lr_offsets_mult) == ("jcra_r50", 2e-4, 0.1, 0.1)
    assert (r50.weight_decay, r50.clip_grad, r50.epochs, r50.lr_drop_epochs) == (1e-4, 0.1, 100, [80])
    assert r50.batch_size * r50.grad_accum * 8 == 32
    assert (crowd.keypoint_layout, swin.model) == ("crowdpose", "jcra_swinl")
    assert (r50.rotation, r50.shear, crowd.rotation, crowd.shear, demo.shear) == (30.0, 0.0, 30.0, 2.0, 0.0)
    assert (r50.oks_mode, r50.encoder_oks, demo.oks_mode, demo.encoder_oks) == ("log", False, "log", False)
    assert r50.heatmap_target == demo.heatmap_target == "box"
    assert linked.val_scale == linked.max_size == demo.max_size  # interpolations resolved
    for recipe in (r50, crowd, swin):  # PETR's: short sides 400-1400 capped at 1400, crops at 800
        assert recipe.training_scales() == range(400, 1401)
        assert (recipe.train_max_size, recipe.crop_scale, recipe.val_scale, recipe.max_size) == (
            1400,
            800,
            800,
            1333,
        )
    assert demo.training_scales() == [224, 240, 256] and demo.train_max_size is None


def test_sampler_splits_and_resumes():
    samplers = [ResumableSampler(7, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in samplers:
        s.set_epoch(1)
    orders = [list(s) for s in samplers]
    assert all(len(o) == len(s) == 4 for o, s in zip(orders, samplers, strict=True))
    assert {i for o in orders for i, _ in o} == set(range(7))
    assert len({seed for o in orders for _, seed in o}) == 8  # the wrapped-around index draws anew
    samplers[0].set_epoch(1, start=3)
    assert list(samplers[0]) == orders[0][3:]
    samplers[0].set_epoch(2)
    assert list(samplers[0]) != orders[0]
    # process r takes every world_size-th pair of the one-process order, from r (which samples a
    # resumed multi-process run trains on depends on it)
    whole = ResumableSampler(8, seed=3)
    halves = [ResumableSampler(8, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for s in (whole, *halves):
        s.set_epoch(1)
    assert [list(h) for h in halves] == [list(whole)[0::2], list(whole)[1::2]]
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(7, rank=2, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(7, rank=-1, world_size=2)
    with pytest.raises(ValueError, match="size"):
        ResumableSampler(0)


def test_init_distributed_puts_each_process_on_its_own_gpu(monkeypatch):
    """NCCL collectives run on the current device: every rank would be on cuda:0 unless it is set."""
    import train.distributed as processes

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(processes.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        processes.dist, "init_process_group", lambda backend, timeout: calls.append(("init", backend))
    )
    monkeypatch.setattr(processes.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(processes.dist, "get_world_size", lambda: 2)
    assert processes.init_distributed(torch.device("cuda", 1)) == (1, 2)
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]


def test_writes_killed_before_their_rename_are_cleaned_up_at_start(data, tmp_path):
    """A SIGKILL during save_checkpoint leaves its temporary file; the next run removes it."""
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "notes.tmp"
    other.write_text("not ours")
    train(tiny_config(data, tmp_path, max_steps=1))
    assert not stale.exists() and other.exists()


def _built_models(monkeypatch, watch=lambda model: None) -> list:
    """The models ``train`` builds, as it builds them (the module DDP wraps), each passed to ``watch``
    before it runs."""
    import train.train as loop

    built, build = [], loop.build_model_from

    def build_and_keep(*args):
        built.append(build(*args))
        watch(built[-1])
        return built[-1]

    monkeypatch.setattr(loop, "build_model_from", build_and_keep)
    return built


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        built = _built_models(monkeypatch)
        result = train(cfg)
    torch.save({"step": result["step"], "model": built[0].state_dict()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes(data, tmp_path):
    """Each rank trains on its half of the data; averaged gradients keep their weights identical."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_config(data, tmp_path / "run", batch_size=1, epochs=1, max_steps=2)
    mp.spawn(_ddp_worker, args=(2, port, cfg, str(tmp_path)), nprocs=2, join=True)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 2 and len(state["rng"]) == 2
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 2
    for name, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][name]), name
        assert torch.equal(value, state["model"][name]), name
    alone = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "alone")))  # one process: other batches
    assert not all(
        torch.equal(v, load_checkpoint(alone["checkpoint"])["model"][k]) for k, v in state["model"].items()
    )


def _ddp_kill_worker(rank: int, world: int, port: int, cfg: TrainConfig, out: str) -> None:
    """Train ``cfg`` uninterrupted in ``out/full``; in ``out/cut``, killed in the first evaluation and
    resumed; then resume ``out/cut`` again while rank 1 looks for it in a folder of its own; in
    ``out/stopped``, SIGTERM rank 1 alone during step 2, resume, SIGTERM rank 1 alone while rank 0
    evaluates, and resume."""
    import train.train as loop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    full = train(dataclasses.replace(cfg, out_dir=f"{out}/full"))
    cut = dataclasses.replace(cfg, out_dir=f"{out}/cut")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(loop, "run_evaluation", _killed)
        with pytest.raises(KeyboardInterrupt):
            train(cut)
    torch.distributed.barrier()  # torchrun restarts the job once every process has stopped
    resumed = train(dataclasses.replace(cut, resume=True))
    with pytest.raises(RuntimeError, match="point the run starts from .* differs") as apart:
        train(dataclasses.replace(cut, resume=True, out_dir=f"{out}/cut" if rank == 0 else f"{out}/own"))
    stop = dataclasses.replace(cfg, out_dir=f"{out}/stopped")
    with pytest.MonkeyPatch.context() as monkeypatch:
        steps, original = [], loop.accumulate

        def accumulate(*args):
            steps.append(len(steps) + 1)
            if rank == 1 and len(steps) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(*args)

        monkeypatch.setattr(loop, "accumulate", accumulate)
        stopped = train(stop)
    torch.distributed.barrier()
    with pytest.MonkeyPatch.context() as monkeypatch:
        evaluation = loop.run_evaluation

        def signalled(*args):
            if rank == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return evaluation(*args)

        monkeypatch.setattr(loop, "run_evaluation", signalled)
        in_evaluation = train(dataclasses.replace(stop, resume=True))
    torch.distributed.barrier()
    stopped_again = train(dataclasses.replace(stop, resume=True))
    torch.save({"full": full["metrics"], "resumed": resumed["metrics"], "apart": str(apart.value),
                "stopped": (stopped["step"], stopped["stopped"]),
                "in_evaluation": (in_evaluation["step"], in_evaluation["stopped"], in_evaluation["metrics"]),
                "stopped_again": stopped_again["stopped"]}, f"{out}/rank{rank}.pt")  # fmt: skip
    # The errors' tracebacks hold train()'s frames, and in them users of the process group: freed after
    # the group is destroyed (at exit), they aborted the process now and then (gloo, one run in ten).
    del apart
    gc.collect()
    torch.distributed.destroy_process_group()


def _killed(*args, **kwargs):
    raise KeyboardInterrupt


def test_ddp_kill_during_an_evaluation_resumes_on_every_process(data, tmp_path):
    """Two gloo processes: the resumed run evaluates the interrupted epoch (rank 0 evaluates, rank 1
    waits for it) and ends as the uninterrupted run does: same log, metrics and model. A process that
    does not see the checkpoint stops every process with an error, not a hang."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_config(data, tmp_path, batch_size=1, eval_every=1)  # 3 steps an epoch on each process
    mp.spawn(_ddp_kill_worker, args=(2, port, cfg, str(tmp_path)), nprocs=2, join=True)
    cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    assert (cut["step"], cut["metrics_step"]) == (full["step"], full["metrics_step"]) == (6, 6)
    logs = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("full", "cut")]
    vals = [[json.loads(line) for line in lines if '"val"' in line] for lines in logs]
    assert [line["step"] for line in vals[1]] == [3, 6] and vals[0] == vals[1]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["resumed"] == ranks[0]["full"] == full["metrics"] and "AP" in full["metrics"]
    assert ranks[1]["resumed"] == ranks[1]["full"] == {}  # rank 0 alone evaluates
    for r in ranks:  # each names its own out_dir and every process's point
        assert "rank 0 {'step': 6, 'epoch': 2" in r["apart"] and "rank 1 {'step': 0, 'epoch': 0" in r["apart"]
    for name, value in full["model"].items():
        torch.testing.assert_close(cut["model"][name], value, rtol=0, atol=0, msg=name)
    # a signal that reached one process stops both after the same step; the resumed run ends as the full
    assert [(r["stopped"], r["stopped_again"]) for r in ranks] == [((2, "SIGTERM"), None)] * 2
    # one that reached rank 1 while rank 0 evaluated: rank 0 finishes it (it saw no signal), both stop
    assert [r["in_evaluation"][:2] for r in ranks] == [(3, "SIGTERM")] * 2
    assert "AP" in ranks[0]["in_evaluation"][2] and ranks[1]["in_evaluation"][2] == {}
    stopped = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert _logged(tmp_path / "stopped") == _logged(tmp_path / "full")
    for name, value in full["model"].items():
        torch.testing.assert_close(stopped["model"][name], value, rtol=0, atol=0, msg=name)


def test_bf16_autocast_trains(data, tmp_path, monkeypatch):
    """The forward (training and evaluation) runs its linear layers in bf16; the weights stay fp32."""
    dtypes = []

    def watch(model):
        model.encoder.layers[0].ffn.net[0].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))

    _built_models(monkeypatch, watch)
    result = train(tiny_config(data, tmp_path, precision="bf16", max_steps=2))
    state = load_checkpoint(result["checkpoint"])
    assert state["step"] == 2
    weights = [v for v in state["model"].values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)
    assert len(dtypes) >= 3 and set(dtypes) == {torch.bfloat16}  # two steps, then the evaluation


def test_hydra_command_line(data, tmp_path):
    """``python -m train.train`` trains with overrides, and rejects a bad value before training."""
    paths = [f"train.{k}={v}" for k, v in data.items()]
    common = [sys.executable, "-m", "train.train", *paths, f"train.out_dir={tmp_path}", "train.device=cpu"]
    sizes = [
        f"train.train_scales=[{IMAGE_SIZE}]",
        f"train.val_scale={IMAGE_SIZE}",
        f"train.max_size={IMAGE_SIZE}",
    ]
    ok = subprocess.run([*common, *sizes, "train.max_steps=1"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "[jcra] checkpoint:" in ok.stdout and (tmp_path / "checkpoint.pt").is_file()
    bad = subprocess.run([*common, "train.batch_size=0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "batch_size must be an integer >= 1" in bad.stderr
    # each launch records its configuration in a folder of its own: the refused one did not replace the run's
    launches = sorted((tmp_path / "hydra").iterdir())
    overrides = [(launch / ".hydra" / "overrides.yaml").read_text() for launch in launches]
    assert len(launches) == 2 and "train.max_steps=1" in overrides[0] and "batch_size=0" in overrides[1]
    # an out_dir that is empty (its run folder was /hydra/<time>) or under a file is refused before hydra
    # makes its run folder, in one line: no traceback of hydra's above it
    (tmp_path / "file").touch()
    for out_dir, message in [
        ("", "train.out_dir must be a folder path, got ''"),
        (tmp_path / "file" / "run", f"train.out_dir: {tmp_path / 'file' / 'run'} cannot be made a folder"),
    ]:
        command = [*common, f"train.out_dir={out_dir}"]
        refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
        lines = refused.stderr.splitlines()
        assert refused.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"Error: {message}"), lines


def test_an_out_dir_that_cannot_be_a_folder_is_named(data, tmp_path):
    """Hydra makes the folder before train() checks the config: a file there, or above it, gave
    pathlib's error without the setting's name; train() called directly (as the demo does) checks too."""
    from train.train import checked_out_dir

    (tmp_path / "file").touch()
    for out_dir in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(
            ValueError, match=f"train.out_dir: {out_dir} cannot be made a folder: .*file is a file"
        ):
            checked_out_dir(str(out_dir))
    assert checked_out_dir(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
    with pytest.raises(ValueError, match="train.out_dir: .* cannot be made a folder: .*file is a file"):
        train(tiny_config(data, tmp_path / "file" / "run"))


def test_a_stopped_or_killed_run_resumes_to_the_run_never_stopped(data, tmp_path):
    """Stop ``python -m train.train`` (2 loader workers) as soon as it logs step 5 of 9, mid-epoch, and
    resume it: the model, optimizer state and log end as those of a run never stopped. SIGKILL loses
    the steps since the last checkpoint (step 4); SIGTERM, and SIGINT sent to the whole process group
    (Ctrl-C: the workers get it too), end it after the step in flight with a checkpoint of it and exit
    128 + the signal."""

    def command(out_dir, *extra):
        paths = [f"train.{k}={v}" for k, v in data.items()]
        sizes = [
            f"train.train_scales=[{IMAGE_SIZE}]",
            f"train.val_scale={IMAGE_SIZE}",
            f"train.max_size={IMAGE_SIZE}",
        ]
        run = ["train.batch_size=2", "train.epochs=3", "train.eval_every=1", "train.checkpoint_every=2",
               "train.log_every=1", "train.device=cpu", "train.num_workers=2",
               f"train.out_dir={out_dir}"]  # fmt: skip
        return [sys.executable, "-m", "train.train", *paths, *sizes, *run, *extra]

    def finished(out_dir, *extra):
        done = subprocess.run(command(out_dir, *extra), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return load_checkpoint(out_dir / "checkpoint.pt")

    full = finished(tmp_path / "full")
    for stop in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
        out_dir = tmp_path / stop.name
        log = out_dir / "metrics.jsonl"
        run = subprocess.Popen(  # SIGINT as an interactive shell leaves it, also where pytest runs in the
            command(out_dir),  # background (its SIGINT ignored, which the run would inherit and keep)
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 300
        while not (log.is_file() and '{"step": 5, "kind": "train"' in log.read_text()):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before step 5"
            time.sleep(0.005)
        if stop == signal.SIGINT:
            os.killpg(run.pid, stop)
        else:
            run.send_signal(stop)
        stderr = run.communicate(timeout=120)[1].decode()
        assert run.returncode == (-stop if stop == signal.SIGKILL else 128 + stop), stderr[-2000:]
        stopped_at = load_checkpoint(out_dir / "checkpoint.pt")["step"]
        if stop == signal.SIGKILL:
            assert stopped_at == 4
        else:  # nothing lost: the checkpoint holds every step logged
            assert f"{stop.name}: stopping after this step" in stderr and "Traceback" not in stderr
            assert 5 <= stopped_at == max(line["step"] for line in _logged(out_dir)) < 9
        resumed = finished(out_dir, "train.resume=true")
        assert resumed["step"] == full["step"] == 9
        for name, value in full["model"].items():
            torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)
        for index, slot in full["optimizer"]["state"].items():
            for key, value in slot.items():
                torch.testing.assert_close(resumed["optimizer"]["state"][index][key], value, rtol=0, atol=0)
        assert _logged(tmp_path / "full") == _logged(out_dir) and len(_logged(out_dir)) == 9 + 3, stop.name


class _Handlers(torch.utils.data.Dataset):
    """Each item: the SIGINT and SIGTERM handlers of the process that loads it."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return [signal.getsignal(signum) == signal.SIG_IGN for signum in (signal.SIGINT, signal.SIGTERM)]


def test_loader_workers_ignore_the_stop_signals():
    """Ctrl-C reaches the whole process group: a worker it ended would take the batch the main
    process waits for with it, before the loop could stop at its next step."""
    from train.train import data_loader

    cfg = SimpleNamespace(batch_size=1, num_workers=1, seed=0)
    loader = data_loader(_Handlers(), cfg)
    loader.collate_fn = lambda batch: batch[0]
    assert list(loader) == [[True, True]] * 2


def test_an_evaluation_loader_on_canvas_gives_one_batch_shape_a_canvas():
    """``on_canvas`` (``jcra evaluate --compile``): images of three sizes that fit a 48 x 80 canvas in
    one batch shape, a portrait on the 80 x 48; padded each to its own size, three shapes. A worker
    process builds the batches, as a real evaluation's do."""
    from train.train import data_loader

    images = [(torch.rand(3, h, w), {}) for h, w in [(48, 80), (40, 60), (30, 80), (80, 48)]]
    cfg = SimpleNamespace(batch_size=1, num_workers=1, seed=0, val_scale=48, max_size=80)
    shapes = {
        on_canvas: [tuple(batch[0].shape[-2:]) for batch in data_loader(images, cfg, on_canvas=on_canvas)]
        for on_canvas in (True, False)
    }
    assert shapes[True] == [(64, 96)] * 3 + [(96, 64)]
    assert shapes[False] == [(64, 96), (64, 64), (32, 96), (96, 64)]


def test_a_forked_child_does_not_keep_the_out_dir_lock(tmp_path):
    """A data loader worker is a fork: its copy of the lock's descriptor would hold the lock after the
    run ended (a resume started then was refused) until it noticed its parent gone."""
    from train.checkpoint import out_dir_lock

    ready, started = os.pipe()
    with out_dir_lock(tmp_path):
        child = os.fork()
        if child == 0:  # past the fork's handlers
            os.write(started, b"1")
            time.sleep(30)
            os._exit(0)
        os.read(ready, 1)
    try:
        with out_dir_lock(tmp_path):  # the child still runs
            assert os.waitpid(child, os.WNOHANG) == (0, 0)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


# Four steps padded to 128 x 160 and then 192 x 192 (the seeded draw of scales), evaluation at 64 x 64.
# No level of a training size has one row or column, and the first batch is not square: Dynamo would
# specialise a size of 1, and give equal sides one symbol, then compile again for unequal ones.
TWO_TRAINING_SIZES = dict(max_steps=4, train_scales=[128, 192], train_max_size=192)


def _both_sides_changed(padded_sizes: list[tuple[int, int]]) -> bool:
    *training, _ = padded_sizes  # the two validation images make the last batch
    heights, widths = zip(*training, strict=True)
    return len(set(heights)) == 2 and len(set(widths)) == 2


def test_compiled_training_steps(data, tmp_path, padded_sizes):
    """compile=True trains through the compiled encoder and decoder, their sizes symbolic: one graph
    each for training at two image sizes and one for evaluation."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    result = train(tiny_config(data, tmp_path, compile=True, **TWO_TRAINING_SIZES))
    assert result["step"] == 4
    assert _both_sides_changed(padded_sizes)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 4
    torch._dynamo.reset()
    state = load_checkpoint(result["checkpoint"])
    assert all(not name.startswith("_orig_mod") for name in state["model"])


def test_compile_whole_trains_through_one_graph_of_the_whole_forward(
    data, tmp_path, eager_compile, padded_sizes
):
    """compile_whole=True: the whole forward compiled with symbolic sizes, one graph for training at two
    image sizes and one for evaluation (traced by Dynamo, run eager: ``eager_compile``; Inductor's code
    for it takes minutes on a CI CPU, and torch 2.13's fails on it there)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    result = train(tiny_config(data, tmp_path, compile=True, compile_whole=True, **TWO_TRAINING_SIZES))
    assert result["step"] == 4
    assert eager_compile == [{"transformer_only": False, "dynamic": True}]
    assert _both_sides_changed(padded_sizes)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()


def test_metrics_log_writes_strict_json(tmp_path):
    """A CrowdPose level without images is nan: the line holds null, which every JSON parser reads."""

    def strict(constant):
        raise AssertionError(f"{constant} is not JSON")

    log = MetricsLog(tmp_path, enabled=True)
    log.log(3, "val", {"AP": 0.5, "AP_medium": float("nan")})
    assert json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=strict) == {
        "step": 3,
        "kind": "val",
        "AP": 0.5,
        "AP_medium": None,
    }
    MetricsLog(tmp_path / "rank1", enabled=False).log(3, "val", {"AP": 0.5})  # DDP ranks other than 0
    assert not (tmp_path / "rank1").exists()


@pytest.mark.parametrize("evaluated", [False, True])
def test_a_resumed_log_keeps_what_the_checkpoint_holds(tmp_path, evaluated):
    """Resumed from step 2: later lines go, and step 2's evaluation unless the checkpoint holds it (a
    kill between the evaluation's line and the checkpoint after it); a stale partial rewrite goes."""
    log = MetricsLog(tmp_path, enabled=True)
    for step, kind in [(1, "train"), (2, "train"), (2, "val"), (3, "train")]:
        log.log(step, kind, {"loss": 1.0})
    log.close()
    (tmp_path / ".metrics.jsonl.abc.tmp").write_text("half")
    MetricsLog(tmp_path, enabled=True, resume_step=2, resume_evaluated=evaluated).close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kept = [(1, "train"), (2, "train"), *([(2, "val")] if evaluated else [])]
    assert [(line["step"], line["kind"]) for line in lines] == kept
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


class _TensorBoardView:
    """What TensorBoard shows of a run's event files: a writer opened with ``purge_step`` drops every
    earlier event at or after that step, whatever its tag (its EventAccumulator's purge of a restart)."""

    def __init__(self):
        self.points: list[tuple[str, int, float]] = []

    def writer(self, log_dir: str, purge_step: int):
        self.points = [point for point in self.points if point[1] < purge_step]
        return SimpleNamespace(
            add_scalar=lambda tag, v, step: self.points.append((tag, step, v)), close=lambda: None
        )


@pytest.mark.parametrize("evaluated", [False, True])
def test_tensorboard_shows_each_point_once_after_a_resume(tmp_path, monkeypatch, evaluated):
    """Killed after step 2's evaluation was logged, with the checkpoint at step 2 holding it or not
    (the resumed run then evaluates step 2 again): TensorBoard ends as for a run never stopped."""

    def run(out_dir, view, steps, resume_step=0):
        monkeypatch.setitem(
            sys.modules, "torch.utils.tensorboard", SimpleNamespace(SummaryWriter=view.writer)
        )
        out_dir.mkdir(exist_ok=True)
        log = MetricsLog(out_dir, enabled=True, resume_step=resume_step, resume_evaluated=evaluated)
        for step, kind, value in steps:
            log.log(step, kind, {"loss": value})
        log.close()

    steps = [(1, "train", 1.0), (2, "train", 2.0), (2, "val", 0.5), (3, "train", 3.0)]
    full, cut = _TensorBoardView(), _TensorBoardView()
    run(tmp_path / "full", full, steps)
    run(tmp_path / "cut", cut, steps)  # killed after step 3, its checkpoint at step 2
    run(tmp_path / "cut", cut, steps[3 if evaluated else 2 :], resume_step=2)
    assert sorted(cut.points) == sorted(full.points) and len(full.points) == 4


def test_predictions_come_back_in_each_images_original_pixels(data):
    """Evaluation resizes the 64-pixel images to 48: a model that puts every keypoint at (0.75, 0.5) of
    its input gives records at 0.75 and 0.5 of each image's own width and height (COCO's pixel indices)."""
    from jcra.data.coco import PIXEL_CENTRE
    from train.train import build_dataset, data_loader, keypoint_layout, predict_loader

    class Fixed(torch.nn.Module):
        def forward(self, images, padding_mask):
            valid = ~padding_mask
            assert max(valid.any(2).sum(1).max(), valid.any(1).sum(1).max()) <= 48  # resized, then padded
            keypoints = torch.tensor([0.75, 0.5]).expand(images.shape[0], 2, 17, 2)
            return {"logits": torch.zeros(images.shape[0], 2), "keypoints": keypoints}

    cfg = tiny_config(data, ".", val_scale=48, max_size=48)
    loader = data_loader(build_dataset(cfg.val_ann, cfg.val_images, False, cfg, keypoint_layout("coco")), cfg)
    records = predict_loader(Fixed(), loader, torch.device("cpu"))
    sizes = {image["id"]: image for image in json.loads(open(cfg.val_ann).read())["images"]}
    assert len(records) == 2 * len(sizes)
    for record in records:
        image = sizes[record["image_id"]]
        assert record["keypoints"][0::3] == pytest.approx([0.75 * image["width"] - PIXEL_CENTRE] * 17)
        assert record["keypoints"][1::3] == pytest.approx([0.5 * image["height"] - PIXEL_CENTRE] * 17)


def test_reduce_means_averages_each_term_over_processes(monkeypatch):
    """The logged and NaN-checked loss and its terms are the processes' means, not their sums, nor rank
    0's alone."""
    import train.distributed as processes

    calls = []

    def all_reduce(tensor):  # rank 1 holds 1, 2 and 3 more than rank 0
        calls.append(tensor.clone())
        tensor.add_(tensor + torch.tensor([1.0, 2.0, 3.0]))

    monkeypatch.setattr(processes.dist, "all_reduce", all_reduce)
    values = {
        "loss": torch.tensor(1.5),
        "loss_cls": torch.tensor(0.5, dtype=torch.bfloat16),
        "x": torch.tensor(2),
    }
    assert processes.reduce_means(values, 2) == {"loss": 2.0, "loss_cls": 1.5, "x": 3.5}
    assert len(calls) == 1 and values["loss"].item() == 1.5  # one collective; the inputs left as they were


def test_auto_and_cuda_are_each_processes_local_gpu(monkeypatch):
    """Under torchrun each process's "auto" and "cuda" is its LOCAL_RANK's GPU, not cuda:0 for all, and
    one named GPU for every process is refused."""
    import train.distributed as processes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert processes.resolve_device("auto") == processes.resolve_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="device: 'cuda:0' puts all 2 processes on one GPU"):
        processes.resolve_device("cuda:0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert processes.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="--device: 'cuda:2' is GPU 2, but this machine has 2"):
        processes.resolve_device("cuda:2", "--device")
    # a scheduler that gives each process one GPU of its own: LOCAL_RANK 1 sees it as cuda:0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert [processes.resolve_device(name) for name in ("auto", "cuda", "cuda:0")] == [
        torch.device("cuda", 0)
    ] * 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert processes.resolve_device("auto") == torch.device("cpu")


def test_optimizer_groups_are_petrs():
    """The backbone and every sampling offset at lr x0.1, the rest at lr, each trainable parameter in one
    group, frozen ones in none, weight decay on all; fused on the CPU."""
    model = build_model("jcra_tiny", use_fused_kernels=False)
    model.backbone.conv1.weight.requires_grad_(False)
    optimizer = build_optimizer(model, lr=1e-3, lr_backbone_mult=0.5, lr_offsets_mult=0.25, weight_decay=0.01)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(lr_of)
    for name, param in model.named_parameters():
        expected = (
            None
            if not param.requires_grad
            else 5e-4
            if name.startswith("backbone.")
            else 2.5e-4
            if "sampling_offsets" in name
            else 1e-3
        )
        assert lr_of.get(id(param)) == expected, name
    assert {g["name"] for g in optimizer.param_groups} == {"backbone", "offsets", "rest"}
    assert all(g["weight_decay"] == 0.01 and g["fused"] for g in optimizer.param_groups)
    default = build_optimizer(model)
    assert [g["lr"] for g in default.param_groups] == pytest.approx([2e-5, 2e-5, 2e-4])
