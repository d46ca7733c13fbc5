"""Organ boundaries decided a second time, voxel by voxel, from the network's score and the study's own intensities.

Organ Dice stayed near 0.89 however long the network trained, and the errors are where a boundary can be wrong:
on the tuning studies 96-99 % of the wrong organ voxels lie within one 4 mm voxel of the true boundary, as many
outside the organ as inside (liver, spleen, kidneys predicted at 0.93-1.03 of their volumes). In that band the
network's score separates organ from not-organ no better than the voxel's intensity does (AUC 0.74-0.81 for both),
and the two disagree: the score is the network's view through its 6 mm grid, the intensity is the scan's, read
against *this* study's organ (its median and spread inside the predicted organ's core, so CT's units, MR's arbitrary
scale and a contrast phase all drop out). Reading both is what classical refinements of a CNN's segmentation do with
an intensity model fitted to the current mask (GrabCut-like unaries, the dense CRF after DeepMedic); here the rule
is learned rather than hand-set.

``band_features`` gives, for each voxel of the band around one organ's predicted mask (one voxel either side, on a
refinement grid of fixed spacing): the score's logit, the voxel's signed and absolute contrast to the organ at
three smoothings, and the highest other class's score. ``BoundaryRefiner`` holds one small MLP per organ over them;
its probability replaces the organ's score in the band (``refine``), and the label volume is then decided and
restored to the input grid as before (``UniMedPredictor``). Fitted by ``benchmarks/boundary_refiner.py`` on
generated studies the network never trained on; it records the network weights' sha256 and is used only with them
(``fitted_stage``). Lesion classes are left alone: they are candidates of the detection path, scored there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from unimed_core.inference.fitted_stage import digest_buffer, digest_of, fit_full_batch, for_weights, versioned_state
from unimed_core.model.checks import require_positive_ints
from unimed_core.model.weights import WeightsError, save_weights

__all__ = ["BoundaryRefiner", "FEATURE_NAMES", "band_features", "bundle_boundary_refiner", "fit_boundary_refiner",
           "load_boundary_refiner", "save_boundary_refiner"]  # fmt: skip

# Bumped whenever band_features changes what a column means: a refiner fitted on other columns is refused.
FEATURES_VERSION = 1
FEATURE_NAMES = ("score_logit", "contrast", "contrast_smoothed", "contrast_smoother", "abs_contrast",
                 "abs_contrast_smoothed", "abs_contrast_smoother", "other_score")  # fmt: skip
SMOOTHING = (0.7, 1.2)  # Gaussian sigmas, refinement-grid voxels: the smoothed contrasts average the noise out
MIN_ORGAN_VOXELS = 10  # a smaller predicted organ has no reliable median intensity: left as the network drew it
MAX_CONTRAST = 20.0  # robust z-scores beyond this (air, bone against soft tissue) say nothing more
MARGIN = 6  # voxels around the organ's box: the band plus the smoothing's reach


def band_features(
    image: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, mask_id: int
) -> tuple[tuple[slice, ...], np.ndarray, torch.Tensor] | None:
    """Features of the voxels in the band around ``mask_id``'s predicted mask (one voxel either side of its
    boundary, 6-connected), columns as ``FEATURE_NAMES``.

    Args:
        image: (D, H, W) normalised intensities on the refinement grid.
        scores: (K, D, H, W) class scores in [0, 1] there (class index ``mask_id - 1``).
        labels: (D, H, W) mask ids decided from ``scores``.
        mask_id: the organ's mask id.

    Returns:
        (box, band, features): the slices of the organ's box (with a margin) in the volume, the (box-shaped) band
        mask and its (N, F) features; None when the organ has fewer than ``MIN_ORGAN_VOXELS`` voxels.
    """
    organ = (labels == mask_id).numpy()
    if organ.sum() < MIN_ORGAN_VOXELS:
        return None
    extent = ndimage.find_objects(organ.astype(np.uint8))[0]
    box = tuple(slice(max(int(i.start) - MARGIN, 0), int(i.stop) + MARGIN) for i in extent)
    organ, image_box = organ[box], image.numpy()[box].astype(np.float32)
    scores_box = scores[(slice(None), *box)].numpy().astype(np.float32)
    core = ndimage.binary_erosion(organ)
    inside = image_box[core if core.sum() >= MIN_ORGAN_VOXELS else organ]
    reference = float(np.median(inside))
    spread = 1.4826 * float(np.median(np.abs(inside - reference))) + 1e-3  # the median absolute deviation as an sd
    band = ndimage.binary_dilation(organ) & ~core
    contrasts = [image_box] + [ndimage.gaussian_filter(image_box, s) for s in SMOOTHING]
    signed = [np.clip((c[band] - reference) / spread, -MAX_CONTRAST, MAX_CONTRAST) for c in contrasts]
    own = np.clip(scores_box[mask_id - 1][band], 1e-4, 1 - 1e-4)
    other = np.delete(scores_box, mask_id - 1, axis=0).max(0)[band] if len(scores_box) > 1 else np.zeros_like(own)
    columns = [np.log(own / (1 - own)), *signed, *(np.abs(s) for s in signed), other]
    return box, band, torch.from_numpy(np.stack(columns, -1).astype(np.float32))


class BoundaryRefiner(nn.Module):
    """One small MLP per organ: the probability that a band voxel belongs to the organ, from ``band_features``.

    Args:
        mask_ids: the organs' mask ids, one MLP each.
        spacing: the refinement grid's spacing in mm (the features are in its voxels).
        hidden: width of each MLP's hidden layer.
        weights_sha256: sha256 of the network weights whose scores it was fitted on.

    Example:
        >>> refiner = BoundaryRefiner([1, 2], spacing=4.0, hidden=4)
        >>> tuple(refiner(torch.zeros(3, len(FEATURE_NAMES)), 2).shape)
        (3,)
    """

    def __init__(
        self, mask_ids: Sequence[int], spacing: float = 4.0, hidden: int = 16, weights_sha256: str | None = None
    ) -> None:
        super().__init__()
        require_positive_ints(hidden=hidden, organs=len(mask_ids))
        require_positive_ints(**{f"mask_ids[{i}]": int(m) for i, m in enumerate(mask_ids)})
        if not np.isfinite(spacing) or spacing <= 0:
            raise ValueError(f"spacing must be a positive number of mm, got {spacing}")
        features = len(FEATURE_NAMES)
        self.register_buffer("mask_ids", torch.tensor([int(i) for i in mask_ids], dtype=torch.long))
        self.register_buffer("spacing", torch.tensor(float(spacing)))
        self.register_buffer("mean", torch.zeros(len(mask_ids), features))
        self.register_buffer("sd", torch.ones(len(mask_ids), features))
        self.register_buffer("features_version", torch.tensor(FEATURES_VERSION))
        self.register_buffer("weights_sha256", digest_buffer(weights_sha256))
        self.members = nn.ModuleList(
            nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, 1)) for _ in mask_ids
        )

    @property
    def fitted_for(self) -> str | None:
        """The sha256 of the network weights it was fitted for, or None."""
        return digest_of(self.weights_sha256)

    @property
    def grid_spacing(self) -> tuple[float, float, float]:
        return (float(self.spacing),) * 3

    def _slot(self, mask_id: int) -> int:
        found = (self.mask_ids == int(mask_id)).nonzero()
        if not len(found):
            raise ValueError(f"no boundary model for mask id {mask_id}; this refiner has {self.mask_ids.tolist()}")
        return int(found[0])

    def logits(self, features: torch.Tensor, mask_id: int) -> torch.Tensor:
        """(N,) logits of (N, F) band features of the organ ``mask_id``."""
        if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"features must be (N, {len(FEATURE_NAMES)}), got {tuple(features.shape)}")
        slot = self._slot(mask_id)
        return self.members[slot]((features.float() - self.mean[slot]) / self.sd[slot]).squeeze(-1)

    def forward(self, features: torch.Tensor, mask_id: int) -> torch.Tensor:
        """(N,) probabilities that band voxels of these (N, F) features belong to the organ ``mask_id``."""
        return self.logits(features, mask_id).sigmoid()

    @torch.no_grad()
    def refine(self, image: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(K, D, H, W) scores whose organ channels hold, in each organ's band, the refiner's probability instead
        of the network's score (``band_features``' arguments; every organ's band is read from the same
        ``labels``, so the organs' order does not matter)."""
        refined = scores.clone()
        for mask_id in self.mask_ids.tolist():
            if mask_id - 1 >= len(scores):
                continue
            found = band_features(image, scores, labels, mask_id)
            if found is None:
                continue
            box, band, features = found
            channel = refined[mask_id - 1][box]  # a view: writing it writes ``refined``
            channel[torch.from_numpy(band)] = self(features, mask_id).to(channel.dtype)
        return refined


