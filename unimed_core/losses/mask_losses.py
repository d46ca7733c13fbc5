"""Sigmoid BCE and Dice on masks predicted at the embedding grid (batched and pairwise).

The decoder predicts mask logits at the grid of the per-voxel embeddings ``E`` (a stride of the input patch),
while ground-truth masks live on the patch grid. :class:`MaskSampler` turns both into matching ``(M, P)``
vectors in one of two ways:

- ``num_points=None`` (dense, the default): the ground truth is resized to the prediction grid with *area*
  interpolation (``F.interpolate(mode="area")``, i.e. average pooling). Each target cell becomes the fraction of
  its voxels inside the object — a soft target in ``[0, 1]``. We prefer this to nearest-neighbour resizing,
  which silently drops objects thinner than the stride and flips boundary cells at random, and to upsampling
  the logits to the patch grid, which costs stride³ more memory and time (1.6 s per 100 masks per step on the
  CPU, measured). The price: an object smaller than a cell gets a target below 0.5 everywhere, so its boundary
  is only known to within a cell; the point-sampled mode below keeps it.
- ``num_points=P`` (Mask2Former's point sampling): P points per mask, sampled trilinearly in both the logits
  and the full-resolution target. For the loss the points are importance-sampled where the prediction is
  uncertain (``oversample_ratio``, ``importance_sample_ratio``, as in Mask2Former's
  ``get_uncertain_point_coords_with_randomness``); for matching they are uniform and shared by all masks of
  a sample, so the pairwise costs compare like with like.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unimed_core.model.position import sample_points

__all__ = [
    "MaskSampler",
    "resize_masks",
    "point_sample",
    "uncertain_point_coords",
    "sigmoid_bce_loss",
    "balanced_bce_loss",
    "dice_loss",
    "pairwise_sigmoid_bce",
    "pairwise_dice",
]


def resize_masks(masks: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Resize (M, D, H, W) masks (bool or float) to ``size`` as soft float targets (area interpolation).

    Args:
        masks: (M, D, H, W) masks on the patch grid.
        size: the target grid (D', H', W').

    Returns:
        (M, D', H', W') float masks in [0, 1]; the input unchanged (as float) when the grids already agree.
    """
    if masks.ndim != 4:
        raise ValueError(f"masks must be (M, D, H, W), got shape {tuple(masks.shape)}")
    m = masks.float()
    if tuple(m.shape[-3:]) == tuple(size):
        return m
    if m.shape[0] == 0:
        return m.new_zeros((0, *size))
    return F.interpolate(m[:, None], size=tuple(size), mode="area")[:, 0]


