"""Training samples: loading each annotation level, cropping, and the Target (with its token sequences)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from unimed_core.data.boxes import boxes_from_mask
from unimed_core.data.datalist import annotation_item, load_datalist, write_datalist
from unimed_core.data.training_data import (
    LoadedCase,
    UniMedTrainingDataset,
    build_target,
    collate_samples,
    crop_case,
    load_case,
)
from unimed_core.label_map import LabelMap
from unimed_core.synthetic.case import SyntheticConfig, generate_case
from unimed_core.synthetic.reproducible_nifti import save_nifti_reproducible
from unimed_core.tokenizer import Tokenizer, Vocabulary

LM = LabelMap.default()
SPACING = (6.0, 6.0, 6.0)
NUM_BINS = 32
CYST, TUMOR = LM.class_index("cyst"), LM.class_index("tumor")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """One LPS synthetic case with lesions, listed at every annotation level (absolute paths)."""
    root = tmp_path_factory.mktemp("td")
    config = SyntheticConfig(
        shape=(40, 40, 32), spacing=(8.0, 8.0, 10.0), orientation="LPS", lesion_presence=1.0,
        lesions_per_kind=(1, 2), lesion_radius_mm=(12.0, 25.0),
    )  # fmt: skip
    case = generate_case(3, config, LM)
    assert len(case.lesions) >= 2, "the fixture needs lesions"
    save_nifti_reproducible(case.image, case.affine, root / "img.nii.gz")
    save_nifti_reproducible(case.label, case.affine, root / "lab.nii.gz")
    full = dict(image="img.nii.gz", label="lab.nii.gz", boxes=[les.box_mm for les in case.lesions],
                box_labels=case.box_labels, classes=case.image_labels)  # fmt: skip
    datalist = {
        "training": [annotation_item(level, **full) for level in ("mask", "boxes", "class")],
        "unlabeled": [annotation_item("none", **full)],
    }
    splits = load_datalist(write_datalist(root / "datalist.json", datalist), LM)
    mask_item, boxes_item, class_item = splits["training"]
    return {"mask": mask_item, "boxes": boxes_item, "class": class_item, "none": splits["unlabeled"][0]}


@pytest.fixture(scope="module")
def loaded(items):
    return {level: load_case(item, LM, SPACING) for level, item in items.items()}


@pytest.fixture
def tokenizer():
    return Tokenizer(Vocabulary.from_label_map(LM, num_bins=NUM_BINS))


def test_load_case_fields_per_annotation_level(items, loaded):
    shapes = {tuple(c.image.shape) for c in loaded.values()}
    assert len(shapes) == 1 and len(next(iter(shapes))) == 4
    spatial = next(iter(shapes))[1:]

    mask = loaded["mask"]
    assert mask.semantic is not None and tuple(mask.semantic.shape) == spatial
    assert mask.boxes is not None and mask.boxes.shape == (len(items["mask"]["boxes"]), 6)
    assert mask.image_classes == sorted(LM.class_index(n) for n in items["mask"]["class"])

    boxes = loaded["boxes"]
    assert boxes.semantic is None and boxes.image_classes is None
    assert boxes.boxes is not None and len(boxes.boxes) == len(boxes.box_labels) == len(items["boxes"]["boxes"])
    assert set(boxes.box_labels.tolist()) <= {CYST, TUMOR}

    cls = loaded["class"]
    assert cls.semantic is None and cls.boxes is None and cls.box_labels is None
    assert cls.image_classes == sorted(LM.class_index(n) for n in items["class"]["class"])

    none = loaded["none"]
    assert none.semantic is None and none.boxes is None and none.image_classes is None
    torch.testing.assert_close(none.image, mask.image)


def test_world_boxes_land_on_the_lesion_voxels(loaded):
    case = loaded["mask"]
    semantic = case.semantic.numpy()
    for cls in (CYST, TUMOR):
        voxels = np.argwhere(semantic == LM.class_index_to_mask_id(cls)) + 0.5  # voxel centres, box convention
        boxes = case.boxes[case.box_labels == cls]
        if not len(voxels):
            assert not len(boxes)
            continue
        # every lesion voxel of the working grid lies in a box of its class ...
        inside = np.zeros(len(voxels), dtype=bool)
        for box in boxes:
            inside |= np.all((voxels >= box[:3] - 1e-3) & (voxels <= box[3:] + 1e-3), axis=1)
        assert inside.all()
        # ... and each box fits a connected component of the resampled label (boxes from the mask)
        components, n = ndimage.label(semantic == LM.class_index_to_mask_id(cls))
        _, from_mask = boxes_from_mask(components)
        for box in boxes:
            lo, hi = np.maximum(box[:3], from_mask[:, :3]), np.minimum(box[3:], from_mask[:, 3:])
            inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
            union = np.prod(box[3:] - box[:3]) + np.prod(from_mask[:, 3:] - from_mask[:, :3], axis=1) - inter
            assert (inter / union).max() > 0.5


def _cube_case(image_classes) -> LoadedCase:
    semantic = torch.zeros(32, 32, 32, dtype=torch.long)
    semantic[10:14, 20:26, 5:9] = LM.class_index_to_mask_id(TUMOR)
    semantic[:, :, 28:] = LM.class_index_to_mask_id(LM.class_index("liver"))
    image = torch.randn(1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    boxes = np.array([[10.0, 20.0, 5.0, 14.0, 26.0, 9.0]])
    return LoadedCase(image, semantic, boxes, np.array([TUMOR]), image_classes)


@pytest.mark.parametrize("seed", range(6))
def test_crop_case_keeps_boxes_consistent_with_the_mask(seed):
    case = _cube_case([TUMOR])
    cropped = crop_case(case, (16, 16, 16), np.random.default_rng(seed))
    assert cropped.image.shape == (1, 16, 16, 16) and cropped.semantic.shape == (16, 16, 16)
    lesion = (cropped.semantic == LM.class_index_to_mask_id(TUMOR)).numpy()
    full = 4 * 6 * 4
    if lesion.sum() >= 0.5 * full:
        _, expected = boxes_from_mask(lesion)
        np.testing.assert_allclose(cropped.boxes, expected)
        assert cropped.box_labels.tolist() == [TUMOR]
    else:  # mostly cut away: no longer a target
        assert len(cropped.boxes) == 0 and len(cropped.box_labels) == 0
    assert cropped.image_classes is None  # cut with a positive: nothing says what the crop holds


def test_crop_case_image_labels_kept_when_valid():
    rng = np.random.default_rng(0)
    assert crop_case(_cube_case([]), (16, 16, 16), rng).image_classes == []  # negatives stay negative
    padded = crop_case(_cube_case([TUMOR]), (48, 32, 32), rng)  # larger than the volume: nothing cut
    assert padded.image_classes == [TUMOR]
    assert padded.image.shape == (1, 48, 32, 32)
    np.testing.assert_allclose(padded.boxes, _cube_case([TUMOR]).boxes + [8, 0, 0, 8, 0, 0])
    assert int((padded.semantic > 0).sum()) == int((_cube_case(None).semantic > 0).sum())


def _match(decoded: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Largest coordinate distance from each expected box to its nearest decoded box."""
    return np.array([np.abs(decoded - box).max(axis=1).min() for box in expected])


