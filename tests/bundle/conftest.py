"""Shared fixtures of the bundle tests: a tiny generated dataset, stand-in weights, small overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import save_weights
from unimed_core.paths import REPO_ROOT
from unimed_core.synthetic.dataset import generate_dataset

BUNDLE = REPO_ROOT / "bundle"
CONFIGS = BUNDLE / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
# Tiny working grid: 32^3 voxels at 10 mm covers the generated 320 mm field of view in one window.
SMALL = {"spacing": [10.0, 10.0, 10.0]}


def config(*names: str) -> list[str]:
    return [str(CONFIGS / f"{n}.json") for n in names]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Six generated cases (3 training of mixed levels, 1 unlabeled, 1 validation, 1 test); the datalist path."""
    root = tmp_path_factory.mktemp("bundle_data")
    return generate_dataset(root, 6, seed=3, shape=(32, 32, 32), spacing=(10.0, 10.0, 10.0), n_validation=1, n_test=1)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """Untrained weights written like the shipped ones (sha256 beside them), until the lead ships model.pt."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bundle_weights") / "model.pt"
    save_weights(unimed_small(), path)
    return path


@pytest.fixture()
def train_overrides(tiny_data, tmp_path) -> dict:
    return {
        **SMALL,
        "dataset_dir": str(tiny_data.parent),
        "output_dir": str(tmp_path / "train"),
        "patch_size": [32, 32, 32],
        "batch_size": 2,
        "max_epochs": 1,
        "val_interval": 1,
        "validate#click_classes": [],
    }
