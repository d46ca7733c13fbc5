"""The baselines' recipes: optimiser and schedule as written, augmentation that keeps boxes on their lesions, and a
run that resumes from its checkpoint to the weights of an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.baseline_training import RECIPES, Recipe, _augment, steps_for_budget, train_baseline
from benchmarks.baselines import build_segresnet
from unimed_core.data.datalist import load_datalist
from unimed_core.data.training_data import LoadedCase
from unimed_core.label_map import LabelMap
from unimed_core.synthetic.dataset import generate_dataset

LABEL_MAP = LabelMap.default()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_recipe_builds_its_optimiser_and_schedule():
    params = [torch.nn.Parameter(torch.zeros(1))]
    sgd = RECIPES["detection"].build_optimizer(params)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["lr"] == 1e-2
    assert isinstance(RECIPES["segmentation"].build_optimizer(params), torch.optim.AdamW)
    assert isinstance(RECIPES["classification"].build_optimizer(params, lr=3e-4), torch.optim.Adam)
    rates = []
    schedule = RECIPES["detection"].build_schedule(sgd, 300)  # warm-up over 10 of 300, x0.1 from half-way
    for _ in range(300):
        rates.append(sgd.param_groups[0]["lr"])
        sgd.step()
        schedule.step()
    assert rates[0] < rates[9] == pytest.approx(1e-2) and rates[149] == pytest.approx(1e-2)
    assert rates[150] == pytest.approx(1e-3)
    assert steps_for_budget("segmentation", 30.0) == 10
    with pytest.raises(ValueError, match="optimizer"):
        Recipe("x", "rmsprop", 1e-3, 0.0, "constant", 0.0, "none")


def test_detection_augmentation_moves_boxes_with_the_image():
    image = torch.zeros(1, 16, 16, 16)
    image[0, 2:5, 3:7, 10:14] = 1.0
    case = LoadedCase(image, None, np.array([[2.0, 3, 10, 5, 7, 14]]), np.array([0]), None)
    for seed in range(8):
        out = _augment(case, "flip_rot90_intensity", np.random.default_rng(seed))
        x1, y1, z1, x2, y2, z2 = np.round(np.asarray(out.boxes[0])).astype(int)
        inside, bright = out.image[0, x1:x2, y1:y2, z1:z2], out.image[0] > out.image[0].min()
        assert inside.numel() == 48 and (inside > out.image[0].min()).all() and int(bright.sum()) == 48


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    data = tmp_path / "data"
    generate_dataset(data, 6, seed=3, shape=(24, 24, 24), spacing=(16.0, 16.0, 16.0), n_validation=0, n_test=1)
    items = load_datalist(data / "datalist.json", LABEL_MAP)["training"]
    kwargs = {"patch_size": (16, 16, 16), "spacing": (24.0, 24.0, 24.0), "batch_size": 1, "schedule_steps": 6,
              "log_every": 1, "seed": 1}  # fmt: skip

    def run(max_steps, checkpoint=None, snapshots=()):
        torch.manual_seed(0)
        model = build_segresnet(LABEL_MAP, init_filters=8)
        history = train_baseline("segmentation", model, items, LABEL_MAP, max_steps=max_steps, checkpoint=checkpoint,
                                 snapshot_steps=snapshots, snapshot_dir=tmp_path, **kwargs)  # fmt: skip
        return model.state_dict(), history

    whole, _ = run(4)
    ckpt = tmp_path / "checkpoint.pt"
    run(2, ckpt, snapshots=(2,))  # a piece that ends at an epoch's end (batch 1: every step is one)
    resumed, history = run(4, ckpt)
    assert (tmp_path / "step_2.pt").is_file() and (tmp_path / "checkpoint.pt.sha256").is_file()
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["cpu_seconds"] >= history[1]["cpu_seconds"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