def fit_boundary_refiner(
    samples: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    spacing: float,
    hidden: int = 16,
    epochs: int = 300,
    weight_decay: float = 1e-3,
    seed: int = 0,
    weights_sha256: str | None = None,
) -> BoundaryRefiner:
    """A refiner fitted to ``samples``: per organ mask id, (N, F) band features and (N,) 0/1 truths (the voxel is
    the organ), from the refinement grid of ``spacing`` mm, for the network weights ``weights_sha256``. Each
    organ's MLP: binary cross-entropy, AdamW, full batch."""
    if not samples:
        raise ValueError("samples must hold at least one organ's band voxels")
    torch.manual_seed(seed)
    refiner = BoundaryRefiner(sorted(samples), spacing, hidden, weights_sha256)
    for slot, mask_id in enumerate(refiner.mask_ids.tolist()):
        features, truth = samples[mask_id]
        if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES) or len(features) != len(truth):
            raise ValueError(f"mask id {mask_id}: features must be (N, {len(FEATURE_NAMES)}) and truths (N,), got "
                             f"{tuple(features.shape)}, {tuple(truth.shape)}")  # fmt: skip
        if not 0 < float(truth.float().mean()) < 1:
            raise ValueError(f"mask id {mask_id}: the band must hold voxels of the organ and voxels outside it")
        refiner.mean[slot] = features.mean(0)
        refiner.sd[slot] = features.std(0).clamp(min=1e-3)
        logits = lambda: refiner.logits(features, mask_id)  # noqa: E731, B023 (used within this iteration)
        fit_full_batch(refiner.members[slot], logits, truth.float(), epochs, weight_decay)
    return refiner.eval()