def point_sample(volumes: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample (M, D, H, W) volumes trilinearly at (M, P, 3) normalised coordinates in [0, 1] (array axis order).

    Args:
        volumes: (M, D, H, W) float volumes (logits or masks).
        coords: (M, P, 3) points, axis order (d, h, w), 0 and 1 the outer edges of the volume.

    Returns:
        (M, P) sampled values.
    """
    return sample_points(volumes[:, None], coords)[:, 0]


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mask2Former's uncertainty-based point sampling, in 3-D.

    Over-samples ``oversample_ratio * num_points`` random points, keeps the ``importance_sample_ratio`` share
    with the least confident logits (closest to 0) and fills the rest with fresh uniform points.

    Args:
        logits: (M, D', H', W') mask logits.
        num_points: points per mask.
        oversample_ratio: over-sampling factor, >= 1.
        importance_sample_ratio: share of points chosen by uncertainty, in [0, 1].
        generator: random generator (CPU), for reproducibility.

    Returns:
        (M, num_points, 3) coordinates in [0, 1].
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError("need oversample_ratio >= 1 and importance_sample_ratio in [0, 1]")
    m = logits.shape[0]
    n_over = int(num_points * oversample_ratio)
    coords = torch.rand(m, n_over, 3, generator=generator).to(logits.device)
    with torch.no_grad():
        uncertainty = -point_sample(logits.detach(), coords).abs()
    n_imp = int(importance_sample_ratio * num_points)
    n_rand = num_points - n_imp
    idx = torch.topk(uncertainty, k=n_imp, dim=1).indices
    picked = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 3))
    if n_rand > 0:
        extra = torch.rand(m, n_rand, 3, generator=generator).to(logits.device)
        picked = torch.cat([picked, extra], dim=1)
    return picked


class MaskSampler:
    """Turns (M, D', H', W') logits and (M, D, H, W) targets into comparable (M, P) vectors.

    Args:
        num_points: None for the dense embedding grid (area-resized soft targets), else points per mask.
        oversample_ratio: point mode, loss only: over-sampling factor of the uncertainty sampling.
        importance_sample_ratio: point mode, loss only: share of points picked by uncertainty.

    Example:
        >>> s = MaskSampler()
        >>> logits, targets = s.for_loss(torch.zeros(2, 4, 4, 4), torch.ones(2, 8, 8, 8, dtype=torch.bool))
        >>> tuple(logits.shape), float(targets.mean())
        ((2, 64), 1.0)
    """

    def __init__(
        self, num_points: int | None = None, oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75
    ) -> None:
        if num_points is not None and (isinstance(num_points, bool) or int(num_points) < 1):
            raise ValueError(f"num_points must be None or a positive integer, got {num_points!r}")
        if oversample_ratio < 1:
            raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
        if not 0 <= importance_sample_ratio <= 1:
            raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
        self.num_points = None if num_points is None else int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)

    def for_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paired logits and targets, one row per mask: (M, P) and (M, P)."""
        if logits.shape[0] != targets.shape[0]:
            raise ValueError(f"{logits.shape[0]} predicted masks but {targets.shape[0]} targets")
        if self.num_points is None:
            t = resize_masks(targets, tuple(logits.shape[-3:])).to(logits.device)
            return logits.flatten(1), t.flatten(1)
        coords = uncertain_point_coords(
            logits, self.num_points, self.oversample_ratio, self.importance_sample_ratio, generator
        )
        t = point_sample(targets.float().to(logits.device), coords)
        return point_sample(logits, coords), t

    def for_matching(
        self, logits: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpaired (N, P) logits and (K, P) targets sampled at the same places, for pairwise costs."""
        if self.num_points is None:
            t = resize_masks(targets, tuple(logits.shape[-3:])).to(logits.device)
            return logits.flatten(1), t.flatten(1)
        coords = torch.rand(1, self.num_points, 3, generator=generator).to(logits.device)
        p = point_sample(logits, coords.expand(logits.shape[0], -1, -1))
        t = point_sample(targets.float().to(logits.device), coords.expand(targets.shape[0], -1, -1))
        return p, t


def sigmoid_bce_loss(
    logits: torch.Tensor, targets: torch.Tensor, num_masks: float | torch.Tensor, max_pos_weight: float = 1.0
) -> torch.Tensor:
    """Per-mask mean BCE, summed over masks and divided by ``num_masks``.

    Args:
        logits: (M, P) logits.
        targets: (M, P) targets in [0, 1] (soft allowed).
        num_masks: normaliser (the number of objects, possibly summed over processes).
        max_pos_weight: > 1 weighs each mask's foreground by ``sqrt(background / foreground)`` up to this value.
            A 2 cm lesion is a few cells of a 32³ grid: unweighted, its foreground is 1e-4 of the mean and the
            mask learns "never" first; the square root (rather than the full ratio) keeps organ masks from
            swelling.
    """
    t = targets.to(logits.dtype)
    pos_weight = None
    if max_pos_weight > 1.0:
        fg = t.sum(1, keepdim=True)
        ratio = ((t.shape[1] - fg) / fg.clamp(min=1.0)).sqrt()
        pos_weight = ratio.clamp(1.0, max_pos_weight).detach()
    loss = F.binary_cross_entropy_with_logits(logits, t, reduction="none", pos_weight=pos_weight)
    return loss.mean(1).sum() / num_masks


def balanced_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over masks of ``(BCE over the foreground + BCE over the background) / 2``, each a mean over its voxels
    (soft targets weigh each voxel by ``t`` and ``1 - t``).

    A lesion is 1e-4 to 1e-3 of a study's voxels: the foreground weight of ``sigmoid_bce_loss`` is capped (organs
    swell without the cap), so there the few lesion voxels stay outweighed by the many that are not, and a lesion
    kind whose voxels look like common tissue is never learned (tumours: voxel AP at the share of tumour voxels
    after 20 000 steps). Balanced, the two halves weigh alike, as in a probe trained on as many voxels of each.

    Args:
        logits: (M, P) logits of masks whose targets are not empty.
        targets: (M, P) targets in [0, 1].

    Example:
        >>> t = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        >>> round(float(balanced_bce_loss(torch.tensor([[0.0, -9.0, -9.0, -9.0]]), t)), 3)  # log(2) / 2
        0.347
    """
    t = targets.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    fg = (loss * t).sum(1) / t.sum(1).clamp(min=1e-6)
    bg = (loss * (1 - t)).sum(1) / (1 - t).sum(1).clamp(min=1e-6)
    return ((fg + bg) / 2).mean()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float | torch.Tensor) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 p·t + 1) / (Σp + Σt + 1)`` per mask, summed and divided by ``num_masks``.

    Args:
        logits: (M, P) logits.
        targets: (M, P) targets in [0, 1].
        num_masks: normaliser.
    """
    p = logits.sigmoid()
    t = targets.to(p.dtype)
    num = 2 * (p * t).sum(-1)
    den = p.sum(-1) + t.sum(-1)
    return (1 - (num + 1) / (den + 1)).sum() / num_masks


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, K) mean BCE of every prediction (N, P) against every target (K, P), via two matrix products."""
    p = logits.shape[1]
    t = targets.to(logits.dtype)
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ t.T + neg @ (1 - t).T) / p


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, K) Dice loss of every prediction (N, P) against every target (K, P)."""
    p = logits.sigmoid()
    t = targets.to(p.dtype)
    num = 2 * p @ t.T
    den = p.sum(-1)[:, None] + t.sum(-1)[None, :]
    return 1 - (num + 1) / (den + 1)
