"""The one loaded UniMed model that every task of the app shares, and where its weights live.

The served weights are the fine-tuned file ``MODEL_DIR/unimed.pt`` once a training run has swapped one in,
else the initial weights (the bundle's ``models/model.pt`` unless the app's ``weights`` conf says otherwise).
Both are loaded only through ``unimed_core.model.weights.load_weights`` (sha256 beside the file checked,
``weights_only`` unpickling). Training runs in another process (MONAI Label starts one per run); it replaces
the file atomically, and the next request here sees the new hash and reloads.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from unimed_core.model.weights import WeightsError

__all__ = ["ServiceConfig", "ModelService", "SERVED_NAME", "replace_weights"]

logger = logging.getLogger(__name__)

SERVED_NAME = "unimed.pt"


@dataclass(frozen=True)
class ServiceConfig:
    """Where the weights are and where the model runs.

    Args:
        initial_weights: weights served until a training run swaps fine-tuned ones in (sha256 beside it).
        model_dir: where training writes ``unimed.pt`` (+ ``.sha256``) and its stats.
        device: "cpu", "cuda", "cuda:1" or "auto".
        variant: the model factory, "small" or "base" (must match the weights).
    """

    initial_weights: Path
    model_dir: Path
    device: str = "auto"
    variant: str = "small"

    def __post_init__(self) -> None:
        if self.variant not in ("small", "base"):
            raise ValueError(f"variant must be 'small' or 'base', got {self.variant!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")

    @classmethod
    def from_conf(cls, conf: dict, app_dir: str | Path) -> ServiceConfig:
        """From ``monailabel start_server --conf KEY VALUE`` pairs: ``weights``, ``model_dir``, ``device``,
        ``variant``; defaults: the bundle's weights, ``APP_DIR/model``, auto, small."""
        from unimed_core.paths import DEFAULT_WEIGHTS

        return cls(
            initial_weights=Path(conf.get("weights", DEFAULT_WEIGHTS)).resolve(),
            model_dir=Path(conf.get("model_dir", Path(app_dir) / "model")).resolve(),
            device=str(conf.get("device", "auto")),
            variant=str(conf.get("variant", "small")),
        )

    @property
    def served_path(self) -> Path:
        """The fine-tuned weights when a training run has produced them, else the initial weights."""
        tuned = self.model_dir / SERVED_NAME
        return tuned if tuned.is_file() else self.initial_weights

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def _sidecar_hash(path: Path) -> str | None:
    sidecar = path.with_name(path.name + ".sha256")
    try:
        return sidecar.read_text(encoding="utf-8").split()[0].lower()
    except (OSError, IndexError):
        return None


class ModelService:
    """Lazily loads the predictor and reloads it when the served weights change.

    Args:
        config: see :class:`ServiceConfig`.
        predictor_kwargs: passed to ``unimed_core.cli.infer.build_predictor`` (e.g. ``score_threshold``).
    """

    def __init__(self, config: ServiceConfig, **predictor_kwargs) -> None:
        self.config = config
        self.predictor_kwargs = predictor_kwargs
        self._lock = threading.Lock()
        self._predictor = None
        self._loaded: tuple[Path, str] | None = None

    def weights_hash(self) -> str | None:
        """sha256 of the weights that would be served now (from the file beside them)."""
        return _sidecar_hash(self.config.served_path)

    def predictor(self):
        """The predictor on the current weights; reloads (hash-checked) when they changed since last time.

        Raises:
            WeightsError: no usable weights at all (the message says where they were looked for).
        """
        from unimed_core.cli.infer import build_predictor

        with self._lock:
            path = self.config.served_path
            wanted = (path, _sidecar_hash(path) or "")
            if self._predictor is None or wanted != self._loaded:
                try:
                    predictor = build_predictor(
                        path, self.config.resolved_device(), self.config.variant, **self.predictor_kwargs
                    )
                except WeightsError:
                    if self._predictor is None:
                        raise
                    # e.g. caught between the two renames of a swap: keep serving, retry on the next request
                    logger.warning("could not load %s yet; serving the previous weights", path, exc_info=True)
                    return self._predictor
                self._predictor, self._loaded = predictor, wanted
                logger.info("UniMed weights loaded: %s (sha256 %s)", path, wanted[1])
            return self._predictor

    def loaded_hash(self) -> str | None:
        """sha256 of the weights the current predictor was built from (None before the first load)."""
        return self._loaded[1] if self._loaded else None


def replace_weights(tmp: Path, final: Path) -> None:
    """Move ``tmp`` (+ its ``.sha256``) over ``final`` with two atomic renames: weights first, so a reader that
    sees the new hash always finds the new weights."""
    os.replace(tmp, final)
    os.replace(tmp.with_name(tmp.name + ".sha256"), final.with_name(final.name + ".sha256"))
