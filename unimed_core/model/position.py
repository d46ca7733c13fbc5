"""Fourier (sine/cosine) positional encodings of *normalised* 3-D coordinates.

Feature maps and prompt points are encoded in the same space, coordinates in ``[0, 1]`` of the input patch,
so any input size divisible by the encoder's stride works and a click's encoding matches the encoding of the
voxels it falls on. Frequencies are geometric from 1 to ``max_frequency`` cycles per patch: with the default 64
the finest wavelength is two of the default 128 coordinate bins, precise enough to tell neighbouring clicks
apart (the temperature-10000 scheme of DETR/Mask2Former spends most channels on wavelengths longer than the
patch when coordinates are normalised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FourierEncoding", "sample_points", "voxel_centres"]


def voxel_centres(
    spatial_shape: Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised centres ``(i + 0.5) / n`` of every voxel of a grid, in array axis order.

    Args:
        spatial_shape: the grid size ``(D, H, W)``.
        device: device of the result.
        dtype: floating dtype of the result.

    Returns:
        (D, H, W, 3) coordinates in ``(0, 1)``.
    """
    axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) / n for n in spatial_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def sample_points(volumes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of (N, C, D, H, W) volumes at (N, P, 3) normalised points (array axis order) → (N, C, P).

    ``0`` and ``1`` are the outer edges of the grid (``align_corners=False``), so a point ``(i + 0.5) / n`` falls
    on voxel ``i``'s centre, as :func:`voxel_centres` and the prompt tokens put it. Sampled in float32.
    """
    # grid_sample wants (x, y, z) = (w, h, d) in [-1, 1].
    grid = points.flip(-1).mul(2.0).sub(1.0)[:, :, None, None].to(volumes.device, torch.float32)  # (N, P, 1, 1, 3)
    return torch.nn.functional.grid_sample(volumes.float(), grid, align_corners=False)[..., 0, 0]


class FourierEncoding(nn.Module):
    """Sine/cosine features of normalised coordinates, ``dim`` channels for ``num_axes`` axes.

    Each axis gets ``ceil(dim / (2 * num_axes))`` frequencies (a sine and a cosine each); the concatenation is
    cut to ``dim`` channels. Parameter-free (frequencies are a buffer), so it works at any grid size.

    Args:
        dim: output channels, >= 2.
        num_axes: number of coordinate axes A (3 for voxel positions, 1 for one coordinate).
        max_frequency: highest frequency in cycles per unit length (per patch), > 0.

    Example:
        >>> enc = FourierEncoding(64)
        >>> enc(torch.rand(5, 3)).shape
        torch.Size([5, 64])
        >>> enc.grid((4, 6, 8)).shape
        torch.Size([64, 4, 6, 8])
    """

    def __init__(self, dim: int, num_axes: int = 3, max_frequency: float = 64.0) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
        if isinstance(num_axes, bool) or not isinstance(num_axes, int) or num_axes < 1:
            raise ValueError(f"num_axes must be an integer >= 1, got {num_axes!r}")
        if not max_frequency > 0:
            raise ValueError(f"max_frequency must be > 0, got {max_frequency!r}")
        self.dim = dim
        self.num_axes = num_axes
        n = math.ceil(dim / (2 * num_axes))
        freqs = float(max_frequency) ** torch.linspace(0.0, 1.0, n) if n > 1 else torch.ones(1)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode coordinates.

        Args:
            coords: (..., A) coordinates in ``[0, 1]``, A = ``num_axes``.

        Returns:
            (..., dim) features.
        """
        if coords.shape[-1] != self.num_axes:
            raise ValueError(f"expected coordinates with {self.num_axes} axes last, got shape {tuple(coords.shape)}")
        # float32 at least: angles reach 2π·max_frequency rad, far beyond bf16 / fp16 precision.
        coords = coords.float() if coords.dtype in (torch.float16, torch.bfloat16) else coords
        angles = 2 * math.pi * coords.unsqueeze(-1) * self.freqs.to(coords.dtype)  # (..., A, F)
        feats = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., A * 2F)
        return feats[..., : self.dim]

    def grid(self, spatial_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(dim, D, H, W) encoding of the voxel centres of a feature map of size ``spatial_shape``."""
        if len(spatial_shape) != self.num_axes:
            raise ValueError(f"spatial_shape must have {self.num_axes} sizes, got {tuple(spatial_shape)}")
        return self(voxel_centres(spatial_shape, device=self.freqs.device, dtype=dtype)).movedim(-1, 0)
