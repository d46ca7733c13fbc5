"""Names shared by the MONAI Label app tests and their fixtures (a module of its own: ``conftest`` is not
importable by name when several test folders have one)."""

from __future__ import annotations

import importlib.util
import sys

from unimed_core.paths import REPO_ROOT
from unimed_core.synthetic.case import SyntheticConfig

__all__ = ["CASE_CONFIG", "STUDIES", "NOISE", "app_module"]

# 48^3 voxels at 8 mm: the generated field of view, one 64^3 window at the bundle's 6 mm working grid.
CASE_CONFIG = SyntheticConfig(domain="ct", shape=(48, 48, 48), spacing=(8.0, 8.0, 8.0), lesion_presence=1.0)
STUDIES = ("case_a", "case_b", "case_c", "case_d", "case_e")  # a-c get labels, d-e and NOISE stay unlabeled
NOISE = "noise"


def app_module(name: str):
    """A module of the app's ``lib`` that imports no MONAI Label (loaded by path: the app is not a package)."""
    qualified = f"unimed_monailabel_app_{name}"
    if qualified not in sys.modules:
        path = REPO_ROOT / "monailabel_app" / "lib" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(qualified, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[qualified]