def test_build_target_from_a_mask(loaded, tokenizer):
    case = crop_case(loaded["mask"], (48, 48, 48), np.random.default_rng(0))
    target = build_target(case, LM, tokenizer)
    semantic = case.semantic.numpy()
    organs = [i for i in range(1, LM.num_mask_classes) if LM.mask_id_to_class_index(i) not in (CYST, TUMOR)]
    n_organs = sum(bool((semantic == i).any()) for i in organs)
    n_lesions = sum(ndimage.label(semantic == LM.class_index_to_mask_id(c))[1] for c in (CYST, TUMOR))
    assert n_lesions > 0
    assert len(target.instance_labels) == target.instance_masks.shape[0] == n_organs + n_lesions
    assert target.instance_masks.shape[1:] == case.semantic.shape
    boxes = target.instance_boxes.numpy()
    assert boxes.shape == (n_organs + n_lesions, 6)
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0 and np.all(boxes[:, :3] <= boxes[:, 3:])
    assert target.annotated_classes is None  # a full mask covers every class

    seg, det, cls = (tokenizer.decode(s.tolist()) for s in target.sequences)
    assert seg.task == "segmentation" and seg.classes == sorted(set(target.instance_labels.tolist()))
    lesion = [i for i, c in enumerate(target.instance_labels.tolist()) if c in (CYST, TUMOR)]
    assert det.task == "detection" and sorted(det.box_labels) == sorted(target.instance_labels[lesion].tolist())
    assert _match(det.boxes, boxes[lesion]).max() <= 1.0 / NUM_BINS
    present = sorted({int(target.instance_labels[i]) for i in lesion})
    assert cls.task == "classification" and cls.classes == present
    assert target.image_labels.nonzero().flatten().tolist() == present


def test_build_target_boxes_only(loaded, tokenizer):
    case = loaded["boxes"]
    patch = np.tile(np.array(case.image.shape[1:], dtype=np.float64), 2)
    target = build_target(case, LM, tokenizer)
    assert target.semantic is None and target.instance_masks is None
    assert target.annotated_classes.tolist() == LM.box_class_indices()
    assert target.instance_labels.tolist() == case.box_labels.tolist()
    np.testing.assert_allclose(target.instance_boxes.numpy(), np.clip(case.boxes / patch, 0, 1), atol=1e-6)
    det, cls = (tokenizer.decode(s.tolist()) for s in target.sequences)
    assert sorted(det.box_labels) == sorted(case.box_labels.tolist())
    assert _match(det.boxes, target.instance_boxes.numpy()).max() <= 1.0 / NUM_BINS
    assert cls.classes == sorted(set(case.box_labels.tolist()))


def test_build_target_class_only_and_unlabeled(loaded, tokenizer):
    target = build_target(loaded["class"], LM, tokenizer)
    assert target.instance_labels is None and target.semantic is None
    assert len(target.sequences) == 1
    assert tokenizer.decode(target.sequences[0].tolist()).classes == loaded["class"].image_classes
    empty = build_target(loaded["none"], LM, tokenizer)
    assert empty.sequences == () and empty.image_labels is None and empty.instance_labels is None


def test_dataset_draws_patches_and_collates(items, tokenizer):
    dataset = UniMedTrainingDataset(list(items.values()), LM, tokenizer, patch_size=(32, 32, 16), spacing=SPACING)
    assert len(dataset) == 4
    first = dataset[0]
    assert first["image"].shape == (1, 32, 32, 16)
    torch.testing.assert_close(dataset[0]["image"], first["image"])  # deterministic per (seed, epoch, index)
    batch = collate_samples([dataset[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 32, 32, 16) and len(batch["targets"]) == 4


@pytest.mark.parametrize("patch", [(32, 32), (32, 32, 20), (0, 16, 16), (-16, 16, 16)])
def test_bad_patch_size(items, tokenizer, patch):
    with pytest.raises(ValueError, match="patch_size must be three positive multiples of 16"):
        UniMedTrainingDataset([items["mask"]], LM, tokenizer, patch_size=patch)
