"""How unsure the model is about a volume, for each task, and which annotation level would help most.

Three terms, each a normalised entropy in [0, 1] (1: the model cannot tell at all), from one pass of the
decomposed decoder over the volume with MONAI's sliding-window inferer (as ``UniMedPredictor.predict``):

- ``mask``: per voxel, the distribution over background and the K mask classes — class scores
  ``sum_q p_q(c) sigmoid(mask_q)`` (Mask2Former's semantic inference) with background ``1 - max score``,
  normalised to sum 1 — its entropy divided by ``log(K + 1)``, averaged over the working grid;
- ``boxes``: per latent query, the binary entropy of its detection score (its highest box-class
  probability) divided by ``log 2``, averaged over queries and windows;
- ``class``: per image class, the binary entropy of the volume's probability (the most confident window,
  as the predictor reports it) divided by ``log 2``, averaged over image classes.

``combined`` is their mean. The suggested next annotation level is the one whose term stands out most for
this image relative to the other candidates: ``argmax_level term(image) / mean term(candidates)``; ties go to
the cheaper level (image label, then boxes, then mask).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from monai.inferers import sliding_window_inference

__all__ = ["Uncertainty", "volume_uncertainty", "suggest_levels", "rank", "SCORE_KEY"]

# Where the scores live in the datastore's image info.
SCORE_KEY = "unimed_uncertainty"
_LEVELS = ("class", "boxes", "mask")  # cheapest first
_EPS = 1e-6


@dataclass
class Uncertainty:
    """Normalised entropies in [0, 1] of one volume (see the module docstring)."""

    mask: float
    boxes: float
    image: float

    @property
    def combined(self) -> float:
        return (self.mask + self.boxes + self.image) / 3.0

    def terms(self) -> dict[str, float]:
        """Level name → term (the annotation level that would supervise it)."""
        return {"class": self.image, "boxes": self.boxes, "mask": self.mask}

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "combined": self.combined}


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(_EPS, 1 - _EPS)
    return -(p * p.log() + (1 - p) * (1 - p).log()) / math.log(2.0)


@torch.no_grad()
def volume_uncertainty(predictor, volume) -> Uncertainty:
    """The three uncertainty terms of ``volume`` under ``predictor``'s model.

    Args:
        predictor: a ``unimed_core.inference.predictor.UniMedPredictor`` (its model, label map, grid and
            sliding-window settings are used).
        volume: a ``unimed_core.data.image_io.Volume``.
    """
    model, label_map = predictor.model, predictor.label_map
    mask_classes = list(range(label_map.num_mask_classes - 1))  # class index i is mask id i + 1
    box_classes = label_map.box_class_indices()
    image_classes = label_map.image_class_indices()
    box_entropies: list[torch.Tensor] = []
    image_probs: list[torch.Tensor] = []

    def run_window(patch: torch.Tensor) -> torch.Tensor:
        embeddings, levels = model.encode(patch)
        out = model.decode(embeddings, levels)
        latent = out.layout.latent
        cls = out.class_logits[:, latent].float().softmax(-1)
        masks = out.mask_logits[:, latent].float().sigmoid()
        box_entropies.append(_binary_entropy(cls[..., box_classes].max(-1).values).flatten().cpu())
        image_probs.append(out.image_logits[:, image_classes].float().sigmoid().cpu())
        return torch.einsum("bnk,bndhw->bkdhw", cls[..., mask_classes], masks)

    prepared = predictor.prepare(volume)
    scores = sliding_window_inference(
        prepared.image[None].to(predictor.device),
        predictor.roi_size,
        sw_batch_size=1,
        predictor=run_window,
        overlap=predictor.overlap,
        mode="gaussian",
        cval=float(prepared.image.min()),  # air, as the predictor and training pad a study smaller than the window
        sw_device=predictor.device,
        device="cpu",
    )[0].clamp(0, 1)
    background = 1 - scores.max(0, keepdim=True).values
    dist = torch.cat([background, scores]).clamp_min(_EPS)
    dist = dist / dist.sum(0, keepdim=True)
    voxel_entropy = -(dist * dist.log()).sum(0) / math.log(dist.shape[0])
    volume_probs = torch.cat(image_probs).max(0).values
    return Uncertainty(
        mask=float(voxel_entropy.mean()),
        boxes=float(torch.cat(box_entropies).mean()),
        image=float(_binary_entropy(volume_probs).mean()) if len(image_classes) else 0.0,
    )


def suggest_levels(scores: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """Image id → the annotation level ("class", "boxes" or "mask") that would help most for that image.

    Args:
        scores: image id → ``{"class": ..., "boxes": ..., "mask": ...}`` (``Uncertainty.terms()``) of every
            candidate image; each term is compared with its mean over the candidates.
    """
    if not scores:
        return {}
    means = {level: sum(s[level] for s in scores.values()) / len(scores) for level in _LEVELS}
    out = {}
    for image_id, terms in scores.items():
        relative = [(terms[level] / max(means[level], _EPS), -i) for i, level in enumerate(_LEVELS)]
        out[image_id] = _LEVELS[-max(relative)[1]]
    return out


def rank(scores: Mapping[str, float], exclude: Sequence[str] = ()) -> list[str]:
    """Image ids by decreasing combined uncertainty (ties by id, so the order is deterministic)."""
    return sorted((i for i in scores if i not in set(exclude)), key=lambda i: (-scores[i], i))
