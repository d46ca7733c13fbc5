"""Which Python packages the module needs in Slicer's Python, and the pip arguments that install them.

The Widget asks the user before installing (``slicer.util.pip_install``); nothing here installs anything.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["REQUIRED_MODULES", "missing_modules", "package_source", "pip_arguments"]

# import name → pip requirement. torch is installed by the PyTorch extension when present (its CUDA build);
# the rest come with unimed_core's own requirements.
REQUIRED_MODULES = {"torch": "torch", "monai": "monai", "nibabel": "nibabel", "unimed_core": None}


def missing_modules(required: dict[str, str | None] | None = None) -> list[str]:
    """Import names of ``required`` that cannot be found (nothing is imported)."""
    required = REQUIRED_MODULES if required is None else required
    return [name for name in required if importlib.util.find_spec(name) is None]


def package_source(module_dir: str | Path | None = None) -> str:
    """Where to install ``unimed_core`` from: ``UNIMED_PACKAGE`` if set, else the checkout this module sits in."""
    if os.environ.get("UNIMED_PACKAGE"):
        return os.environ["UNIMED_PACKAGE"]
    here = Path(module_dir) if module_dir else Path(__file__).resolve().parent.parent
    for parent in (here, *here.parents):
        if (parent / "setup.py").is_file() and (parent / "unimed_core").is_dir():
            return str(parent)
    raise ValueError(
        "cannot find the unimed_core package to install: set UNIMED_PACKAGE to its folder, wheel or git URL"
    )


def pip_arguments(missing: list[str], source: str | None = None) -> str:
    """The argument string for ``slicer.util.pip_install`` that installs ``missing``."""
    if not missing:
        return ""
    requirements = [REQUIRED_MODULES.get(name) or name for name in missing if name != "unimed_core"]
    if "unimed_core" in missing:
        requirements.append(source or package_source())
    return " ".join(f'"{r}"' if " " in r else r for r in requirements)
