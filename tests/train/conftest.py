"""Shared fixtures of the training tests: tiny synthetic data and a tiny deterministic configuration."""

import pytest

from train.config import TrainConfig

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Tiny synthetic COCO-format splits: 6 train and 2 val images of 64 x 64 pixels."""
    generate = pytest.importorskip("jcra.data.synthetic").generate
    out = tmp_path_factory.mktemp("synthetic")
    return {
        k: str(v) for k, v in generate(out, num_train=6, num_val=2, seed=0, image_size=IMAGE_SIZE).items()
    }


def tiny_config(data: dict, out_dir, **changes) -> TrainConfig:
    """The tiny model at 64 pixels, batch 2 (3 steps per epoch), reference ops, deterministic."""
    values = dict(
        out_dir=str(out_dir),
        **data,
        model="jcra_tiny",
        model_overrides={"use_fused_kernels": False},
        train_scales=[IMAGE_SIZE],
        val_scale=IMAGE_SIZE,
        max_size=IMAGE_SIZE,
        epochs=2,
        batch_size=2,
        lr=1e-3,
        device="cpu",
        log_every=1,
    )
    return TrainConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A checkpoint of 2 training steps of the tiny model."""
    from train.train import train

    out = tmp_path_factory.mktemp("run")
    return train(tiny_config(data, out, max_steps=2))["checkpoint"]


@pytest.fixture
def eager_compile(monkeypatch) -> list[dict]:
    """``JCRA.compile_model`` through Dynamo's eager backend (Inductor's code generation costs about a
    minute a graph on a CI CPU): Dynamo's tracing and guards as compiled, the ops run eager. Returns the
    list of the options each call was given."""
    from jcra.model import JCRA

    compile_model, asked = JCRA.compile_model, []

    def traced(model, **options):
        asked.append(options)
        compile_model(model, backend="eager", **options)

    monkeypatch.setattr(JCRA, "compile_model", traced)
    return asked


@pytest.fixture
def padded_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The padded (H, W) of every batch ``collate`` makes from now on (``collate_on_canvas``'s too), in
    order."""
    import importlib

    import jcra.data

    module = importlib.import_module("jcra.data.collate")  # ``jcra.data.collate`` is the function
    padded, collate = [], module.collate

    def recorded(*args, **kwargs):
        batch = collate(*args, **kwargs)
        padded.append(tuple(batch[0].shape[-2:]))
        return batch

    for namespace in (module, jcra.data):
        monkeypatch.setattr(namespace, "collate", recorded)
    return padded
