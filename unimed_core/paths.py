"""One place for paths and environment variables (STYLE.md §12)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "REPO_ROOT",
    "BUNDLE_DIR",
    "DEFAULT_WEIGHTS",
    "DEFAULT_RESCORER",
    "DEFAULT_BOUNDARY_REFINER",
    "SAMPLE_DIR",
    "output_dir",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
# UNIMED_BUNDLE points at another bundle folder (e.g. one unpacked from a MONAI model zoo download).
BUNDLE_DIR = Path(os.environ.get("UNIMED_BUNDLE", REPO_ROOT / "bundle")).resolve()
DEFAULT_WEIGHTS = BUNDLE_DIR / "models" / "model.pt"
# the lesion candidates' false-positive reduction stage fitted for DEFAULT_WEIGHTS (benchmarks/candidate_rescorer.py)
DEFAULT_RESCORER = BUNDLE_DIR / "models" / "rescorer.pt"
# the organ boundary refiner fitted for DEFAULT_WEIGHTS (benchmarks/boundary_refiner.py)
DEFAULT_BOUNDARY_REFINER = BUNDLE_DIR / "models" / "boundary_refiner.pt"
SAMPLE_DIR = BUNDLE_DIR / "sample"


def output_dir(default: str | Path = "outputs") -> Path:
    """Where outputs go unless told otherwise: ``UNIMED_OUTPUT`` or ``./outputs``."""
    return Path(os.environ.get("UNIMED_OUTPUT", default)).resolve()
