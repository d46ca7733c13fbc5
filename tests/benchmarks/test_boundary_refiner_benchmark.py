"""The boundary refiner benchmark's fit samples: band voxels of the organs, truths from the study's own label."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.boundary_refiner import fit_samples, organ_mask_ids
from benchmarks.learning_curve import benchmark_items
from unimed_core.inference.boundary_refiner import FEATURE_NAMES
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_tiny


def test_the_organs_are_the_mask_classes_that_are_not_lesions():
    label_map = LabelMap.default()
    assert [label_map.mask_classes[m] for m in organ_mask_ids(label_map)] == [
        "liver", "spleen", "kidney_left", "kidney_right"
    ]  # fmt: skip


def test_fit_samples_pair_each_band_voxel_with_its_truth(tmp_path):
    label_map, items = benchmark_items(tmp_path / "studies", seed=0, cases=26)
    torch.manual_seed(0)
    predictor = UniMedPredictor(unimed_tiny(label_map, max_sequence_length=32), label_map, spacing=(10.0,) * 3,
                                roi_size=(32, 32, 32), mask_threshold=0.2)  # fmt: skip
    studies = items["test"][:2]
    samples = fit_samples(predictor, studies, organ_mask_ids(label_map), spacing=8.0)
    assert samples, "the untrained network should claim some organ at threshold 0.2"
    for features, truth in samples.values():
        assert features.shape == (len(truth), len(FEATURE_NAMES)) and truth.dtype == bool
        assert np.isfinite(features).all()
