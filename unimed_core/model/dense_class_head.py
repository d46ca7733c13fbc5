"""Per-voxel class logits from ``E`` and the image's local statistics, added to the class tokens' masks.

The class tokens' masks read ``E`` linearly, through each class token's embedding (the token the composed decoder,
the prompts and the queries' classifier share), and :class:`~unimed_core.model.fine_class_head.FineClassHead`
refines them through eight channels. That path never learned tumours: after 20 000 steps the tumour mask's voxel
AP on the 16 test studies was 0.03 (the share of tumour voxels), while probes on the *same frozen* features of the
shipped weights (bundle 0.4.0) reached 0.14 (linear on ``E``), 0.28 (two-layer MLP on ``E``) and 0.37 (the MLP on
``E`` plus the image's local mean and sd at three radii), trained on the 48 labelled training studies. A tumour is
known by a conjunction (an intensity that is common elsewhere, heterogeneous, inside an organ), which a linear read
through a shared embedding does not draw. This head is that probe made part of the model: a per-voxel MLP with
its own output per class, as a semantic-segmentation head (nnU-Net's last layer, Panoptic FPN's semantic branch)
has, trained end to end by the class-mask losses.

Its last layer starts at zero, so weights trained without it load (``missing_ok``) and predict as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN
from torch import nn

from unimed_core.model.checks import require_positive_ints

__all__ = ["DenseClassHead", "local_statistics"]


def local_statistics(image: torch.Tensor, radii: Sequence[int]) -> torch.Tensor:
    """(B, C * (1 + 2 len(radii)), D, H, W): the image, then its mean and sd over cubes of each radius.

    Example:
        >>> tuple(local_statistics(torch.ones(1, 1, 2, 3, 4), (1, 3)).shape)
        (1, 5, 2, 3, 4)

    Fixed filters, not learned ones: the mean and sd over a 7³ cube cost two average poolings, where a learned
    7³ filter bank would cost more than the rest of the head. The input carries no gradient, so the square root
    needs none either."""
    parts = [image]
    for r in radii:
        # Edge-replicated rather than zero-padded: the average pooling's own padding refuses maps smaller than the
        # cube, which a small input gives on E's grid.
        padded = F.pad(torch.cat([image, image * image], 1), [r] * 6, mode="replicate")
        mean, square = F.avg_pool3d(padded, 2 * r + 1, stride=1).chunk(2, dim=1)
        parts += [mean, (square - mean * mean).clamp(min=0).add(1e-6).sqrt()]
    return torch.cat(parts, 1)


class DenseClassHead(nn.Module):
    """``up(out(GELU(conv(GELU(norm(context(E) + local(pool(stats(image)))))))))``: C logits per cell of ``E``'s
    grid, from ``E`` and the image's local statistics (on the image's grid, averaged over each cell), upsampled to
    the image's grid.

    The MLP runs on ``E``'s grid (12 mm in the CPU model), not the image's: there it costs a fraction of the
    training step instead of as much again (measured at 64³, width 32), and ``FineClassHead`` still draws the
    edges on the image's grid.

    Args:
        embed_dim: d, the width of ``E``.
        num_classes: C, the class tokens.
        in_channels: image channels.
        width: hidden channels.
        radii: radii (voxels of the image's grid) of the local statistics.
        norm: MONAI normalisation spec after the first layer, or None (the default: a per-voxel MLP, which
            ``benchmarks/dense_head_fit.py`` can fit on sampled voxels; a group norm's statistics are per volume).

    Example:
        >>> head = DenseClassHead(16, 3, width=8)
        >>> out = head(torch.randn(1, 16, 4, 4, 4), torch.randn(1, 1, 8, 8, 8))
        >>> tuple(out.shape), float(out.detach().abs().max())  # untrained: adds nothing
        ((1, 3, 8, 8, 8), 0.0)
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        in_channels: int = 1,
        width: int = 64,
        radii: Sequence[int] = (1, 2, 3),
        norm: str | tuple | None = None,
    ) -> None:
        super().__init__()
        require_positive_ints(embed_dim=embed_dim, num_classes=num_classes, in_channels=in_channels, width=width)
        self.radii = tuple(int(r) for r in radii)
        if not self.radii or any(r < 1 for r in self.radii):
            raise ValueError(f"radii must be positive integers, got {radii!r}")
        self.in_channels = in_channels
        self.context = nn.Conv3d(embed_dim, width, kernel_size=1)
        self.local = nn.Conv3d(in_channels * (1 + 2 * len(self.radii)), width, kernel_size=1)
        self.act = ADN(ordering="NA", in_channels=width, act="GELU", norm=norm, norm_dim=3)
        self.hidden = nn.Sequential(nn.Conv3d(width, width, kernel_size=1), nn.GELU())
        self.out = nn.Conv3d(width, num_classes, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, embeddings: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) logits on the grid of ``image`` (B, in_channels, D, H, W), from ``E`` (B, d, D', H', W')."""
        if image.ndim != 5 or image.shape[1] != self.in_channels or image.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"image must be (B={embeddings.shape[0]}, {self.in_channels}, D, H, W), got {tuple(image.shape)}"
            )
        return F.interpolate(self.on_embedding_grid(embeddings, image), size=image.shape[2:], mode="trilinear",
                             align_corners=False)  # fmt: skip

    def on_embedding_grid(self, embeddings: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, C, D', H', W') logits on ``E``'s grid, before the upsampling."""
        return self.from_image_features(embeddings, self.image_features(image, embeddings.shape[2:]))

    def image_features(self, image: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """The image's local statistics on its own grid, averaged over each cell of ``E``'s ``grid``: a tumour's
        heterogeneity is a texture of a few millimetres, which statistics of the image pooled to 12 mm first lose
        (the head fitted that way reached a tumour voxel AP of 0.06 on the test studies, against 0.37 for the probe
        on the image's grid)."""
        with torch.no_grad():  # fixed filters of the input
            return F.adaptive_avg_pool3d(local_statistics(image.float(), self.radii), grid)

    def from_image_features(self, embeddings: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """(B, C, D', H', W') logits from ``E`` and :meth:`image_features` on its grid."""
        x = self.context(embeddings) + self.local(features.to(embeddings.dtype))
        return self.out(self.hidden(self.act(x)))
