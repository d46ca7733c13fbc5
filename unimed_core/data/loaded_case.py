"""One datalist item loaded onto the working grid: what augmentation changes and what targets are built from.

Its own module so that :mod:`unimed_core.data.augmentation` (which transforms it) and
:mod:`unimed_core.data.training_data` (which loads it and applies augmentation) do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LoadedCase"]


@dataclass
class LoadedCase:
    """One datalist item on the working grid; None fields are "not annotated"."""

    image: torch.Tensor  # (1, D, H, W) float32
    semantic: torch.Tensor | None  # (D, H, W) long mask ids
    boxes: np.ndarray | None  # (N, 6) voxel XYZXYZ corners on the working grid
    box_labels: np.ndarray | None  # (N,) class indices
    image_classes: list[int] | None  # class indices present (empty list: annotated, none present)
