"""The GPU script of the high-resolution recipe, on the CPU at a tiny size: every phase runs and reports."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu_highres import main


@pytest.mark.slow  # about 25 CPU-seconds: training, a cache, an inference
def test_gpu_highres_tiny_run_reports_every_number(tmp_path):
    assert main(["--out", str(tmp_path), "--tiny", "--steps", "4"]) == 0
    result = json.loads((tmp_path / "gpu_highres.json").read_text())
    train = result["train"]
    assert train["steps"] == 4 and train["epochs"] == 2
    for part in ("first_epoch_cache_build", "later_epochs_from_cache"):
        assert train[part]["steps"] == 2 and 0 <= train[part]["data_share"] <= 1 and train[part]["steps_per_s"] > 0
    assert result["inference"]["end_to_end_s"] > 0 and result["gpu"]
    assert (tmp_path / "inference" / "summary.json").is_file()
