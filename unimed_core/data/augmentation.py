"""Random training augmentation of a loaded case: a small rotation and scaling, an intensity scale and shift, and
(off by default) a cut of the field of view.

A few dozen annotated studies, seen the same way every epoch, are learned by heart long before they are learned
(DESIGN.md §4 trains on whatever a dataset has); a slightly different pose and contrast per draw lets them count
for more. The changes stay within what scanners and patients vary by, and keep every annotation valid:

- **No mirroring.** A left-right flip turns a left kidney into a right one and moves the liver to the left, an
  anatomy the model should not learn as normal; a flip of the other axes puts the spine in front.
- **Spatial changes only where the annotation follows them.** A mask is resampled with the image (nearest
  neighbour); boxes are then read from the mask, as ``build_target`` does anyway. A case whose only annotation
  is boxes keeps its pose (rotated boxes would no longer be tight), and image labels stay valid under a small
  rotation about the centre of a study.

- **Fields of view that cut the body** (``field_of_view_cut``, a probability). Generated studies show the whole body
  with air around it, and at 6 mm one 64³ patch holds all of it, so the model only ever saw bodies whole and
  centred; on a study whose field of view cuts the body it lost much of the spleen (Dice 0.34 on a 224 mm study).
  A cut keeps a random box of each axis's ``min_field_of_view`` fraction or more; the patch crop then frames it
  with air, as the sliding window pads a small study. Only a case with a mask is cut (the mask says which findings
  are left, so its image labels are read from it again), and unlabelled ones; a case with boxes or image labels
  only keeps its field of view.

MONAI's ``Affine`` does the resampling; the parameters are drawn here from the dataset's per-draw generator, so
a draw stays reproducible (``UniMedTrainingDataset``'s seed, epoch and index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from monai.transforms import Affine

from unimed_core.data.loaded_case import LoadedCase

__all__ = ["Augmentation", "DEFAULT_AUGMENTATION"]


@dataclass(frozen=True)
class Augmentation:
    """Draws and applies one random augmentation per call.

    Args:
        max_rotation_deg: each axis is rotated by up to this many degrees either way.
        max_scale: each axis is scaled by a factor in ``[1 - max_scale, 1 + max_scale]``.
        intensity_scale: intensities are multiplied by a factor in ``[1 - s, 1 + s]``.
        intensity_shift: then shifted by up to this much either way (the working range is [-1, 1]).
        field_of_view_cut: probability that a case with a mask (or none at all) is cut to a smaller field of view.
        min_field_of_view: the smallest fraction of each axis (working-grid voxels) a cut keeps.

    Example:
        >>> from unimed_core.data.loaded_case import LoadedCase
        >>> case = LoadedCase(torch.zeros(1, 8, 8, 8), None, None, None, None)
        >>> Augmentation()(case, np.random.default_rng(0)).image.shape
        torch.Size([1, 8, 8, 8])
    """

    max_rotation_deg: float = 10.0
    max_scale: float = 0.1
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    field_of_view_cut: float = 0.0
    min_field_of_view: tuple[float, float, float] = (0.5, 0.5, 0.4)

    def __post_init__(self) -> None:
        checks = {
            "max_rotation_deg": 0 <= self.max_rotation_deg <= 45,
            "max_scale": 0 <= self.max_scale < 0.5,
            "intensity_scale": 0 <= self.intensity_scale < 1,
            "intensity_shift": 0 <= self.intensity_shift <= 1,
            "field_of_view_cut": 0 <= self.field_of_view_cut <= 1,
            "min_field_of_view": len(self.min_field_of_view) == 3 and all(0 < f <= 1 for f in self.min_field_of_view),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} out of range: {getattr(self, name)!r}")

    def __call__(self, case: LoadedCase, rng: np.random.Generator) -> LoadedCase:
        image, semantic = case.image, case.semantic
        # Draw every parameter whether used or not, so a case's later draws do not depend on its annotation.
        angles = rng.uniform(-1, 1, size=3) * math.radians(self.max_rotation_deg)
        scales = 1 + rng.uniform(-1, 1, size=3) * self.max_scale
        gain = 1 + rng.uniform(-1, 1) * self.intensity_scale
        offset = rng.uniform(-1, 1) * self.intensity_shift
        box_only = case.boxes is not None and semantic is None
        if not box_only and (self.max_rotation_deg > 0 or self.max_scale > 0):
            warp = Affine(rotate_params=angles.tolist(), scale_params=scales.tolist(), image_only=True)
            # Border padding: what comes into view at the edges is the air already there, not zeros (mid-grey).
            image = warp(image, mode="bilinear", padding_mode="border").as_subclass(torch.Tensor)
            if semantic is not None:
                warped = warp(semantic[None].float(), mode="nearest", padding_mode="zeros")
                semantic = warped[0].as_subclass(torch.Tensor).round().long()
        image = image.float() * float(gain) + float(offset)
        boxes = None if semantic is not None else case.boxes  # a mask's boxes are read from the warped mask
        box_labels = None if boxes is None else case.box_labels
        case = replace(case, image=image, semantic=semantic, boxes=boxes, box_labels=box_labels)
        # Drawn only when cuts are on, so that runs without them draw exactly what they drew before.
        return self._cut_field_of_view(case, rng) if self.field_of_view_cut > 0 else case

    def _cut_field_of_view(self, case: LoadedCase, rng: np.random.Generator) -> LoadedCase:
        cut = rng.uniform() < self.field_of_view_cut
        fractions = rng.uniform(np.asarray(self.min_field_of_view), 1.0)
        starts = rng.uniform(size=3)
        unlabelled = case.semantic is None and case.boxes is None and case.image_classes is None
        if not cut or (case.semantic is None and not unlabelled):
            return case
        shape = np.asarray(case.image.shape[1:])
        size = np.maximum(1, np.round(shape * fractions)).astype(int)
        first = np.floor(starts * (shape - size + 1)).astype(int)
        window = tuple(slice(int(a), int(a + n)) for a, n in zip(first, size))
        semantic = None if case.semantic is None else case.semantic[window]
        # the mask, not the labels given for the whole image, says which findings the cut still shows
        return replace(case, image=case.image[(slice(None), *window)], semantic=semantic, image_classes=None)


# The training default of every loader (frozen, so one shared instance is safe as a default argument).
DEFAULT_AUGMENTATION = Augmentation()
