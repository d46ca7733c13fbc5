"""The learning curve's bookkeeping: the CPU clock of a snapshot evaluated while its piece still runs, and the
refusal to call a run's own data seed "fresh"."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.learning_curve import _cpu_seconds_at, main, run_history
from unimed_core.data.atomic import atomic_write_text
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
