"""Per-sample training targets, with whatever annotation a sample has (DESIGN.md §1.4, §4).

A missing field means "not annotated", never "negative": a sample with only image labels has
``instance_labels is None`` and contributes no set loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Target", "target_to"]


@dataclass
class Target:
    """Annotations of one training patch, in the patch's voxel space.

    Attributes:
        semantic: (D, H, W) long label volume with ``LabelMap`` mask ids, or None (no mask annotation).
        instance_labels: (K,) long class indices (``LabelMap.class_names`` order) of the annotated objects,
            or None when the sample has neither masks nor boxes. Organs are one object per class
            (semantic); lesions are one object per connected component / box.
        instance_masks: (K, D, H, W) bool masks of those objects, or None (boxes-only annotation).
        instance_boxes: (K, 6) float boxes normalised to [0, 1] by the patch size, MONAI ``XYZXYZ``
            corner mode in array axis order, or None.
        image_labels: (C,) float multi-hot over ``LabelMap.class_names`` (only the image-class entries are
            meaningful), or None (no image-level annotation).
        annotated_classes: (A,) long class indices that the object annotation covers, or None when it covers
            every class (a full mask). A boxes-only sample covers only the box classes: an organ that is present
            but unannotated is then not taught as "no object".
        sequences: token-id sequences (1-D long tensors) this sample's annotations encode to, one per task
            present (CLS / DET / SEG), built by the tokenizer; empty when nothing is annotated.
    """

    semantic: torch.Tensor | None = None
    instance_labels: torch.Tensor | None = None
    instance_masks: torch.Tensor | None = None
    instance_boxes: torch.Tensor | None = None
    image_labels: torch.Tensor | None = None
    sequences: tuple[torch.Tensor, ...] = ()
    annotated_classes: torch.Tensor | None = None

    @property
    def has_mask(self) -> bool:
        return self.semantic is not None

    @property
    def has_objects(self) -> bool:
        return self.instance_labels is not None

    @property
    def has_image_labels(self) -> bool:
        return self.image_labels is not None


def target_to(target: Target, device: torch.device | str) -> Target:
    """A copy of ``target`` with every tensor on ``device`` (absent fields stay None)."""

    def move(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(device, non_blocking=True)

    return Target(
        semantic=move(target.semantic),
        instance_labels=move(target.instance_labels),
        instance_masks=move(target.instance_masks),
        instance_boxes=move(target.instance_boxes),
        image_labels=move(target.image_labels),
        sequences=tuple(s.to(device, non_blocking=True) for s in target.sequences),
        annotated_classes=move(target.annotated_classes),
    )
