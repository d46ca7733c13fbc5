"""Class-token masks on the working grid itself, not on the grid of ``E`` (half of it).

The class tokens' masks (``UniMed.class_masks``) are the model's per-voxel class map: the label volume, the
components that become lesion boxes and the image labels all read them. On ``E``'s grid (12 mm on the CPU's 6 mm
working grid) a perfect mask of the generated lesions reaches only Dice 0.36-0.38, and 36 % of the lesions have no
cell more than half inside, so their area targets never reach 0.5 (``benchmarks/results/learning_ablations.md``).
Moving ``E`` itself to the working grid cost 7 times the training step on a CPU (64 channels at 64³). This head
adds what the working grid has and ``E`` has not, cheaply:

``fine_c = up(coarse_c) + w_c · F``, ``F = MLP(GELU(norm(stem(image) + up(lateral(E)))))``, ``w_c = W · emb(c)``

- ``up`` is trilinear; ``stem`` one 3×3×3 convolution of the image (its own voxels: where an edge is), ``lateral``
  a 1×1×1 projection of ``E`` (what is around), both ``width`` channels (8: measured, 16 cost 2.5 times as much per step for this head);
- ``refine_units`` optional residual units (two 3×3×3 convolutions each) on ``F`` at the image grid: the single
  stem convolution sees 18 mm, less than the smallest generated lesion is across, and the training studies' kidney
  and spleen lesions stay unfit after 11 520 steps (their class logits -6 to -12 inside them). Each unit's last
  convolution starts at zero, so a head with units returns what the head without them returns, and weights
  trained without them continue (``load_weights(..., missing_ok=("fine_class_head.refine",))``);
- each class's fine weights come from its own token embedding (the vocabulary's class token stays the query, as
  in ``class_masks``), through one linear map initialised to zero: an untrained head returns the coarse masks
  upsampled, so it can only add to what ``E`` knows.

The targets of the class-mask loss are then the label volume on the working grid itself (no area averaging).
Mask2Former samples points to make fine masks cheap; here the whole grid costs less than the point sampling's
bookkeeping at 64³ (a few million logits), so the loss stays dense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution
from torch import nn

from unimed_core.model.checks import require_positive_ints

__all__ = ["FineClassHead"]


class FineClassHead(nn.Module):
    """Refines (B, K, D', H', W') mask logits of K hidden states to the image's own grid.

    Args:
        embed_dim: d, the width of ``E`` and of the hidden states.
        in_channels: image channels.
        width: channels of the fine features ``F``.
        norm: MONAI normalisation spec (group norm: batch-size independent).
        refine_units: residual units on ``F`` at the image grid (0: none, the head as first trained).

    Example:
        >>> head = FineClassHead(16, width=8)
        >>> coarse = torch.zeros(1, 3, 4, 4, 4)
        >>> fine = head(coarse, torch.zeros(1, 3, 16), torch.zeros(1, 16, 4, 4, 4), torch.zeros(1, 1, 8, 8, 8))
        >>> tuple(fine.shape), float(fine.abs().max())  # untrained: the coarse logits, upsampled
        ((1, 3, 8, 8, 8), 0.0)
    """

    def __init__(
        self,
        embed_dim: int,
        in_channels: int = 1,
        width: int = 8,
        norm: str | tuple = ("group", {"num_groups": 4}),
        refine_units: int = 0,
    ) -> None:
        super().__init__()
        require_positive_ints(embed_dim=embed_dim, in_channels=in_channels, width=width)
        if refine_units < 0:
            raise ValueError(f"refine_units must be >= 0, got {refine_units}")
        self.embed_dim, self.in_channels, self.width = embed_dim, in_channels, width
        self.stem = nn.Conv3d(in_channels, width, kernel_size=3, padding=1)
        self.lateral = nn.Conv3d(embed_dim, width, kernel_size=1)
        self.fuse = ADN(ordering="NA", in_channels=width, act="GELU", norm=norm, norm_dim=3)
        self.mlp = Convolution(3, width, width, kernel_size=1, act="GELU", norm=None)
        self.refine = nn.ModuleList(_zero_residual_unit(width, norm) for _ in range(refine_units))
        self.weights = nn.Linear(embed_dim, width)
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)

    def features(self, embeddings: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``F`` (B, width, D, H, W) on the image's grid."""
        size = image.shape[2:]
        lateral = F.interpolate(self.lateral(embeddings), size=size, mode="trilinear", align_corners=False)
        features = self.mlp(self.fuse(self.stem(image) + lateral))
        for unit in self.refine:
            features = features + unit(features)
        return features

    def forward(
        self, coarse_logits: torch.Tensor, hidden: torch.Tensor, embeddings: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """(B, K, D, H, W) fine logits from coarse (B, K, D', H', W') logits of hidden (B, K, d) states on ``E``
        (B, d, D', H', W'), and the image (B, C, D, H, W) they were computed from."""
        if image.ndim != 5 or image.shape[1] != self.in_channels or image.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"image must be (B={embeddings.shape[0]}, {self.in_channels}, D, H, W), got {tuple(image.shape)}"
            )
        if coarse_logits.shape[:2] != hidden.shape[:2] or hidden.shape[-1] != self.embed_dim:
            raise ValueError(
                f"coarse_logits (B, K, ...) {tuple(coarse_logits.shape)} and hidden (B, K, {self.embed_dim}) "
                f"{tuple(hidden.shape)} disagree"
            )
        up = F.interpolate(coarse_logits, size=image.shape[2:], mode="trilinear", align_corners=False)
        delta = torch.einsum("bkc,bcdhw->bkdhw", self.weights(hidden), self.features(embeddings, image))
        return up + delta


def _zero_residual_unit(width: int, norm) -> nn.Sequential:
    """conv → norm → GELU → conv, the last convolution zero: the unit adds nothing until it is trained."""
    unit = nn.Sequential(
        Convolution(3, width, width, kernel_size=3, act="GELU", norm=norm, adn_ordering="NDA"),
        nn.Conv3d(width, width, kernel_size=3, padding=1),
    )
    nn.init.zeros_(unit[1].weight)
    nn.init.zeros_(unit[1].bias)
    return unit
