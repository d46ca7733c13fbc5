"""Image-level evidence from the class tokens' masks: a finding's image label agrees with its mask.

The image query alone has to find a 2 cm lesion in a 40 cm field of view by attention over the coarsest levels,
from one binary label per image; in the CPU benchmark it never did (image-label AUC 0.44). A class is present in
an image where its mask is, so the image logit also reads the class token's own mask: the mean of its ``k``
highest voxel logits (multiple-instance pooling, robust to a single noisy voxel), scaled and shifted per class.
Trained through the image-label loss, this also gives images with only image labels a (weak) say in the masks.
"""

from __future__ import annotations

import torch
from torch import nn

from unimed_core.model.checks import require_positive_ints

__all__ = ["ImageEvidence"]


class ImageEvidence(nn.Module):
    """``image_logits + scale_c * topk_mean(class_mask_logits_c) + shift_c`` per class.

    Args:
        num_classes: C, the class tokens.
        k: voxels pooled per class (on the grid of ``E``).

    Example:
        >>> fuse = ImageEvidence(3, k=2)
        >>> tuple(fuse(torch.zeros(1, 3), torch.zeros(1, 3, 4, 4, 4)).shape)
        (1, 3)
    """

    def __init__(self, num_classes: int, k: int = 8) -> None:
        super().__init__()
        require_positive_ints(num_classes=num_classes, k=k)
        self.k = k
        self.scale = nn.Parameter(torch.ones(num_classes))
        self.shift = nn.Parameter(torch.zeros(num_classes))

    def forward(self, image_logits: torch.Tensor, class_mask_logits: torch.Tensor) -> torch.Tensor:
        """(B, C) fused logits from the image query's (B, C) and the class masks' (B, C, D, H, W) logits."""
        if class_mask_logits.ndim != 5 or class_mask_logits.shape[:2] != image_logits.shape:
            raise ValueError(
                f"class_mask_logits must be (B, C, D, H, W) with (B, C) = {tuple(image_logits.shape)}, got "
                f"{tuple(class_mask_logits.shape)}"
            )
        flat = class_mask_logits.flatten(2).float()
        pooled = flat.topk(min(self.k, flat.shape[-1]), dim=-1).values.mean(-1)
        return image_logits + (self.scale * pooled + self.shift).to(image_logits.dtype)
