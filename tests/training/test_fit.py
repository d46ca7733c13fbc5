"""A few training steps through MONAI's SupervisedTrainer on a tiny generated datalist, under step and time budgets."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from unimed_core.data.datalist import load_datalist
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_tiny
from unimed_core.synthetic.dataset import generate_dataset
from unimed_core.training.fit import (
    TimeBudget,
    build_objective,
    build_train_loader,
    build_trainer,
    fit,
    parameter_groups,
)

LM = LabelMap.default()
FAST = dict(patch_size=(32, 32, 32), spacing=(10.0, 10.0, 10.0), batch_size=2, log_every=1)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """Four training items: one per annotation level (mask, boxes, class, none)."""
    root = tmp_path_factory.mktemp("fit")
    levels = {"mask": 0.25, "boxes": 0.25, "class": 0.25, "none": 0.25}
    path = generate_dataset(
        root, 4, seed=0, shape=(40, 40, 32), spacing=(8.0, 8.0, 10.0), levels=levels, n_validation=0, n_test=0
    )
    splits = load_datalist(path, LM)
    assert len(splits["training"]) == 3 and len(splits["unlabeled"]) == 1
    return splits["training"] + splits["unlabeled"]


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return unimed_tiny(LM, max_sequence_length=64)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_runs_max_steps_and_changes_the_weights(items):
    model = tiny_model()
    before = _snapshot(model)
    history = fit(model, items, LM, max_steps=3, **FAST)
    assert [row["step"] for row in history] == [1, 2, 3]
    for row in history:
        assert math.isfinite(row["loss"]) and row["loss"] > 0
        assert "image" not in row
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and any("encoder" in k for k in changed)


def test_time_budget_stops_early(items):
    model = tiny_model()
    history = fit(model, items, LM, max_steps=50, time_budget_s=1e-3, **FAST)
    assert [row["step"] for row in history] == [1]


def test_build_trainer_is_monai_supervised_trainer(items):
    model = tiny_model()
    loader = build_train_loader(items, model, LM, (32, 32, 32), (10.0, 10.0, 10.0), batch_size=2)
    assert len(loader) == 2  # 4 items, batches of 2, last incomplete batch dropped
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, 32, 32, 32) and len(batch["targets"]) == 2
    before = _snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = build_trainer(model, build_objective(model, LM), loader, optimizer, max_epochs=1)
    assert isinstance(trainer, SupervisedTrainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: engine.terminate())
    trainer.run()
    assert trainer.state.iteration == 1
    output = trainer.state.output  # what JointIteration returns
    assert output["image"].shape == (2, 1, 32, 32, 32)
    assert torch.isfinite(output["loss"]) and len(output) > 2
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # lr 0: nothing moved


@pytest.mark.parametrize("seconds", [0, -1.0])
def test_time_budget_bad_argument(seconds):
    with pytest.raises(ValueError, match="seconds must be > 0"):
        TimeBudget(seconds)


def test_time_budget_bad_clock():
    with pytest.raises(ValueError, match="clock must be 'wall' or 'process'"):
        TimeBudget(1.0, clock="gpu")


def test_process_clock_budget_stops_early(items):
    """A CPU-time budget ends the run although max_steps would allow more steps."""
    history = fit(tiny_model(), items, LM, max_steps=50, time_budget_s=1e-3, time_budget_clock="process", **FAST)
    assert [row["step"] for row in history] == [1]


def test_resumed_run_matches_an_uninterrupted_one(items, tmp_path):
    """A run stopped at an epoch's end and resumed from its checkpoint ends with the same weights, bit for bit."""
    steps = dict(max_steps=4, **FAST)  # 4 items, batch 2: two epochs of two steps
    whole = tiny_model()
    fit(whole, items, LM, **steps)
    ckpt = tmp_path / "run.pt"
    first = tiny_model()
    history = fit(
        first, items, LM, checkpoint=ckpt, stop_after_s=1e-3, snapshot_steps=[1], snapshot_dir=tmp_path, **steps
    )
    assert [row["step"] for row in history] == [1, 2]  # stopped at the first epoch's end
    assert (tmp_path / "run.pt.sha256").is_file() and (tmp_path / "step_1.pt.sha256").is_file()
    resumed = tiny_model(seed=123)  # other initial weights: everything must come from the checkpoint
    history = fit(resumed, items, LM, checkpoint=ckpt, **steps)
    assert [row["step"] for row in history] == [1, 2, 3, 4]  # the history runs on across the pieces
    assert history[-1]["cpu_seconds"] >= history[1]["cpu_seconds"]
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    finished = tiny_model()
    assert fit(finished, items, LM, checkpoint=ckpt, **steps)[-1]["step"] == 4  # a finished run trains no more
    assert all(torch.equal(v, finished.state_dict()[k]) for k, v in whole.state_dict().items())


def test_altered_checkpoint_is_refused(items, tmp_path):
    ckpt = tmp_path / "run.pt"
    fit(tiny_model(), items, LM, checkpoint=ckpt, max_steps=2, **FAST)
    ckpt.write_bytes(ckpt.read_bytes()[:-8])
    with pytest.raises(ValueError, match="sha256 does not match"):
        fit(tiny_model(), items, LM, checkpoint=ckpt, max_steps=4, **FAST)


def test_snapshots_need_a_folder(items):
    with pytest.raises(ValueError, match="snapshot_dir"):
        fit(tiny_model(), items, LM, max_steps=1, snapshot_steps=[1], **FAST)


def test_objective_options_reach_the_objective(items):
    """A different class-mask foreground cap gives a different class-mask loss on the first batch with masks (same
    seed, same batches)."""
    runs = [fit(tiny_model(), items, LM, max_steps=4, objective_options=opts, **FAST)
            for opts in (None, {"class_mask_pos_weight": 512.0})]  # fmt: skip
    masked = [next(row for row in run if "loss_class_mask_bce" in row) for run in runs]
    assert masked[0]["loss_class_mask_bce"] != masked[1]["loss_class_mask_bce"]
    with pytest.raises(ValueError, match="class_mask_pos_weight"):
        fit(tiny_model(), items, LM, max_steps=1, objective_options={"class_mask_pos_weight": 0.5}, **FAST)


def test_lr_scale_trains_a_named_head_faster_and_refuses_a_prefix_that_names_nothing(items):
    groups = parameter_groups(unimed_tiny(LM), 1e-3, {"fine_class_head": 10.0})
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert all(n.startswith("fine_class_head") for n, _ in _named(unimed_tiny(LM), groups[1]["params"]))
    with pytest.raises(ValueError, match="name no parameter"):
        parameter_groups(unimed_tiny(LM), 1e-3, {"fine_clas_head": 10.0})
    model = unimed_tiny(LM)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, items, LM, max_steps=2, lr=1e-3, lr_scale={"fine_class_head": 10.0}, **FAST)
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    # AdamW moves every trained weight by about the rate at each step: the head's ten times as far
    assert max(v for n, v in moved.items() if n.startswith("fine_class_head")) > 5e-3
    assert max(v for n, v in moved.items() if n.startswith("encoder")) < 5e-3


def _named(model, params):
    ids = {id(p) for p in params}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]
