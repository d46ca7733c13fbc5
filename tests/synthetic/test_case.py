"""Tests of the synthetic study generator (unimed_core.synthetic.case)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from unimed_core.data.boxes import world_to_voxel_points
from unimed_core.label_map import LabelMap
from unimed_core.synthetic.case import SyntheticConfig, generate_case, orientation_affine
from unimed_core.synthetic.dataset import allocate, generate_dataset, main

LM = LabelMap.default()
ID = {name: i for i, name in LM.mask_classes.items()}
SMALL = {"shape": (48, 48, 48), "spacing": (8.0, 8.0, 7.5)}


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return (affine[:3, :3] @ ijk.T).T + affine[:3, 3]


def test_case_shape_dtype_and_affine():
    case = generate_case(3, SyntheticConfig(**SMALL))
    assert case.image.shape == case.label.shape == (48, 48, 48)
    assert case.image.dtype == np.float32 and case.label.dtype == np.int16
    assert np.isfinite(case.image).all()
    np.testing.assert_allclose(np.diag(case.affine)[:3], [8.0, 8.0, 7.5])
    assert set(np.unique(case.label)) <= set(LM.mask_classes)
    for organ in ("liver", "spleen", "kidney_left", "kidney_right"):
        assert (case.label == ID[organ]).sum() > 10, organ
    assert case.image.min() >= -1024 and (case.image == case.image.min()).mean() < 0.9  # air and body both there


def test_anatomy_sides_in_ras():
    case = generate_case(4, SyntheticConfig(**SMALL, lesion_presence=0.0))
    ijk = {n: np.argwhere(case.label == ID[n]).mean(axis=0) for n in ("liver", "spleen", "kidney_left", "kidney_right")}
    world = {n: _world(case.affine, v[None])[0] for n, v in ijk.items()}
    assert world["liver"][0] > 0 > world["spleen"][0]  # RAS: +x is the patient's right
    assert world["kidney_right"][0] > 0 > world["kidney_left"][0]
    assert world["kidney_left"][1] < world["liver"][1]  # kidneys are posterior


def test_boxes_contain_their_voxels_and_image_labels_match():
    seen = set()
    for seed in range(8):
        case = generate_case(seed, SyntheticConfig(**SMALL, lesion_presence=0.6))
        present = {name for name in ("cyst", "tumor") if (case.label == ID[name]).any()}
        assert set(case.image_labels) == present
        assert sorted(set(case.box_labels)) == sorted(present)
        seen.add(frozenset(present))
        for name in ("cyst", "tumor"):
            voxels = np.argwhere(case.label == ID[name]).astype(float)
            boxes = np.array([les.box_mm for les in case.lesions if les.class_name == name]).reshape(-1, 6)
            assert len(boxes) or not len(voxels)
            pts = _world(case.affine, voxels)
            inside = (pts[:, None, :] >= boxes[None, :, :3]) & (pts[:, None, :] <= boxes[None, :, 3:])
            assert inside.all(axis=2).any(axis=1).all(), f"seed {seed}: a {name} voxel is outside every box"
            for les in (les for les in case.lesions if les.class_name == name):
                b = np.array(les.box_mm)
                assert (b[:3] <= b[3:]).all()
                n_in = ((pts >= b[:3]) & (pts <= b[3:])).all(axis=1).sum()
                assert n_in >= les.num_voxels and les.mask_id == ID[name]
    assert len(seen) >= 3, f"image labels should vary across seeds, saw {seen}"


def _interior_mean(case, name: str) -> float:
    mask = ndimage.binary_erosion(case.label == ID[name])
    assert mask.sum() > 5, name
    return float(case.image[mask].mean())


def test_intensities_follow_each_domain_design():
    cfg = {"shape": (72, 72, 64), "spacing": (5.0, 5.0, 5.5), "lesion_presence": 1.0, "lesion_radius_mm": (18.0, 28.0),
           "organ_weights": {"liver": 1.0}, "lesions_per_kind": (2, 2)}  # fmt: skip
    ct = generate_case(2, SyntheticConfig(domain="ct", **cfg))
    mr = generate_case(2, SyntheticConfig(domain="mr", **cfg))
    np.testing.assert_array_equal(ct.label, mr.label)  # same seed: same anatomy, only the appearance changes
    ct_mean = {n: _interior_mean(ct, n) for n in ("liver", "spleen", "cyst", "tumor")}
    mr_mean = {n: _interior_mean(mr, n) for n in ("liver", "spleen", "cyst", "tumor")}
    assert ct_mean["tumor"] > ct_mean["cyst"] + 40  # CT: cyst hypodense, tumor hyperdense
    assert mr_mean["cyst"] > mr_mean["tumor"] + 200  # T2-like: cyst very bright
    assert ct_mean["liver"] > ct_mean["spleen"] and mr_mean["spleen"] > mr_mean["liver"]
    assert 30 < ct_mean["liver"] < 90 and ct_mean["cyst"] < 40
    assert abs(mr_mean["liver"] - ct_mean["liver"]) > 100
    assert (ct.image < -900).mean() > 0.1 and (mr.image >= 0).all()  # CT air; MR magnitude is non-negative


@pytest.mark.parametrize("orientation", ["LPS", "PIL"])
def test_other_orientation_and_spacing_keeps_world_anatomy(orientation):
    ras = generate_case(7, SyntheticConfig(shape=(48, 48, 48), spacing=(8.0, 8.0, 8.0), lesion_presence=0.0))
    spacing = (7.0, 8.5, 9.5)
    shape = (55, 45, 40)
    other = generate_case(
        7, SyntheticConfig(shape=shape, spacing=spacing, orientation=orientation, lesion_presence=0.0)
    )
    assert other.label.shape == shape
    codes = "".join(nib.aff2axcodes(other.affine))
    assert codes == orientation
    for organ in ("liver", "spleen", "kidney_left", "kidney_right"):
        a = _world(ras.affine, np.argwhere(ras.label == ID[organ]).astype(float)).mean(axis=0)
        b = _world(other.affine, np.argwhere(other.label == ID[organ]).astype(float)).mean(axis=0)
        assert np.linalg.norm(a - b) < 8.0, f"{organ}: {a} vs {b}"
        vol_a = (ras.label == ID[organ]).sum() * 8.0**3
        vol_b = (other.label == ID[organ]).sum() * np.prod(spacing)
        assert abs(vol_a - vol_b) / vol_a < 0.15, organ  # same physical size whatever the spacing


def test_orientation_affine_maps_grid_centre_to_origin():
    aff = orientation_affine("LPS", (2.0, 3.0, 4.0), (11, 21, 31))
    np.testing.assert_allclose(aff @ [5, 10, 15, 1], [0, 0, 0, 1])
    np.testing.assert_allclose(aff[:3, :3], np.diag([-2.0, -3.0, 4.0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"domain": "pet"}, "domain"),
        ({"orientation": "RAX"}, "orientation"),
        ({"orientation": "RRS"}, "orientation"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"lesion_radius_mm": (5.0, 2.0)}, "lesion_radius_mm"),
        ({"organ_weights": {"brain": 1.0}}, "organ_weights"),
    ],
)
def test_config_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**kwargs)


def test_label_map_without_lesion_class_is_rejected():
    lm = LabelMap({0: "background", 1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right", 5: "cyst"})
    with pytest.raises(ValueError, match="tumor"):
        generate_case(0, SyntheticConfig(**SMALL), lm)


def test_allocate_counts_are_exact():
    out = allocate(10, {"mask": 0.4, "boxes": 0.2, "class": 0.2, "none": 0.2}, np.random.default_rng(0))
    assert sorted(out) == sorted(["mask"] * 4 + ["boxes"] * 2 + ["class"] * 2 + ["none"] * 2)
    with pytest.raises(ValueError, match="weights"):
        allocate(3, {"a": 0.0}, np.random.default_rng(0))


TINY = {"shape": (32, 32, 28), "spacing": (12.0, 12.0, 13.0)}


def test_dataset_is_byte_deterministic(tmp_path):
    a = generate_dataset(tmp_path / "a", 4, seed=5, domains="mixed", **TINY)
    b = generate_dataset(tmp_path / "b", 4, seed=5, domains="mixed", **TINY)
    c = generate_dataset(tmp_path / "c", 4, seed=6, domains="mixed", **TINY)
    ha, hb, hc = _hashes(a.parent), _hashes(b.parent), _hashes(c.parent)
    assert len(ha) == 9  # 4 images, 4 labels, the datalist
    assert ha == hb
    images = [k for k in ha if k.startswith("imagesTr")]
    assert all(ha[k] != hc[k] for k in images)
    # gzip header carries no time stamp nor name
    raw = (a.parent / images[0]).read_bytes()
    assert raw[4:8] == b"\0\0\0\0"


def test_dataset_mixes_annotation_levels_as_configured(tmp_path):
    levels = {"mask": 0.4, "boxes": 0.2, "class": 0.2, "none": 0.2}
    path = generate_dataset(tmp_path, 12, seed=1, levels=levels, n_validation=1, n_test=1, domains="mixed", **TINY)
    data = json.loads(path.read_text())
    train = data["training"]
    kinds = [tuple(sorted(set(item) - {"image", "domain"})) for item in train]
    assert kinds.count(("box_labels", "boxes", "class", "label")) == 4
    assert kinds.count(("box_labels", "boxes")) == 2
    assert kinds.count(("class",)) == 2
    assert data["unlabeled"] == [{"image": item["image"]} for item in data["unlabeled"]] and len(data["unlabeled"]) == 2
    for split in ("validation", "test"):
        assert len(data[split]) == 1 and {"label", "boxes", "box_labels", "class"} <= set(data[split][0])
    assert sorted({item["domain"] for item in train}) == ["ct", "mr"]
    assert data["label_map"]["mask_classes"]["6"] == "tumor" and "RAS" in data["coordinates"]
    # the paths are relative and the files agree with the listed annotations
    for item in train + data["validation"]:
        img = nib.load(tmp_path / item["image"])
        assert img.shape == (32, 32, 28) and not Path(item["image"]).is_absolute()
        if "label" in item:
            label = np.asarray(nib.load(tmp_path / item["label"]).dataobj)
            np.testing.assert_allclose(nib.load(tmp_path / item["label"]).affine, img.affine)
            present = [n for n in ("cyst", "tumor") if (label == ID[n]).any()]
            assert item["class"] == present and sorted(set(item["box_labels"])) == present


def test_dataset_without_fixed_shape_uses_field_of_view(tmp_path):
    path = generate_dataset(tmp_path, 2, seed=0, shape=None, spacing=(10.0, 10.0, 12.0), spacing_max=(12.0, 12.0, 14.0),
                            fov_mm=(300.0, 300.0, 240.0), orientations=("RAS", "LPS"))  # fmt: skip
    data = json.loads(path.read_text())
    for item in data["training"] + data["unlabeled"]:
        img = nib.load(tmp_path / item["image"])
        extent = np.array(img.shape) * np.array(img.header.get_zooms())
        assert (extent >= [300.0, 300.0, 240.0]).all() and (extent < [300.0 + 12, 300.0 + 12, 240.0 + 14]).all()


def test_main_writes_a_datalist(tmp_path, capsys):
    rc = main(["--out", str(tmp_path), "--cases", "2", "--seed", "3", "--domain", "mr",
               "--shape", "24,24,20", "--spacing", "16,16,18", "--levels", "mask=1"])  # fmt: skip
    assert rc == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "datalist.json")
    data = json.loads((tmp_path / "datalist.json").read_text())
    assert [item["domain"] for item in data["training"]] == ["mr", "mr"]
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--levels", "mask:1"])


def test_main_lesion_radius_range(tmp_path):
    """--lesion-radius bounds the lesions drawn (the CPU benchmark keeps those its 6 mm grid can resolve)."""
    rc = main(["--out", str(tmp_path), "--cases", "4", "--seed", "1", "--shape", "64,64,60", "--spacing", "6",
               "--levels", "mask=1", "--lesion-radius", "12,14"])  # fmt: skip
    assert rc == 0
    data = json.loads((tmp_path / "datalist.json").read_text())
    sides = [np.subtract(b[3:], b[:3]) for item in data["training"] for b in item.get("boxes", [])]
    assert sides and min(s.max() for s in sides) >= 12  # about 2 x 12 mm across, cut to whole voxels
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), "--lesion-radius", "9,3"])


def test_256_cube_shape_and_dtype():
    case = generate_case(0, SyntheticConfig(shape=(256, 256, 256), spacing=(1.5, 1.5, 1.5)))
    assert case.image.shape == (256, 256, 256) and case.image.dtype == np.float32
    assert case.label.dtype == np.int16 and (case.label == ID["liver"]).sum() > 100_000


def test_lesion_boxes_agree_with_the_box_convention_of_unimed_core_boxes():
    """The generator's world boxes are what boxes_from_mask + voxel_to_world_boxes give for the lesion voxels."""
    from scipy import ndimage

    from unimed_core.data.boxes import boxes_from_mask, voxel_to_world_boxes

    config = SyntheticConfig(shape=(48, 40, 36), spacing=(5.0, 6.0, 7.0), orientation="LPS", lesion_presence=1.0)
    case = generate_case(11, config)
    assert case.lesions
    checked = 0
    for lesion in case.lesions:
        components, _ = ndimage.label(case.label == lesion.mask_id)
        centre = world_to_voxel_points(np.asarray(lesion.center_mm)[None], case.affine)[0]
        index = components[tuple(np.clip(np.round(centre).astype(int), 0, np.array(case.label.shape) - 1))]
        if index == 0:
            continue
        _, voxel_box = boxes_from_mask(components == index)
        np.testing.assert_allclose(voxel_to_world_boxes(voxel_box, case.affine)[0], lesion.box_mm, atol=1e-3)
        checked += 1
    assert checked > 0
