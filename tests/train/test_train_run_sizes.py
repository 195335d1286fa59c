"""bench.train_run_sizes: a run's batch sizes replayed without training, and its log's images/s."""

import json

import pytest
import torch

from bench.train_run_sizes import first_met, logged_speeds, new_compiles, replayed_sizes, train_run_config
from kernels.dispatch import INTERPRET
from tests.shared_data import SHARED_DATA
from train.train import train

from .conftest import tiny_config


def test_replayed_sizes_are_those_the_run_trained_on(data, tmp_path):
    """Random short sides from 32 to 160 (each image its own), two epochs of three steps: the replay,
    its loader in two processes, gives the padded sizes the run logged, loaded in the training process.
    The epochs' sizes differ, so a replay of the wrong epoch or seed fails."""
    scales = list(range(32, 161))
    cfg = tiny_config(data, tmp_path, train_scales=scales, max_size=160, max_steps=6, eval_every=0)
    train(cfg)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [(2, *line["padded_hw"][0]) for line in logged if line["kind"] == "train"]
    cfg.num_workers = 2
    assert len(trained) == 6 and trained[:3] != trained[3:]
    assert replayed_sizes(cfg, 6) == trained


@pytest.mark.skipif(not INTERPRET, reason="counts launches through Triton's interpreter")
def test_new_compiles_come_with_new_blocks_of_people_not_new_sizes(data, tmp_path):
    """The tiny model's first step compiles; its sizes later do not (64 x 96 and 96 x 64 give 128 tokens,
    64 x 64 gives 85), a third person does (the cost's tile of people grows from 2 to 4)."""
    gen = torch.Generator().manual_seed(0)

    def batch(h, w, people):
        targets = []
        for g in people:
            keypoints = torch.rand(g, 17, 3, generator=gen) * torch.tensor([w, h, 2.0])
            targets.append(
                {
                    "keypoints": keypoints.round(),
                    "area": torch.full((g,), 100.0),
                    "size": torch.tensor([w, h]),
                }
            )
        return (2, 3, h, w), targets

    cfg = tiny_config(data, tmp_path, model_overrides={"use_fused_kernels": True})
    batches = [
        batch(64, 96, [1, 0]),
        batch(64, 96, [0, 2]),
        batch(96, 64, [1, 1]),
        batch(64, 64, [2, 2]),
        batch(64, 64, [3, 1]),
    ]
    compiled = new_compiles(cfg, batches)
    assert compiled[0] > 0 and compiled[1:] == [0, 0, 0, 1]


def test_logged_speeds_take_each_steps_own_postfix():
    """tqdm draws step n first with step n - 1's postfix, then with its own."""
    bar = (
        "  2%| | 1/3 [00:10<06:32, 10.07s/step, data_s=0.27, img_s=0.2, loss=134.6]"
        "  5%| | 2/3 [00:10<02:45,  4.36s/step, data_s=0.27, img_s=0.2, loss=134.6]"
        "  5%| | 2/3 [00:10<02:45,  4.36s/step, data_s=0.00, img_s=5.4, loss=139.2]"
        " 10%| | 3/3 [00:11<00:00,  2.74s/step, data_s=0.00, img_s=5.4, loss=139.2]"
        " 10%| | 3/3 [00:11<00:00,  2.74s/step, data_s=0.00, img_s=2.5, hw=64x96, loss=163.3]"
    )
    assert logged_speeds(bar) == [0.2, 5.4, 2.5]


def test_first_met_marks_each_padded_size_once():
    sizes = [(2, 64, 96), (2, 96, 64), (2, 64, 96), (1, 64, 96), (2, 32, 32)]
    assert first_met(sizes) == [True, True, False, False, True]


@pytest.mark.skipif(not (SHARED_DATA / "coco-mini").exists(), reason="needs ../shared/data/coco-mini")
def test_train_run_config_is_the_gpu_sessions_run():
    cfg = train_run_config(num_workers=1)
    assert (cfg.model, cfg.batch_size, cfg.max_steps, cfg.num_workers) == ("jcra_r50", 2, 40, 1)
    assert cfg.train_scale_mode == "range" and cfg.train_ann.endswith("person_keypoints_train2017.json")
