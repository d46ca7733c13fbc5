"""What the inference-time stages fitted on one network's outputs share: the network weights' sha256 they carry.

A stage fitted after the network (the lesion candidates' rescorer, the organ boundary refiner) learned *that*
network's scores. It records the sha256 of those weights as a buffer (plain bytes, so it loads with
``weights_only=True``), and the bundle uses it only with them: a fine-tuned network, MONAI Label's, or a preset's
other weights run without it, with a warning, rather than through a stage that learned another network.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from unimed_core.model.weights import WeightsError, checked_state, sha256_of

__all__ = ["digest_buffer", "digest_of", "fit_full_batch", "for_weights", "versioned_state"]

logger = logging.getLogger(__name__)


def digest_buffer(weights_sha256: str | None) -> torch.Tensor:
    """A (64,) uint8 buffer holding a hex sha256 (zeros for None)."""
    digest = (weights_sha256 or "").encode("ascii")
    if len(digest) not in (0, 64):
        raise ValueError(f"weights_sha256 must be a 64-character hex digest, got {weights_sha256!r}")
    return torch.tensor(list(digest.ljust(64, b"\0")), dtype=torch.uint8)


def digest_of(buffer: torch.Tensor) -> str | None:
    """The hex sha256 held by ``digest_buffer``'s tensor, or None."""
    return bytes(buffer.tolist()).rstrip(b"\0").decode("ascii") or None


def for_weights(stage, path: str | Path, weights: str | Path, refit: str):
    """``stage`` (loaded from ``path``; its ``fitted_for`` a sha256 or None) when it was fitted for the network
    ``weights``, else None with a warning naming ``refit``, the command that fits one."""
    digest = sha256_of(weights)
    if stage.fitted_for is not None and stage.fitted_for != digest:
        logger.warning("%s was fitted for the weights %s…, not %s (%s…): it is left out; refit it with %s",
                       path, stage.fitted_for[:12], weights, digest[:12], refit)  # fmt: skip
        return None
    return stage


def versioned_state(path: str | Path, sha256: str | None, version: int, features: str, refit: str) -> dict:
    """``checked_state(path, sha256)`` of a stage whose ``features_version`` buffer is ``version``.

    Raises:
        WeightsError: as ``checked_state``; or the file was fitted on another version of ``features`` (the columns
            meant something else then: ``refit`` names the command that fits it again), or holds no version.
    """
    state = checked_state(path, sha256)
    try:
        found = int(state["features_version"])
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"{path}: no {features} version inside ({error})") from error
    if found != version:
        raise WeightsError(f"{path}: fitted on {features} version {found}, this code computes version {version}; "
                           f"refit it ({refit})")  # fmt: skip
    return state


def fit_full_batch(module: torch.nn.Module, logits, target: torch.Tensor, epochs: int, weight_decay: float) -> None:
    """Fit ``module``'s parameters so that ``logits()`` (a closure over it and its inputs) predicts the 0/1
    ``target``: binary cross-entropy, AdamW at lr 1e-2, full batch (the stages' fits hold at most a few hundred
    thousand rows of a few features)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(logits(), target).backward()
        optimizer.step()
