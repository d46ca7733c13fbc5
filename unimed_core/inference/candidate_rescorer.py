"""False-positive reduction: a second look at each lesion candidate before it is scored for the user.

Lesion candidates on the "segmentation" detection path are the connected components of a box class's score map,
scored by their peak. The peak alone ranks them poorly: on the learning benchmark a tumour study's true tumour often
peaks lower than another study's false one (bundle 0.5.0: tumour AP@0.1 0.31-0.34). Detection systems built for
exactly this add a false-positive reduction stage over the candidates (the LUNA16 challenge's second track; the
candidate classifiers of CAD systems), which reads what the first stage's peak does not: the candidate's size and
shape, how much of its box it fills, its contrast against its surroundings, which organ surrounds it, how strongly
the other lesion class claims it, and the image-level probabilities.

``candidate_features`` turns a candidate into those numbers on the working grid (so they do not depend on the
scan's voxel size) and from normalised intensities (so they do not depend on the modality's units);
``CandidateRescorer`` is a mean of a few small MLPs over them (standardised inside the module; the members differ by
their initialisation, which alone moved a single fit's test mAP by ±0.04) whose output replaces the peak as the
candidate's score. It is fitted by ``benchmarks/candidate_rescorer.py`` on generated studies the network never
trained on, at one component threshold, which the rescorer records and the predictor checks.
A small network rather than gradient boosting (which did as well on the same candidates): its weights are plain
tensors, loaded with ``torch.load(..., weights_only=True)`` behind a hash like the network's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unimed_core.inference.fitted_stage import digest_buffer, digest_of, fit_full_batch, for_weights, versioned_state
from unimed_core.model.checks import require_positive_ints
from unimed_core.model.weights import WeightsError, save_weights

__all__ = ["CandidateRescorer", "bundle_rescorer", "candidate_features", "feature_names", "fit_rescorer",
           "load_rescorer", "save_rescorer"]  # fmt: skip


# Bumped whenever candidate_features changes what a column means: a rescorer fitted on other columns is refused.
FEATURES_VERSION = 1


def feature_names(mask_class_names: Sequence[str], box_classes: Sequence[int]) -> list[str]:
    """Column names of ``candidate_features`` for a label map's foreground mask classes (class index order) and
    its box classes (class indices)."""
    boxes = [mask_class_names[c] for c in box_classes]
    return (["peak", "log_voxels", "log_box_voxels", "fill", "elongation", "mean_score", "image_mean", "image_sd",
             "surround_mean", "surround_sd", "contrast", "surround_background", "rank", "log_candidates"]
            + [f"is_{n}" for n in boxes] + [f"mean_score_{n}" for n in boxes]
            + [f"surround_{n}" for n in mask_class_names] + [f"image_probability_{n}" for n in boxes])  # fmt: skip


def candidate_features(
    boxes: torch.Tensor,
    peaks: torch.Tensor,
    classes: torch.Tensor,
    scores: torch.Tensor,
    image: torch.Tensor,
    box_classes: Sequence[int],
    threshold: float,
    labels: torch.Tensor,
    image_probabilities: Sequence[float],
) -> torch.Tensor:
    """(N, F) features of N candidates, columns as ``feature_names``.

    Args:
        boxes: (N, 6) working-grid voxel boxes (corner convention, as ``_component_boxes`` gives them).
        peaks: (N,) each candidate's highest class score.
        classes: (N,) class index of each candidate (one of ``box_classes``).
        scores: (K, D, H, W) per-class scores in [0, 1] on the working grid (K foreground mask classes).
        image: (D, H, W) normalised intensities on the working grid.
        box_classes: class indices of the lesion classes.
        threshold: the component threshold the candidates were found at (their region is the box's voxels whose
            own class score reaches it).
        labels: (D, H, W) the label volume on the working grid (0 background, class index + 1 elsewhere; the
            predictor's ``_labels_from_scores``), for the organ that surrounds a candidate.
        image_probabilities: the image-level probability of each box class, in ``box_classes`` order.
    """
    n, k = len(boxes), scores.shape[0]
    width = 14 + 3 * len(box_classes) + k
    if n == 0:
        return torch.zeros((0, width))
    shape = torch.tensor(scores.shape[1:])
    rows = []
    for j in range(n):
        lo = boxes[j, :3].long().clamp(min=0)
        hi = torch.maximum(boxes[j, 3:].long().clamp(max=shape), lo + 1)
        extent = (hi - lo).float()
        inner = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        pad = torch.clamp(torch.div(hi - lo, 2, rounding_mode="floor"), min=2)
        outer_lo, outer_hi = (lo - pad).clamp(min=0), torch.minimum(hi + pad, shape)
        outer = tuple(slice(int(a), int(b)) for a, b in zip(outer_lo, outer_hi))
        surround = torch.ones([int(b - a) for a, b in zip(outer_lo, outer_hi)], dtype=torch.bool)
        surround[tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(lo, hi, outer_lo))] = False
        c = int(classes[j])
        region = scores[c][inner] >= threshold
        if not region.any():  # a box whose region lies outside it cannot happen for a component; be safe
            region = torch.ones_like(region)
        inside = image[inner][region]
        around = image[outer][surround] if surround.any() else image[inner].flatten()
        around_labels = labels[outer][surround] if surround.any() else labels[inner].flatten()
        surround_shares = torch.bincount(around_labels.flatten(), minlength=k + 1).float() / around_labels.numel()
        voxels = float(region.sum())
        rank = int((peaks[classes == c] > peaks[j]).sum())
        rows.append(
            [float(peaks[j]), np.log(voxels), float(torch.log(extent.prod())), voxels / float(extent.prod()),
             float(extent.max() / extent.min()), float(scores[c][inner][region].mean()), float(inside.mean()),
             float(inside.std(unbiased=False)), float(around.mean()), float(around.std(unbiased=False)),
             float((inside.mean() - around.mean()) / around.std(unbiased=False).clamp(min=1e-3)),
             float(surround_shares[0]), rank, np.log(n)]
            + [float(c == b) for b in box_classes]
            + [float(scores[b][inner][region].mean()) for b in box_classes]
            + surround_shares[1:].tolist()
            + [float(p) for p in image_probabilities]
        )  # fmt: skip
    return torch.tensor(rows, dtype=torch.float32)


class CandidateRescorer(nn.Module):
    """Probability that a lesion candidate is a true lesion of its class, from ``candidate_features``: the mean of
    ``members`` one-hidden-layer MLPs.

    Args:
        num_features: F, the feature columns.
        hidden: width of each member's hidden layer.
        members: how many MLPs are averaged.
        component_threshold: the component threshold the candidates it was fitted on were found at.
        weights_sha256: the sha256 of the network weights whose candidates it was fitted on (its features include
            that network's scores, so it belongs to those weights); None: not recorded.

    Example:
        >>> rescorer = CandidateRescorer(5, hidden=4, members=2, component_threshold=0.1)
        >>> tuple(rescorer(torch.zeros(3, 5)).shape)
        (3,)
    """

    def __init__(
        self,
        num_features: int,
        hidden: int = 16,
        members: int = 5,
        component_threshold: float = 0.1,
        weights_sha256: str | None = None,
    ) -> None:
        super().__init__()
        require_positive_ints(num_features=num_features, hidden=hidden, members=members)
        if not 0.0 < component_threshold <= 1.0:
            raise ValueError(f"component_threshold must be in (0, 1], got {component_threshold}")
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("sd", torch.ones(num_features))
        self.register_buffer("component_threshold", torch.tensor(float(component_threshold)))
        self.register_buffer("features_version", torch.tensor(FEATURES_VERSION))
        self.register_buffer("weights_sha256", digest_buffer(weights_sha256))
        self.members = nn.ModuleList(
            nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Linear(hidden, 1)) for _ in range(members)
        )

    @property
    def num_features(self) -> int:
        return int(self.mean.numel())

    @property
    def fitted_for(self) -> str | None:
        """The sha256 of the network weights it was fitted for, or None."""
        return digest_of(self.weights_sha256)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) probabilities of (N, F) features."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features must be (N, {self.num_features}), got {tuple(features.shape)}")
        x = (features.float() - self.mean) / self.sd
        return torch.stack([member(x).squeeze(-1).sigmoid() for member in self.members]).mean(0)


def fit_rescorer(
    features: torch.Tensor,
    hits: torch.Tensor,
    component_threshold: float,
    hidden: int = 16,
    members: int = 5,
    weight_decay: float = 0.1,
    epochs: int = 600,
    seed: int = 0,
    weights_sha256: str | None = None,
) -> CandidateRescorer:
    """A rescorer fitted to (N, F) ``features`` and (N,) 0/1 ``hits`` of the network weights ``weights_sha256``:
    each member on all candidates (binary cross-entropy, AdamW, full batch: a few thousand candidates at most),
    from its own initialisation. The defaults were chosen on the tuning studies (``benchmarks/candidate_rescorer.py``;
    width 16 and 32 tied within 0.01 mAP, the smaller kept)."""
    if features.ndim != 2 or len(features) != len(hits) or len(hits) == 0:
        raise ValueError(
            f"features must be (N, F) and hits (N,), N > 0, got {tuple(features.shape)}, {tuple(hits.shape)}"
        )
    if not 0 < float(hits.float().mean()) < 1:
        raise ValueError("hits must hold both true and false candidates to fit a rescorer")
    torch.manual_seed(seed)
    rescorer = CandidateRescorer(features.shape[1], hidden, members, component_threshold, weights_sha256)
    rescorer.mean.copy_(features.mean(0))
    rescorer.sd.copy_(features.std(0).clamp(min=1e-3))
    x, target = (features - rescorer.mean) / rescorer.sd, hits.float()
    for member in rescorer.members:
        fit_full_batch(member, lambda: member(x).squeeze(-1), target, epochs, weight_decay)  # noqa: B023 (called now)
    return rescorer.eval()


def save_rescorer(rescorer: CandidateRescorer, path: str | Path) -> str:
    """Write the rescorer's tensors to ``path`` and their sha256 to ``path.sha256`` (as network weights are);
    returns the hash."""
    return save_weights(rescorer, path)


def load_rescorer(path: str | Path, sha256: str | None = None) -> CandidateRescorer:
    """The rescorer saved at ``path``, after its hash matches ``sha256`` (or the ``path.sha256`` file).

    Raises:
        WeightsError: missing file or hash, hash mismatch, or tensors of another feature version.
    """
    state = versioned_state(path, sha256, FEATURES_VERSION, "candidate features", "benchmarks/candidate_rescorer.py")
    try:
        hidden, num_features = state["members.0.0.weight"].shape
        members = len({k.split(".")[1] for k in state if k.startswith("members.")})
        rescorer = CandidateRescorer(num_features, hidden, members, float(state["component_threshold"]))
        rescorer.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError) as error:
        raise WeightsError(f"{path}: not a candidate rescorer ({error})") from error
    return rescorer.eval()


def bundle_rescorer(path: str | Path | None, weights: str | Path) -> CandidateRescorer | None:
    """The bundle's rescorer for the network ``weights``: None when ``path`` is None, and None with a warning when
    the rescorer was fitted for other weights (a fine-tuned network's candidates are then scored by their peaks,
    rather than by a stage that learned another network's scores: ``fitted_stage.for_weights``)."""
    if path is None:
        return None
    return for_weights(load_rescorer(path), path, weights, "benchmarks/candidate_rescorer.py")
