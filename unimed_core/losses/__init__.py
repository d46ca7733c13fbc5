"""Losses of UniMed: mask, box, set (matcher + criterion), sequence and masked-volume-modelling terms.

Every loss returns NAMED, unweighted terms; the training objective (``unimed_core.training``) weights them.
"""

from unimed_core.losses.box_losses import bin_centers, box_bin_loss, expected_boxes, target_bins
from unimed_core.losses.mask_losses import (
    MaskSampler,
    dice_loss,
    pairwise_dice,
    pairwise_sigmoid_bce,
    point_sample,
    resize_masks,
    sigmoid_bce_loss,
    uncertain_point_coords,
)
from unimed_core.losses.matcher import HungarianMatcher, MatchIndices, aux_output
from unimed_core.losses.mvm import mvm_loss, random_volume_mask
from unimed_core.losses.sequence_loss import SequenceMaskTargets, sequence_loss, sequence_mask_targets
from unimed_core.losses.set_criterion import SetCriterion, average_count_across_processes, image_loss

__all__ = [
    "HungarianMatcher",
    "MaskSampler",
    "MatchIndices",
    "SequenceMaskTargets",
    "SetCriterion",
    "average_count_across_processes",
    "aux_output",
    "bin_centers",
    "box_bin_loss",
    "dice_loss",
    "expected_boxes",
    "image_loss",
    "mvm_loss",
    "pairwise_dice",
    "pairwise_sigmoid_bce",
    "point_sample",
    "random_volume_mask",
    "resize_masks",
    "sequence_loss",
    "sequence_mask_targets",
    "sigmoid_bce_loss",
    "target_bins",
    "uncertain_point_coords",
]
