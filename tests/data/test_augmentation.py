"""Training augmentation: reproducible, annotations follow the image, no mirroring, box-only cases keep their pose."""

import numpy as np
import pytest
import torch

from unimed_core.data.augmentation import Augmentation
from unimed_core.data.training_data import LoadedCase, build_target
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_tiny
from unimed_core.tokenizer import Tokenizer

LM = LabelMap.default()


def _case(boxes=None, with_mask=True) -> LoadedCase:
    """Air (-1) with a bright block labelled 'liver' on the low-x side and a dimmer one labelled 'spleen'."""
    image = torch.full((1, 40, 40, 40), -1.0)
    semantic = torch.zeros((40, 40, 40), dtype=torch.long)
    image[0, 6:16, 12:28, 12:28], semantic[6:16, 12:28, 12:28] = 0.8, 1
    image[0, 26:34, 14:26, 14:26], semantic[26:34, 14:26, 14:26] = 0.3, 2
    box_labels = None if boxes is None else np.zeros(len(boxes), dtype=np.int64)
    return LoadedCase(image, semantic if with_mask else None, boxes, box_labels, None)


def test_same_generator_same_draw_and_different_seeds_differ():
    aug, case = Augmentation(), _case()
    a = aug(case, np.random.default_rng(3))
    b = aug(case, np.random.default_rng(3))
    c = aug(case, np.random.default_rng(4))
    torch.testing.assert_close(a.image, b.image)
    assert torch.equal(a.semantic, b.semantic)
    assert not torch.equal(a.image, c.image)


def test_mask_follows_the_image_and_boxes_come_from_the_warped_mask():
    aug = Augmentation(max_rotation_deg=20, max_scale=0.2, intensity_scale=0, intensity_shift=0)
    case = _case(boxes=np.array([[6.0, 12, 12, 16, 28, 28]]))
    for seed in range(5):
        out = aug(case, np.random.default_rng(seed))
        assert not torch.equal(out.semantic, case.semantic)  # it did move
        image, semantic = out.image[0], out.semantic
        # Labelled voxels are the bright ones; only the resampled edges of the blocks may disagree.
        assert float(image[semantic == 1].mean()) > 0.6 and float(image[semantic == 2].mean()) > 0.1
        assert float(image[semantic == 0].mean()) < -0.8
        assert out.boxes is None and out.box_labels is None  # read from the mask by build_target
    target = build_target(out, LM, Tokenizer(unimed_tiny(LM).vocab))
    assert sorted(target.instance_labels.tolist()) == [0, 1]


def test_no_mirroring_left_stays_left():
    aug = Augmentation()
    case = _case()
    for seed in range(10):
        out = aug(case, np.random.default_rng(seed))
        liver_x = out.semantic.eq(1).nonzero()[:, 0].float().mean()
        spleen_x = out.semantic.eq(2).nonzero()[:, 0].float().mean()
        assert liver_x < spleen_x
        assert abs(float(liver_x) - 10.5) < 4  # a small rotation and scaling about the centre, no flip


def test_box_only_case_keeps_its_pose_and_boxes():
    aug = Augmentation()
    boxes = np.array([[6.0, 12, 12, 16, 28, 28]])
    case = _case(boxes=boxes, with_mask=False)
    out = aug(case, np.random.default_rng(0))
    np.testing.assert_array_equal(out.boxes, boxes)
    np.testing.assert_array_equal(out.box_labels, case.box_labels)
    # Only the intensities changed, by one gain and one offset.
    gain = (out.image[0, 10, 20, 20] - out.image[0, 0, 0, 0]) / (0.8 - (-1.0))
    offset = out.image[0, 0, 0, 0] + gain
    torch.testing.assert_close(out.image, case.image * gain + offset)
    assert abs(float(gain) - 1) <= 0.1 + 1e-6 and abs(float(offset)) <= 0.1 + 1e-6


def test_unannotated_case_is_augmented_and_keeps_its_image_labels():
    case = LoadedCase(_case().image, None, None, None, [4])
    out = Augmentation()(case, np.random.default_rng(1))
    assert out.image_classes == [4] and out.semantic is None and out.boxes is None
    assert not torch.equal(out.image, case.image)


def test_without_cuts_the_draws_are_those_of_before():
    """A run started before field-of-view cuts existed resumes with the same draws: no extra draw when they are off."""
    case = _case()
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    Augmentation()(case, rng_a)
    Augmentation(field_of_view_cut=0.0)(case, rng_b)
    assert rng_a.uniform() == rng_b.uniform()


def test_field_of_view_cut_keeps_a_box_of_the_mask_and_reads_findings_from_it():
    aug = Augmentation(max_rotation_deg=0, max_scale=0, intensity_scale=0, intensity_shift=0, field_of_view_cut=1.0,
                       min_field_of_view=(0.5, 0.5, 0.5))  # fmt: skip
    case = LoadedCase(_case().image, _case().semantic, None, None, [4])
    shapes = set()
    for seed in range(8):
        out = aug(case, np.random.default_rng(seed))
        shape = out.image.shape[1:]
        assert out.semantic.shape == shape and all(20 <= n <= 40 for n in shape)
        shapes.add(tuple(shape))
        assert out.image_classes is None  # the cut mask says which findings are left (build_target)
        # image and mask are cut by the same window: the liver's voxels are still the bright ones
        liver = out.semantic == 1
        assert bool((out.image[0][liver] == 0.8).all()) and not bool((out.image[0][~liver] == 0.8).any())
    assert len(shapes) > 1


def test_field_of_view_cut_leaves_box_only_and_image_label_only_cases_whole():
    aug = Augmentation(field_of_view_cut=1.0)
    boxes = np.array([[6.0, 12, 12, 16, 28, 28]])
    for case in (_case(boxes=boxes, with_mask=False), LoadedCase(_case().image, None, None, None, [4])):
        out = aug(case, np.random.default_rng(0))
        assert out.image.shape == case.image.shape and out.image_classes == case.image_classes
    unlabelled = LoadedCase(_case().image, None, None, None, None)
    assert aug(unlabelled, np.random.default_rng(0)).image.shape != unlabelled.image.shape  # cut (seed 0 cuts)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_rotation_deg": -1}, {"max_rotation_deg": 90}, {"max_scale": 0.5}, {"intensity_scale": 1.0},
     {"intensity_shift": -0.1}, {"field_of_view_cut": 1.5}, {"min_field_of_view": (0.0, 0.5, 0.5)},
     {"min_field_of_view": (0.5, 0.5)}],
)  # fmt: skip
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="out of range"):
        Augmentation(**kwargs)
