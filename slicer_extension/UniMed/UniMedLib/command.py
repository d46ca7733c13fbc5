"""The ``unimed-infer`` command line for one volume, built from a plain request.

The heavy work (torch, MONAI, the model) runs in this subprocess, never in Slicer's GUI process (STYLE.md §9).
The command is ``PYTHON -m unimed_core.cli.infer`` rather than the ``unimed-infer`` console script, so it works
with whichever interpreter has ``unimed_core`` installed (``PythonSlicer`` inside Slicer).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["InferenceRequest", "build_command", "DEVICES", "TASKS"]

DEVICES = ("auto", "cpu", "cuda")
TASKS = ("segment", "detect", "classify")


def _points(points: Sequence[Sequence[float]] | None, what: str) -> tuple[tuple[float, float, float], ...]:
    out = []
    for p in points or ():
        values = tuple(float(v) for v in p)
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"{what} must be (x, y, z) RAS millimetres, got {p!r}")
        out.append(values)
    return tuple(out)


@dataclass(frozen=True)
class InferenceRequest:
    """What to run on one volume file.

    Args:
        input_path: the volume (NIfTI, NRRD, MHA) written from the input node.
        out_dir: where ``unimed-infer`` writes its outputs.
        weights: weight file (sha256 file beside it); None for the bundle's ``models/model.pt``.
        device: "auto", "cpu", "cuda" or "cuda:N".
        classes: only these label-map classes (None: all).
        positive_points: click prompts, RAS mm; when given, the command segments the structure under them.
        negative_points: clicks marking what is *not* the structure, RAS mm.
        box: ``(x1, y1, z1, x2, y2, z2)`` RAS mm (a markups ROI's bounds); when given, the command segments the
            structure inside it (the model's box prompt). Not together with clicks.
        python: interpreter that has ``unimed_core`` installed (default: this one).

    Example:
        >>> req = InferenceRequest("ct.nrrd", "out", device="cpu", positive_points=[(1, 2, 3)])
        >>> build_command(req)[-3:]
        ['--device', 'cpu', '--click=1.0,2.0,3.0']
    """

    input_path: str | Path
    out_dir: str | Path
    weights: str | Path | None = None
    device: str = "auto"
    classes: tuple[str, ...] | None = None
    positive_points: tuple[tuple[float, float, float], ...] = field(default_factory=tuple)
    negative_points: tuple[tuple[float, float, float], ...] = field(default_factory=tuple)
    box: tuple[float, float, float, float, float, float] | None = None
    python: str = sys.executable

    def __post_init__(self) -> None:
        if not str(self.input_path):
            raise ValueError("input_path is empty")
        if not str(self.out_dir):
            raise ValueError("out_dir is empty")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be one of {DEVICES} or 'cuda:N', got {self.device!r}")
        if self.classes is not None:
            classes = tuple(str(c) for c in self.classes)
            if not classes:
                raise ValueError("classes, when given, must name at least one class")
            object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "positive_points", _points(self.positive_points, "positive_points"))
        object.__setattr__(self, "negative_points", _points(self.negative_points, "negative_points"))
        if self.negative_points and not self.positive_points:
            raise ValueError("negative_points need at least one positive point")
        if self.box is not None:
            box = tuple(float(v) for v in self.box)
            if len(box) != 6 or not all(math.isfinite(v) for v in box) or any(a >= b for a, b in zip(box, box[3:])):
                raise ValueError(f"box must be (x1, y1, z1, x2, y2, z2) RAS mm with x1 < x2 etc., got {self.box!r}")
            if self.positive_points:
                raise ValueError("give either a box or click points, not both")
            object.__setattr__(self, "box", box)
        if not self.python:
            raise ValueError("python (the interpreter to run) is empty")

    @property
    def prompted(self) -> bool:
        """True when the request segments what the clicks (or the box) point at instead of everything."""
        return bool(self.positive_points) or self.box is not None

    @property
    def prompt_kind(self) -> str:
        """ "box", "click" or "" (automatic): also the infix of the mask file ``NAME_<kind>.nii.gz``."""
        return "box" if self.box is not None else "click" if self.positive_points else ""


def _point_text(p: Sequence[float]) -> str:
    return ",".join(repr(float(v)) for v in p)


def build_command(request: InferenceRequest) -> list[str]:
    """The argument list (no shell) that runs ``request``."""
    cmd = [str(request.python), "-m", "unimed_core.cli.infer", str(request.input_path), "--out", str(request.out_dir)]
    if request.weights is not None:
        cmd += ["--weights", str(request.weights)]
    cmd += ["--device", request.device]
    if request.classes and not request.prompted:
        cmd += ["--classes", *request.classes]
    # "--click=x,y,z" in one argument: argparse would read a separate "-60.0,..." as an option
    cmd += [f"--click={_point_text(p)}" for p in request.positive_points]
    cmd += [f"--negative-click={_point_text(p)}" for p in request.negative_points]
    if request.box is not None:
        cmd.append(f"--box={_point_text(request.box)}")
    return cmd
