"""multi_gpu_train.json under torchrun: two CPU processes (gloo), one small epoch, rank 0 saves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bundle.conftest import LOGGING, META, config
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import load_weights
from unimed_core.paths import REPO_ROOT


def test_torchrun_two_processes_on_cpu(tiny_data, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    out = tmp_path / "mgpu"
    files = "[" + ",".join(f"'{c}'" for c in config("train", "multi_gpu_train")) + "]"
    command = [
        str(torchrun if torchrun.exists() else shutil.which("torchrun")),
        "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run",
        "--config_file", files, "--meta_file", META, "--logging_file", LOGGING,
        "--dataset_dir", str(tiny_data.parent), "--output_dir", str(out),
        "--spacing", "[10.0,10.0,10.0]", "--patch_size", "[32,32,32]",
        "--max_epochs", "1", "--val_interval", "1", "--batch_size", "1", "--validate#click_classes", "[]",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("Epoch[1] Complete") + result.stderr.count("Epoch[1] Complete") >= 2
    load_weights(unimed_small(), out / "models" / "model.pt")  # written by rank 0, without "module." prefixes
    assert (out / "models" / "checkpoint_last.pt.sha256").is_file()
