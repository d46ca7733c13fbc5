"""Masks at the scan's resolution (DESIGN.md §5, issue 19): scores go to the input grid, the label is taken there.

A generated CT study at 1 x 1 x 2 mm and the bundle's 6 mm working grid. "Perfect" working-grid scores are built
from the ground truth (each class's mask smoothed over about one working voxel, sampled at the working voxel centres), so the restoration is tested apart from any weights; one run with the shipped weights checks the
predictor's own path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from scipy import ndimage

from unimed_core.data.image_io import Volume
from unimed_core.data.preprocess import prepare_image, resample_label_to, restore_labels, restore_to_source
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.metrics import dice_per_class
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import load_weights
from unimed_core.paths import REPO_ROOT
from unimed_core.synthetic.case import SyntheticConfig, generate_case

LM = LabelMap.default()
ORGANS = (1, 2, 3, 4)  # liver, spleen, kidneys
INPUT_SPACING = (1.0, 1.0, 2.0)
WORKING = (6.0, 6.0, 6.0)  # the bundle's default working grid


@pytest.fixture(scope="module")
def study():
    case = generate_case(4, SyntheticConfig(shape=(224, 224, 112), spacing=INPUT_SPACING, lesion_presence=0.0))
    volume = Volume(case.image, case.affine)
    return volume, case.label, prepare_image(volume, WORKING)


def _perfect_scores(label: np.ndarray, volume: Volume, prepared) -> torch.Tensor:
    """(K, working grid) scores of the mask classes 1..K that a perfect model could give: each class's mask smoothed
    by a Gaussian of half a working voxel, sampled at the working voxel centres (0.5 on the boundary)."""
    sigma = [w / (2 * s) for w, s in zip(WORKING, INPUT_SPACING)]
    channels = [ndimage.gaussian_filter((label == k).astype(np.float32), sigma) for k in range(1, LM.num_mask_classes)]
    src = MetaTensor(torch.from_numpy(np.stack(channels)), affine=torch.as_tensor(volume.affine))
    out = SpatialResample(mode="bilinear", padding_mode="border")(
        src, dst_affine=torch.as_tensor(prepared.affine), spatial_size=prepared.shape
    )
    return out.as_tensor()


def _decide(scores: torch.Tensor) -> torch.Tensor:
    best, index = scores.max(0)
    return torch.where(best >= 0.5, index + 1, 0)


def identical_plane_share(mask: np.ndarray) -> float:
    """The largest share, over the three axes, of neighbouring planes that both hold the mask and are equal."""
    worst = 0.0
    for axis in range(3):
        planes = np.moveaxis(mask, axis, 0)
        full = planes.reshape(len(planes), -1).any(1)
        pairs = full[:-1] & full[1:]
        if pairs.any():
            same = np.array([np.array_equal(planes[i], planes[i + 1]) for i in np.flatnonzero(pairs)])
            worst = max(worst, float(same.mean()))
    return worst


def test_restored_masks_are_smooth_and_follow_the_scores(study):
    """Perfect scores: the working grid's own labels are (nearly) the truth sampled at its voxel centres, a Dice
    of about 1 there by construction, so the input-resolution Dice is compared with the nearest-neighbour copy of
    those labels (what the input grid got before)."""
    volume, truth, prepared = study
    scores = _perfect_scores(truth, volume, prepared)
    working = _decide(scores)
    smooth = restore_labels(scores, prepared, _decide).numpy()
    blocky = restore_to_source(working[None].float(), prepared, mode="nearest")[0].round().short().numpy()
    assert smooth.shape == truth.shape and smooth.dtype == np.int16
    on_input, copied = (
        dice_per_class(smooth, truth, LM.num_mask_classes),
        dice_per_class(blocky, truth, LM.num_mask_classes),
    )
    for k in ORGANS:
        if not (truth == k).any():
            continue
        assert identical_plane_share(blocky == k) > 0.5  # the coarse grid's blocks, as the issue found them
        assert identical_plane_share(smooth == k) < 0.1, LM.mask_classes[k]
        assert on_input[k] > max(copied[k], 0.97), LM.mask_classes[k]


def test_restore_labels_holds_only_a_slab_of_scores(study, monkeypatch):
    """The scores are interpolated slab by slab: no slab of scores is larger than the bound asked for."""
    from unimed_core.data import preprocess

    volume, truth, prepared = study
    scores = _perfect_scores(truth, volume, prepared)
    sizes = []

    def decide(slab):
        sizes.append(slab.numel())
        return _decide(slab)

    bound = 6 * 224 * 224 * 8
    chunked = restore_labels(scores, prepared, decide, max_chunk_voxels=bound)
    assert max(sizes) <= bound and len(sizes) == 112 // 8
    whole = preprocess.restore_labels(scores, prepared, _decide, max_chunk_voxels=10**10)
    torch.testing.assert_close(chunked, whole)


def test_the_shipped_weights_give_smooth_masks_at_least_as_good_as_on_the_working_grid(study, monkeypatch):
    from unimed_core.inference import predictor as module

    volume, truth, _ = study
    seen = {}

    def spy(scores, prepared, decide, **kwargs):  # the working grid's own labels, for its Dice
        seen["working"], seen["prepared"] = decide(scores), prepared
        return restore_labels(scores, prepared, decide, **kwargs)

    monkeypatch.setattr(module, "restore_labels", spy)
    model = load_weights(unimed_small(LM), REPO_ROOT / "bundle" / "models" / "model.pt")
    predictor = UniMedPredictor(model, LM, spacing=WORKING, roi_size=(64, 64, 64), semantic_source="both")
    labels = predictor.predict(volume).labels
    assert labels.shape == truth.shape
    working_truth = resample_label_to(truth, volume.affine, seen["prepared"])
    on_working = dice_per_class(seen["working"], working_truth, LM.num_mask_classes)
    on_input = dice_per_class(labels, truth, LM.num_mask_classes)
    assert on_working[1] > 0.5  # the liver was found
    for k in ORGANS:
        if (labels == k).any():
            assert identical_plane_share(labels == k) < 0.1, LM.mask_classes[k]
        # An organ the weights find: at least as good on the input grid, less a margin for under-segmented ones.
        # Scores that only just pass 0.5 at the working voxels pass it on a smaller region once interpolated
        # between them (about a third of a working voxel per side). Measured on this 224 mm study: the left kidney,
        # with 55 % of its volume found, 0.727 on the working grid and 0.703 restored (its nearest-neighbour copy:
        # 0.728). The step-3000 weights lost 0.066 there (0.64 to 0.58, 40 % found), more than the margin allows.
        # The decision follows the model's own scores; a restoration that misplaced or blocked the masks would lose
        # far more than the margin.
        if on_working[k] > 0.5:
            margin = 0.0 if k == 1 else 0.05  # the liver, found well by every shipped weights, gets no margin
            assert on_input[k] >= on_working[k] - margin, (LM.mask_classes[k], on_input[k], on_working[k])
