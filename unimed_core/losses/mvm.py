"""Masked volume modelling: hide random 3-D patches, reconstruct them (DESIGN.md §1.4's unsupervised term).

Every volume, labelled or not, contributes: the network sees the input with the patches of ``volume_mask``
hidden and reconstructs the whole volume; the loss looks only at the hidden voxels (as in MAE / SimMIM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["random_volume_mask", "mvm_loss"]


def random_volume_mask(
    shape: Sequence[int],
    patch_size: int | Sequence[int] = 8,
    ratio: float = 0.4,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random cubic patches to hide: ``round(ratio * n)`` of the n patches of each sample.

    Args:
        shape: (B, C, D, H, W) of the image (C is ignored; the mask has one channel).
        patch_size: edge of a patch in voxels (an int, or one per spatial axis); edge patches are cropped.
        ratio: share of patches hidden per sample, in [0, 1).
        generator: random generator (CPU), so the mask is reproducible.
        device: where the mask is returned.

    Returns:
        (B, 1, D, H, W) bool, True on hidden voxels.

    Example:
        >>> m = random_volume_mask((2, 1, 16, 16, 16), patch_size=8, ratio=0.5, generator=torch.Generator().manual_seed(0))
        >>> tuple(m.shape), float(m.float().mean())
        ((2, 1, 16, 16, 16), 0.5)
    """
    if len(shape) != 5:
        raise ValueError(f"shape must be (B, C, D, H, W), got {tuple(shape)}")
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    sizes = [int(patch_size)] * 3 if isinstance(patch_size, int) else [int(p) for p in patch_size]
    if len(sizes) != 3 or any(p < 1 for p in sizes):
        raise ValueError(f"patch_size must be a positive int or 3 positive ints, got {patch_size!r}")
    b, _, *spatial = (int(s) for s in shape)
    grid = [math.ceil(s / p) for s, p in zip(spatial, sizes)]
    n = grid[0] * grid[1] * grid[2]
    k = round(ratio * n)
    # A random permutation per sample; its first k patches are hidden (exactly k, not a Bernoulli count).
    order = torch.rand(b, n, generator=generator).argsort(dim=1)
    hidden = torch.zeros(b, n, dtype=torch.bool)
    hidden.scatter_(1, order[:, :k], True)
    mask = hidden.view(b, 1, *grid)
    for axis, p in enumerate(sizes):
        mask = mask.repeat_interleave(p, dim=2 + axis)
    mask = mask[:, :, : spatial[0], : spatial[1], : spatial[2]]
    return mask.contiguous().to(device) if device is not None else mask.contiguous()


def mvm_loss(
    reconstruction: torch.Tensor, image: torch.Tensor, volume_mask: torch.Tensor, kind: str = "mse"
) -> dict[str, torch.Tensor]:
    """``{"loss_mvm": mean error over hidden voxels}``; ``{}`` when no voxel is hidden.

    Args:
        reconstruction: (B, C, D, H, W) the network's reconstruction.
        image: (B, C, D, H, W) the unmasked input.
        volume_mask: (B, 1, D, H, W) bool, True on hidden voxels (broadcast over channels).
        kind: ``"mse"`` or ``"smooth_l1"``.
    """
    if reconstruction.shape != image.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and image {tuple(image.shape)} differ")
    if volume_mask.ndim != 5 or volume_mask.shape[0] != image.shape[0] or volume_mask.shape[2:] != image.shape[2:]:
        raise ValueError(f"volume_mask must be (B, 1, D, H, W) like the image, got {tuple(volume_mask.shape)}")
    if kind == "mse":
        err = F.mse_loss(reconstruction.float(), image.float(), reduction="none")
    elif kind == "smooth_l1":
        err = F.smooth_l1_loss(reconstruction.float(), image.float(), reduction="none")
    else:
        raise ValueError(f"kind must be 'mse' or 'smooth_l1', got {kind!r}")
    weight = volume_mask.to(err.device).expand_as(err).float()
    total = weight.sum()
    if total == 0:
        return {}
    return {"loss_mvm": (err * weight).sum() / total}
