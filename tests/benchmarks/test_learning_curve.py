"""The learning curve's bookkeeping: the CPU clock of a snapshot evaluated while its piece still runs, and the
refusal to call a run's own data seed "fresh"."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks.learning_curve import _cpu_seconds_at, _model, _prefix_scale, _start_of, main, run_history
from unimed_core.data.atomic import atomic_write_text
from unimed_core.label_map import LabelMap
from unimed_core.model.weights import sha256_of


def _rows(last: int) -> list[dict]:
    return [{"step": s, "cpu_seconds": 2.0 * s} for s in range(50, last + 1, 50)]


def test_run_history_reads_the_running_piece_from_its_checkpoint(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps(_rows(100)))  # written when the last piece ended
    assert run_history(tmp_path)[-1]["step"] == 100
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"history": _rows(300)}, checkpoint)
    atomic_write_text(tmp_path / "checkpoint.pt.sha256", f"{sha256_of(checkpoint)}  checkpoint.pt\n")
    history = run_history(tmp_path)
    assert history[-1]["step"] == 300 and _cpu_seconds_at(history, 260) == 600.0
    assert _cpu_seconds_at(history, 400) is None
    checkpoint.write_bytes(checkpoint.read_bytes()[:-4])  # an altered checkpoint is not read
    assert run_history(tmp_path)[-1]["step"] == 100


def test_fresh_seed_must_differ_from_the_runs_data_seed(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"data": str(tmp_path / "data"), "data_seed": 3}))
    with pytest.raises(SystemExit, match="is the seed this run's data came from"):
        main(["evaluate", "--run", str(tmp_path), "--fresh-seed", "3"])


def test_a_fine_tuning_run_sits_after_its_parents_snapshot_on_the_curve(tmp_path):
    """Steps and CPU clock of a run started from another run's weights continue the parent's (chains too)."""
    parent, child = tmp_path / "parent", tmp_path / "child"
    parent.mkdir()
    (parent / "config.json").write_text(json.dumps({"total_steps": 9600}))
    history = [{"step": 4800, "cpu_seconds": 6600.0}, {"step": 9600, "cpu_seconds": 13210.0}]
    (parent / "history.json").write_text(json.dumps(history))
    assert _start_of({"total_steps": 9600}) == (0, 0.0)
    assert _start_of({"init_weights": str(parent / "final.pt")}) == (9600, 13210.0)
    assert _start_of({"init_weights": str(parent / "step_4800.pt")}) == (4800, 6600.0)
    child.mkdir()
    (child / "config.json").write_text(json.dumps({"total_steps": 720, "init_weights": str(parent / "final.pt")}))
    (child / "history.json").write_text(json.dumps([{"step": 720, "cpu_seconds": 900.0}]))
    assert _start_of({"init_weights": str(child / "step_720.pt")}) == (10320, 14110.0)
    with pytest.raises(SystemExit, match="parent run"):
        _start_of({"init_weights": str(tmp_path / "elsewhere" / "final.pt")})
    fits = tmp_path / "dense_fit"  # a head fitted on the frozen features of the parent's step 4800: its CPU, no steps
    fits.mkdir()
    (fits / "fit.json").write_text(json.dumps({"init": str(parent / "step_4800.pt"), "cpu_seconds": 250.0}))
    assert _start_of({"init_weights": str(fits / "fit.pt")}) == (4800, 6850.0)


def test_extra_studies_of_another_count_are_not_silently_reused(tmp_path):
    from benchmarks.learning_curve import extra_training_items
    from unimed_core.synthetic.dataset import generate_dataset

    data = tmp_path / "data"
    generate_dataset(tmp_path / "data-extra1003-4", 28, seed=1003, shape=(24, 24, 24), spacing=(16.0, 16.0, 15.0),
                     n_validation=8, n_test=16)  # fmt: skip
    assert len(extra_training_items(data, 3, 4)) == 4  # the folder made for 4 (+ 24 held out) studies
    generate_dataset(tmp_path / "data-extra1003-8", 28, seed=1003, shape=(24, 24, 24), spacing=(16.0, 16.0, 15.0),
                     n_validation=8, n_test=16)  # fmt: skip
    with pytest.raises(SystemExit, match="holds 28 generated studies, not 32"):
        extra_training_items(data, 3, 8)


def test_lesion_rich_extra_studies_have_their_own_folder_and_more_lesions(tmp_path, monkeypatch):
    """Extra studies with other lesion settings never reuse the default set's folder, and the settings reach the
    generator: at presence 1 every training study with a mask or image labels has both lesion kinds."""
    import benchmarks.learning_curve as lc
    from benchmarks.learning_curve import extra_lesions, extra_training_items
    from unimed_core.data.datalist import load_datalist
    from unimed_core.synthetic.case import SyntheticConfig
    from unimed_core.synthetic.dataset import generate_dataset

    assert extra_lesions(None, None) == {}
    lesions = extra_lesions(1.0, [2, 2])
    assert lesions == {"lesion_presence": 1.0, "lesions_per_kind": (2, 2)}
    hosts = extra_lesions(None, None, ["liver=0.5", "kidney_left=0.5"])
    assert hosts == {"organ_weights": {"liver": 0.5, "kidney_left": 0.5}}
    with pytest.raises(SystemExit, match="organ=weight"):
        extra_lesions(None, None, ["liver"])
    made = []

    def small_items(root, seed, cases=144, fov_mm=None, lesions=None):  # the benchmark's studies, but tiny
        made.append(root)
        config = SyntheticConfig(lesion_radius_mm=(20.0, 30.0), **(lesions or {}))
        path = generate_dataset(root, cases, seed=seed, domains="mixed", shape=(32, 32, 32), spacing=(12.0, 12.0, 12.0),
                                n_validation=8, n_test=16, base_config=config)  # fmt: skip
        return None, load_datalist(path)

    monkeypatch.setattr(lc, "benchmark_items", small_items)
    items = extra_training_items(tmp_path / "data", 0, 6, seed=2000, lesions=lesions)
    extra_training_items(tmp_path / "data", 0, 6, seed=2000, lesions=hosts)
    assert made == [tmp_path / "data-extra2000-6-lesion_presence1.0-lesions_per_kind2-2",
                    tmp_path / "data-extra2000-6-organ_weightsliver0.5-kidney_left0.5"]  # fmt: skip
    assert len(items) == 6
    classes = [set(item["class"]) for item in items if "class" in item]
    assert classes and all(c == {"cyst", "tumor"} for c in classes)


def test_seed_spread_pools_the_seeds_of_one_recipe_only():
    from benchmarks.learning_curve import HEADLINE, seed_spread

    recipe = {"lr": 1e-3, "total_steps": 9600, "threads": 1, "machine": "m"}
    configs = {"s0": {**recipe, "seed": 0, "snapshot_steps": [300, 600, 3000]}, "s1": {**recipe, "seed": 1},
               "s2": {**recipe, "seed": 2, "machine": "other"}, "ft": {**recipe, "seed": 0, "init_weights": "x.pt"}}  # fmt: skip

    def row(run, step, dice):
        return {"run": run, "seed": configs[run]["seed"], "step": step, **{k: float("nan") for k in HEADLINE},
                "organ Dice": dice}  # fmt: skip

    rows = [row("s0", 300, 0.2), row("s1", 300, 0.4), row("s2", 300, 0.6), row("s0", 3000, 0.8),
            row("s0", 600, 0.5), row("s1", 600, 0.7), row("ft", 300, 0.9)]  # fmt: skip
    spread = seed_spread(rows, configs)
    assert [(g["step"], g["seeds"]) for g in spread] == [(300, [0, 1, 2]), (600, [0, 1])]  # 3000: one seed
    dice = spread[0]["metrics"]["organ Dice"]
    assert dice["mean"] == pytest.approx(0.4) and dice["sd"] == pytest.approx(0.2) and dice["n"] == 3
    assert (dice["min"], dice["max"]) == (0.2, 0.6)
    assert spread[0]["metrics"]["image AUC"] is None  # not measured


def test_a_runs_config_rebuilds_its_architecture_and_older_configs_the_old_one():
    label_map = LabelMap.default()
    old = _model(label_map, {"seed": 0, "fine_class_masks": True})  # a config from before the head
    assert old.dense_class_head is None and old.fine_class_head is not None
    new = _model(label_map, {"fine_class_masks": True, "dense_class_head": True, "fine_refine_units": 1})
    assert new.dense_class_head is not None and len(new.fine_class_head.refine) == 1
    assert _model(label_map, {"fine_class_masks": False}).fine_class_head is None


def test_lr_scale_is_read_as_prefix_and_positive_scale():
    assert _prefix_scale("dense_class_head=10") == ("dense_class_head", 10.0)
    for bad in ("dense_class_head", "=3", "head=0", "head=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _prefix_scale(bad)
