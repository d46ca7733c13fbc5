"""A real MONAI Label server running the UniMed app on 127.0.0.1, over a temporary studies folder.

The server runs in its own environment (``.venv-monailabel``, see ``docs/monailabel.md``); the tests drive it
with MONAI Label's own client from the test environment. Without the server environment the tests skip and
say how to create it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from monailabel_helpers import CASE_CONFIG, NOISE, STUDIES

from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import save_weights
from unimed_core.paths import DEFAULT_WEIGHTS, REPO_ROOT
from unimed_core.synthetic.case import generate_case
from unimed_core.synthetic.reproducible_nifti import save_nifti_reproducible

# the server environment's interpreter: its `monailabel` script runs whatever `python` is first on PATH
SERVER_PYTHON = REPO_ROOT / ".venv-monailabel" / "bin" / "python"
APP_DIR = REPO_ROOT / "monailabel_app"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A started ``monailabel start_server`` process and what the tests need to know about it."""

    def __init__(self, process: subprocess.Popen, url: str, studies: Path, truth: Path, model_dir: Path, weights):
        self.process, self.url, self.studies, self.truth = process, url, studies, truth
        self.model_dir, self.weights = model_dir, weights
        self.log = studies.parent / "server.log"

    def client(self):
        from monailabel.client import MONAILabelClient

        return MONAILabelClient(self.url, tmpdir=str(self.studies.parent / "client"))

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 60.0) -> list[psutil.Process]:
        """SIGINT (what Ctrl-C sends) and wait; returns the processes still alive afterwards."""
        family = [psutil.Process(self.process.pid), *self.descendants()] if self.process.poll() is None else []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        _, alive = psutil.wait_procs(family, timeout=10)
        return alive


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """The shipped weights when the bundle has them, else untrained ones written the same way (sha256 beside)."""
    if DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.with_name(DEFAULT_WEIGHTS.name + ".sha256").is_file():
        return DEFAULT_WEIGHTS
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ml_weights") / "model.pt"
    save_weights(unimed_small(), path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, weights):
    if not SERVER_PYTHON.is_file():
        pytest.skip("no MONAI Label server environment: run `make label-env` (creates .venv-monailabel)")
    root = tmp_path_factory.mktemp("monailabel")
    studies, truth, app = root / "studies", root / "truth", root / "app"
    studies.mkdir()
    truth.mkdir()
    # a copy of the app, so the server's own folders (model/, logs/, bin/) land in the temporary folder
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("model", "logs", "bin", "__pycache__"))
    for seed, name in enumerate(STUDIES):
        case = generate_case([7, seed], CASE_CONFIG)
        save_nifti_reproducible(case.image, case.affine, studies / f"{name}.nii.gz")
        save_nifti_reproducible(case.label, case.affine, truth / f"{name}_label.nii.gz")
        np.save(truth / f"{name}_boxes.npy", case.boxes)
    # a volume of pure noise: nothing the model was trained on, so it should be the least certain
    noise = np.random.default_rng(0).normal(0.0, 400.0, CASE_CONFIG.shape).astype(np.float32)
    save_nifti_reproducible(noise, case.affine, studies / f"{NOISE}.nii.gz")
    port = _free_port()
    env = {
        **os.environ,
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",  # scoring runs when a test asks, not in the background
        "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
        "OMP_NUM_THREADS": "2",
    }
    model_dir = root / "model"
    command = [
        str(SERVER_PYTHON),
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(app),
        "--studies",
        str(studies),
    ]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--conf", "weights", str(weights), "--conf", "model_dir", str(model_dir), "--conf", "device", "cpu"]
    command += ["--conf", "score_threshold", "0.0"]  # untrained weights are unsure: keep every box to check it
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
    srv = Server(process, f"http://127.0.0.1:{port}", studies, truth, model_dir, weights)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{srv.log.read_text()[-4000:]}")
            try:
                srv.client().info()
                break
            except Exception:  # not listening yet (connection refused), or the app still initialising
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer within 180 s:\n{srv.log.read_text()[-4000:]}")
                time.sleep(1.0)
        yield srv
    finally:
        for proc in srv.stop():  # only what this fixture started (the server and its children)
            proc.kill()
        log.close()
