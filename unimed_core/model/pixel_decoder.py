"""FPN-style pixel decoder: multi-scale encoder features → per-voxel embeddings ``E`` (DESIGN.md §1.1).

Every encoder level is projected to ``embed_dim`` (1×1×1 lateral convolution), then a top-down pass adds the
(nearest-neighbour) upsampled coarser level and smooths with a 3×3×3 MONAI ``Convolution`` (as in FPN and
Mask2Former's pixel decoder, without the deformable attention, which has no 3-D CPU kernel). The level at
``output_stride`` gives ``E`` through norm, GELU and a 1×1×1 convolution only: a d→d 3×3×3 convolution at stride 2
would cost more than the rest of the small model on a CPU (measured: 2.5 times the small model's training step), and
the coarser levels it merges are already smoothed; they are upsampled into it trilinearly, not blockwise. The
``num_transformer_levels`` coarsest levels feed the masked-attention decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution
from torch import nn

from unimed_core.model.checks import require_positive_ints

__all__ = ["PixelDecoder3D"]


class PixelDecoder3D(nn.Module):
    """Top-down feature pyramid over an encoder's levels.

    Args:
        in_channels: channels of each encoder level, finest first (the encoder's ``out_channels``).
        strides: stride of each level relative to the input, finest first, strictly increasing
            (the encoder's ``strides``).
        embed_dim: width d of ``E`` and of the transformer levels.
        output_stride: stride of ``E``; one of ``strides``.
        num_transformer_levels: how many of the coarsest levels go to the transformer decoder.
        norm: MONAI normalisation spec of the smoothing convolutions (group norm: batch-size independent).

    Example:
        >>> pd = PixelDecoder3D((8, 16, 32, 64), (2, 4, 8, 16), embed_dim=32)
        >>> feats = [torch.zeros(1, c, 32 // s, 32 // s, 32 // s) for c, s in zip((8, 16, 32, 64), (2, 4, 8, 16))]
        >>> E, levels = pd(feats)
        >>> tuple(E.shape), [tuple(x.shape[2:]) for x in levels]
        ((1, 32, 16, 16, 16), [(2, 2, 2), (4, 4, 4), (8, 8, 8)])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        embed_dim: int,
        output_stride: int = 2,
        num_transformer_levels: int = 3,
        norm: str | tuple = ("group", {"num_groups": 8}),
    ) -> None:
        super().__init__()
        in_channels, strides = tuple(in_channels), tuple(strides)
        for name, values in (("in_channels", in_channels), ("strides", strides)):
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {values!r}")
        if len(in_channels) != len(strides):
            raise ValueError(f"in_channels and strides must have the same length, got {in_channels} and {strides}")
        if any(b <= a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"strides must be strictly increasing (finest level first), got {strides}")
        require_positive_ints(embed_dim=embed_dim)
        if output_stride not in strides:
            raise ValueError(f"output_stride {output_stride!r} must be one of the encoder strides {strides}")
        first = strides.index(output_stride)
        if not 1 <= num_transformer_levels <= len(strides) - first:
            raise ValueError(
                f"num_transformer_levels must be in [1, {len(strides) - first}] for strides {strides} and "
                f"output_stride {output_stride}, got {num_transformer_levels!r}"
            )
        self.in_channels = in_channels
        self.strides = strides
        self.embed_dim = embed_dim
        self.output_stride = output_stride
        self._first = first  # finer encoder levels than E are not used
        self.level_strides: tuple[int, ...] = tuple(reversed(strides[-num_transformer_levels:]))  # coarse → fine
        used = range(first, len(strides))
        self.lateral = nn.ModuleList(nn.Conv3d(in_channels[i], embed_dim, kernel_size=1) for i in used)
        # The coarsest level has nothing to merge and the finest (E) is merged by 1×1 convolutions (see above):
        # the levels in between are smoothed.
        self.smooth = nn.ModuleList(
            Convolution(3, embed_dim, embed_dim, kernel_size=3, norm=norm, act="GELU") for _ in list(used)[1:-1]
        )
        self.embed_act = ADN(ordering="NA", in_channels=embed_dim, act="GELU", norm=norm, norm_dim=3)
        self.embed_out = nn.Conv3d(embed_dim, embed_dim, kernel_size=1)

    @property
    def embedding_stride(self) -> int:
        """Stride of ``E`` relative to the input."""
        return self.output_stride

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode encoder features.

        Args:
            features: the encoder's levels, finest first, channels ``in_channels``.

        Returns:
            ``E`` (B, d, D/s, H/s, W/s) at ``output_stride`` s, and the transformer levels (B, d, ·, ·, ·),
            coarsest first (strides ``level_strides``).
        """
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature levels, got {len(features)}")
        for f, c in zip(features, self.in_channels):
            if f.ndim != 5 or f.shape[1] != c:
                raise ValueError(
                    f"expected levels with channels {self.in_channels}, got {[tuple(x.shape) for x in features]}"
                )
        feats = list(features)[self._first :]
        x = self.lateral[-1](feats[-1])
        outs = [x]  # coarse → fine
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            # Nearest-neighbour upsampling, as in FPN, is several times cheaper than trilinear on a CPU, except into
            # E: E gets no smoothing convolution (see above), so nearest upsampling would leave it blocky at twice
            # its stride, and its masks with it.
            if i == 0:
                x = lat + F.interpolate(x, size=lat.shape[2:], mode="trilinear", align_corners=False)
            else:
                x = lat + F.interpolate(x, size=lat.shape[2:], mode="nearest")
            x = self.smooth[i - 1](x) if i > 0 else x
            outs.append(x)
        embeddings = self.embed_out(self.embed_act(outs[-1]))
        return embeddings, outs[: len(self.level_strides)]
