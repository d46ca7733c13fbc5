"""No data loss in training: ``train.json`` killed mid-epoch (SIGKILL, a real subprocess) resumes from its last
checkpoint and ends with exactly the weights of an uninterrupted run.

Exact equality needs everything a step depends on to be in the checkpoint or derived from the epoch: model,
optimizer, LR scheduler, trainer counters and the prompt generator of ``JointIteration`` are saved; the data
order comes from a sampler seeded by ``seed + epoch`` and the random crops from ``(seed, epoch, index)``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from monai.bundle import ConfigWorkflow

from tests.bundle.conftest import LOGGING, META, SMALL, config
from unimed_core.engine import AtomicCheckpointSaver, latest_checkpoint
from unimed_core.model.weights import sha256_of
from unimed_core.paths import REPO_ROOT

EPOCHS = 3


def _overrides(tiny_data, output_dir) -> dict:
    return {
        **SMALL,
        "dataset_dir": str(tiny_data.parent),
        "output_dir": str(output_dir),
        "patch_size": [32, 32, 32],
        "batch_size": 2,
        "max_epochs": EPOCHS,
        "val_interval": 1000,  # no validation: this test is about the training state
    }


def _train(overrides: dict) -> dict[str, torch.Tensor]:
    workflow = ConfigWorkflow(
        config_file=config("train"), meta_file=META, logging_file=LOGGING, workflow_type="train", **overrides
    )
    workflow.initialize()
    workflow.run()
    return {k: v.detach().clone() for k, v in workflow.network_def.state_dict().items()}


def _train_and_kill_in_last_epoch(args: dict, tmp_path) -> subprocess.Popen:
    """``python -m monai.bundle run`` killed with SIGKILL after the first iteration of the last epoch."""
    args_file = tmp_path / "args.json"
    args_file.write_text(
        json.dumps({"config_file": config("train"), "meta_file": META, "logging_file": LOGGING, **args})
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(
        [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(args_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    lines, deadline = [], time.monotonic() + 300
    try:
        for line in process.stdout:
            lines.append(line)
            if f"Epoch: {EPOCHS}/{EPOCHS}, Iter: 1/" in line:  # mid-epoch: iteration 1 of 2 of the last epoch
                process.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "training took too long"
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(lines[-30:])
    return process


def test_training_killed_mid_epoch_resumes_to_the_same_weights(tiny_data, tmp_path):
    torch.set_num_threads(torch.get_num_threads())
    reference = _train(_overrides(tiny_data, tmp_path / "uninterrupted"))

    killed_dir = tmp_path / "killed"
    _train_and_kill_in_last_epoch(_overrides(tiny_data, killed_dir), tmp_path)
    models = killed_dir / "models"
    assert not (models / "checkpoint_last.pt").exists()  # it never finished
    assert not list(models.glob("*.tmp*")), "a half-written checkpoint was left"
    resume_from = latest_checkpoint(models)
    assert resume_from == str(models / f"checkpoint_epoch={EPOCHS - 1}.pt")

    resumed = _train({**_overrides(tiny_data, killed_dir), "resume_from": resume_from})
    assert reference.keys() == resumed.keys()
    different = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ after resuming, e.g. {different[:3]}"
    assert latest_checkpoint(models) == str(models / "checkpoint_last.pt")


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Rotation removes the old file only after the new one is complete; a fixed name is never truncated."""
    from ignite.engine import Engine

    net = torch.nn.Linear(2, 2)
    objects = {"model": net, "optimizer": torch.optim.SGD(net.parameters(), lr=0.1)}
    engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(
        str(tmp_path), objects, save_interval=1, n_saved=1, save_final=True, final_filename="checkpoint_last.pt"
    )
    saver.attach(engine)
    engine.run([0], max_epochs=2)
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == [f"checkpoint_{n}.pt{s}" for n in ("epoch=2", "last") for s in ("", ".sha256")]
    for name in ("checkpoint_epoch=2.pt", "checkpoint_last.pt"):
        assert (tmp_path / f"{name}.sha256").read_text().split()[0] == sha256_of(tmp_path / name)

    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):  # the process dies while writing the next checkpoint
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:
            handle.truncate(10)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dies_half_way)
    engine.state.max_epochs = 3
    with pytest.raises(KeyboardInterrupt):
        engine.run([0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == saved  # old checkpoint intact, no temporary left
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_last.pt")
    (tmp_path / "checkpoint_last.pt").write_bytes(b"tampered")  # a checkpoint whose hash fails is skipped
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=2.pt")
