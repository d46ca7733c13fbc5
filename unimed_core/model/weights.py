"""Safe weight files: saved atomically with a sha256 beside them, loaded only after the hash matches.

``torch.load(..., weights_only=True)`` refuses pickled code; the hash check refuses a file that was changed
or truncated after it was written (or downloaded).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from unimed_core.data.atomic import atomic_write, atomic_write_text

__all__ = ["sha256_of", "save_weights", "checked_state", "load_weights", "WeightsError"]


class WeightsError(ValueError):
    """A weight file that is missing, tampered with or does not fit the network."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(model: torch.nn.Module, path: str | Path) -> str:
    """Write ``model``'s state dict to ``path`` and its sha256 to ``path.sha256``; returns the hash.

    The same tensors give the same bytes (so the same hash) wherever they are saved: ``torch.save`` to a file names
    the zip archive's folder after the file, here the atomic write's temporary name, which differs every time; saved
    to a buffer the folder is always ``archive``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    digest = sha256_of(path)
    atomic_write_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
    return digest


def checked_state(path: str | Path, sha256: str | None = None):
    """What ``torch.save`` wrote to ``path`` (tensors only: ``weights_only=True``), once its sha256 matches ``sha256``
    or, when that is None, the ``path.sha256`` file beside it.

    Raises:
        WeightsError: missing file or hash, hash mismatch, or a file that cannot be loaded safely.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    if sha256 is None:
        sidecar = path.with_name(path.name + ".sha256")
        if not sidecar.is_file():
            raise WeightsError(f"{path}: no expected sha256 given and no {sidecar.name} beside it")
        sha256 = sidecar.read_text(encoding="utf-8").split()[0]
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise WeightsError(f"{path}: sha256 {actual} does not match the expected {sha256}; refusing to load")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, truncated zip, ...
        raise WeightsError(f"{path}: cannot load weights safely: {e}") from e


def load_weights(
    model: torch.nn.Module, path: str | Path, sha256: str | None = None, missing_ok: tuple[str, ...] = ()
) -> torch.nn.Module:
    """Load weights into ``model`` after checking their hash.

    Args:
        model: the network to fill.
        path: a file written by :func:`save_weights` (or a MONAI checkpoint dict with a ``network`` entry).
        sha256: the expected hash; when None it is read from ``path.sha256``, which must exist.
        missing_ok: prefixes of parameters the file may lack (modules added to a trained network that start as
            identities, e.g. ``FineClassHead``'s refinement units); they keep their initial values.

    Raises:
        WeightsError: missing file or hash, hash mismatch, or weights that do not fit ``model``.
    """
    path = Path(path)
    state = checked_state(path, sha256)
    if isinstance(state, dict) and "network" in state and isinstance(state["network"], dict):
        state = state["network"]
    try:
        if missing_ok:
            missing, unexpected = model.load_state_dict(state, strict=False)
            refused = [k for k in missing if not k.startswith(missing_ok)] + list(unexpected)
            if refused:
                raise RuntimeError(f"missing or unexpected keys {refused}")
        else:
            model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit this network: {e}") from e
    return model
