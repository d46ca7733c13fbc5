"""The shared image encoders: hierarchical 3-D backbones giving multi-scale features (DESIGN.md §1.1).

Both encoders return a list of feature maps, finest first, and expose ``out_channels`` and ``strides``
(cumulative, relative to the input) so the pixel decoder can be built from them without retyping widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ResidualUnit
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

__all__ = ["ConvEncoder3D", "SwinEncoder3D"]


def _positive_ints(values: Sequence[int], name: str) -> tuple[int, ...]:
    out = tuple(values)
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {values!r}")
    return out


def _check_input(x: torch.Tensor, in_channels: int, stride: int) -> None:
    if x.ndim != 5:
        raise ValueError(f"expected an image (B, C, D, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"expected {in_channels} input channel(s), got shape {tuple(x.shape)}")
    if any(s % stride for s in x.shape[2:]):
        raise ValueError(f"spatial size must be divisible by {stride}, got shape {tuple(x.shape)}")


class ConvEncoder3D(nn.Module):
    """Residual convolutional encoder (MONAI ``ResidualUnit`` stages), the CPU-sized backbone.

    Stage ``i`` is one strided ``ResidualUnit`` from ``channels[i-1]`` to ``channels[i]`` channels.

    Args:
        in_channels: image channels.
        channels: output channels of each stage.
        strides: stride of each stage (same length as ``channels``).
        num_res_units: convolutions per residual unit (MONAI's ``subunits``), >= 1.
        norm: MONAI normalisation spec. Group norm (as MONAI's SegResNet) is independent of the batch size and,
            unlike instance norm, still defined on the 1-voxel maps a 16³ input gives at stride 16.

    Example:
        >>> enc = ConvEncoder3D(1, channels=(8, 16, 32, 64))
        >>> [f.shape[1:] for f in enc(torch.zeros(1, 1, 32, 32, 32))][-1]
        torch.Size([64, 2, 2, 2])
        >>> enc.strides
        (2, 4, 8, 16)
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 1,
        norm: str | tuple = ("group", {"num_groups": 8}),
    ) -> None:
        super().__init__()
        (in_channels,) = _positive_ints((in_channels,), "in_channels")
        channels = _positive_ints(channels, "channels")
        stage_strides = _positive_ints(strides, "strides")
        if len(channels) != len(stage_strides):
            raise ValueError(f"channels and strides must have the same length, got {channels} and {stage_strides}")
        (num_res_units,) = _positive_ints((num_res_units,), "num_res_units")
        self.in_channels = in_channels
        self.out_channels: tuple[int, ...] = channels
        cumulative, s = [], 1
        for st in stage_strides:
            s *= st
            cumulative.append(s)
        self.strides: tuple[int, ...] = tuple(cumulative)
        widths = (in_channels, *channels)
        self.stages = nn.ModuleList(
            ResidualUnit(
                spatial_dims=3,
                in_channels=widths[i],
                out_channels=widths[i + 1],
                strides=stage_strides[i],
                subunits=num_res_units,
                norm=norm,
            )
            for i in range(len(channels))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features of ``x`` (B, in_channels, D, H, W), finest first."""
        _check_input(x, self.in_channels, self.strides[-1])
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class SwinEncoder3D(nn.Module):
    """MONAI's Swin transformer (the SwinUNETR backbone) as a 4-level encoder, strides 2, 4, 8, 16.

    The patch embedding (stride 2) gives level 0; each of the three Swin stages (attention, then patch merging)
    halves the resolution and doubles the width. SwinUNETR's fourth stage (stride 32) is left out so that any
    input divisible by 16 works, like the convolutional encoder.

    Args:
        in_channels: image channels.
        feature_size: width of the patch embedding; levels have ``feature_size * (1, 2, 4, 8)`` channels.
        depths: Swin blocks in each of the three stages.
        num_heads: attention heads in each of the three stages.
        window_size: local attention window (clipped by MONAI to small feature maps).
        drop_path_rate: stochastic depth rate.
        use_checkpoint: gradient checkpointing (less memory, more compute).

    Example:
        >>> enc = SwinEncoder3D(feature_size=12, num_heads=(1, 2, 4))
        >>> enc.out_channels, enc.strides
        ((12, 24, 48, 96), (2, 4, 8, 16))
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12),
        window_size: int = 7,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        (in_channels, feature_size, window_size) = _positive_ints(
            (in_channels, feature_size, window_size), "in_channels, feature_size and window_size"
        )
        depths = _positive_ints(depths, "depths")
        num_heads = _positive_ints(num_heads, "num_heads")
        if len(depths) != 3 or len(num_heads) != 3:
            raise ValueError(f"depths and num_heads need 3 entries (one per stage), got {depths} and {num_heads}")
        for i, h in enumerate(num_heads):
            if (feature_size * 2**i) % h:
                raise ValueError(f"stage {i} width {feature_size * 2**i} is not divisible by num_heads {h}")
        self.in_channels = in_channels
        self.out_channels: tuple[int, ...] = tuple(feature_size * 2**i for i in range(4))
        self.strides: tuple[int, ...] = (2, 4, 8, 16)
        self.swin = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=(window_size,) * 3,
            patch_size=(2, 2, 2),
            depths=depths,
            num_heads=num_heads,
            drop_path_rate=drop_path_rate,
            use_checkpoint=use_checkpoint,
            spatial_dims=3,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features of ``x`` (B, in_channels, D, H, W), finest first."""
        _check_input(x, self.in_channels, self.strides[-1])
        swin = self.swin
        # SwinTransformer.forward always runs four stages; run the three we built, normalising each output
        # the way SwinUNETR does (``proj_out(normalize=True)``).
        x = swin.pos_drop(swin.patch_embed(x))
        feats = [swin.proj_out(x, normalize=True)]
        for stage in (swin.layers1[0], swin.layers2[0], swin.layers3[0]):
            x = stage(x.contiguous())
            feats.append(swin.proj_out(x, normalize=True))
        return feats