def save_boundary_refiner(refiner: BoundaryRefiner, path: str | Path) -> str:
    """Write the refiner's tensors to ``path`` and their sha256 beside it (as network weights are); returns the
    hash."""
    return save_weights(refiner, path)


def load_boundary_refiner(path: str | Path, sha256: str | None = None) -> BoundaryRefiner:
    """The refiner saved at ``path``, after its hash matches ``sha256`` (or the ``path.sha256`` file).

    Raises:
        WeightsError: missing file or hash, hash mismatch, or tensors of another feature version.
    """
    state = versioned_state(path, sha256, FEATURES_VERSION, "band features", "benchmarks/boundary_refiner.py")
    try:
        refiner = BoundaryRefiner(state["mask_ids"].tolist(), float(state["spacing"]),
                                  int(state["members.0.0.weight"].shape[0]))  # fmt: skip
        refiner.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise WeightsError(f"{path}: not a boundary refiner ({error})") from error
    return refiner.eval()


def bundle_boundary_refiner(path: str | Path | None, weights: str | Path) -> BoundaryRefiner | None:
    """The bundle's refiner for the network ``weights``: None when ``path`` is None, and None with a warning when
    it was fitted for other weights (the organs are then drawn from the network's scores alone)."""
    if path is None:
        return None
    return for_weights(load_boundary_refiner(path), path, weights, "benchmarks/boundary_refiner.py")
