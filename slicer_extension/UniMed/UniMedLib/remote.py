"""Inference on a MONAI Label server instead of a local subprocess.

Uses ``monailabel.client.MONAILabelClient`` (MONAI Label's own client) when it is installed. The server's
answer is written into ``out_dir`` under the same names as ``unimed-infer``'s outputs, so the Logic loads both
the same way (:func:`~UniMedLib.results.read_outputs`).

Request parameters sent with the image: ``classes`` (label-map names), ``foreground`` / ``background``
(click prompts), ``roi`` (a box prompt, ``[x1, y1, z1, x2, y2, z2]``) and ``coordinates`` ("RAS mm": points and
boxes are world coordinates, not voxel indices). Result parameters read back when present: ``detections`` (as in
``NAME_boxes.json``), ``probabilities`` and ``warnings`` (stored as ``summary.json``, as ``unimed-infer`` does).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .command import InferenceRequest
from .results import LABEL_SUFFIXES, InferenceOutputs, read_outputs

__all__ = ["DEFAULT_MODEL", "make_client", "remote_infer", "request_params"]

DEFAULT_MODEL = "unimed"


def make_client(server_url: str):
    """A ``MONAILabelClient`` for ``server_url``; ImportError naming the package when MONAI Label is missing."""
    if not server_url.startswith(("http://", "https://")):
        raise ValueError(f"server URL must start with http:// or https://, got {server_url!r}")
    try:
        from monailabel.client import MONAILabelClient
    except ImportError as e:
        raise ImportError("MONAI Label server mode needs the 'monailabel' package (pip install monailabel)") from e
    return MONAILabelClient(server_url)


def request_params(request: InferenceRequest) -> dict[str, Any]:
    """The ``params`` of the MONAI Label infer call for ``request``."""
    params: dict[str, Any] = {"coordinates": "RAS mm", "device": request.device}
    if request.classes:
        params["classes"] = list(request.classes)
    if request.box is not None:
        params["roi"] = list(request.box)
    elif request.prompted:
        params["foreground"] = [list(p) for p in request.positive_points]
        params["background"] = [list(p) for p in request.negative_points]
    return params


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(LABEL_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: the server returned a label file of an unknown type")


def remote_infer(
    request: InferenceRequest, name: str, server_url: str = "", model: str = DEFAULT_MODEL, client=None
) -> InferenceOutputs:
    """Send ``request.input_path`` to the server, store its answer in ``request.out_dir`` and read it back.

    Args:
        request: what to run (its ``python`` and ``weights`` are ignored: the server has its own model).
        name: case name the outputs are named after.
        server_url: MONAI Label server, e.g. ``http://127.0.0.1:8000`` (unused when ``client`` is given).
        model: the server's model name.
        client: an object with MONAILabelClient's ``infer(model, image_in, params, file=...)`` (for tests).
    """
    client = client or make_client(server_url)
    label_file, result = client.infer(model, "", request_params(request), file=str(request.input_path))
    if not label_file:
        raise ValueError(f"the server returned no label volume for {request.input_path}")
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label_file = Path(label_file)
    kind = request.prompt_kind or "seg"
    suffix = _suffix(label_file)
    shutil.copyfile(label_file, out_dir / f"{name}_{kind}{suffix}")
    result = json.loads(result) if isinstance(result, str) else (result or {})
    if "detections" in result:
        doc = {"coordinates": "world millimetres, RAS", "detections": result["detections"]}
        (out_dir / f"{name}_boxes.json").write_text(json.dumps(doc), encoding="utf-8")
    if "probabilities" in result:
        doc = {"probabilities": result["probabilities"]}
        (out_dir / f"{name}_classes.json").write_text(json.dumps(doc), encoding="utf-8")
    summary = [{"input": str(request.input_path), "warnings": result.get("warnings", [])}]
    (out_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return read_outputs(out_dir, name)
