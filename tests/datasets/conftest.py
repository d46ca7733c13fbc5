"""Miniature copies of the public datasets' layouts, written from generated studies.

Each fixture writes a few 32^3 studies (10 mm voxels) the way the real dataset stores them, so the converters
read the same files, names and conventions (MSD's dataset.json, LUNA16's LPS annotations.csv and .mhd scans,
TotalSegmentator's per-structure masks and ``;``-separated meta.csv, KiTS's case folders).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from unimed_core.label_map import LabelMap
from unimed_core.synthetic.case import SyntheticCase, SyntheticConfig, generate_case

LM = LabelMap.default()
ID = LM.mask_classes_by_name()
CONFIG = {"shape": (32, 32, 32), "spacing": (10.0, 10.0, 10.0), "lesion_radius_mm": (10.0, 25.0)}


def case(seed: int, lesions: bool = True, orientation: str = "RAS") -> SyntheticCase:
    """A generated study; ``lesions=False`` gives one without any (a known negative once converted)."""
    return generate_case(
        seed, SyntheticConfig(lesion_presence=1.0 if lesions else 0.0, orientation=orientation, **CONFIG)
    )


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def save_mhd(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """A MetaImage as LUNA16 ships them: ITK's LPS space, ``.mhd`` header beside ``.raw`` voxels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(img, str(path))
    return path


def msd_labels(label: np.ndarray) -> np.ndarray:
    """Our ids → a liver task's (1 liver, 2 cancer: tumours and cysts alike)."""
    out = np.zeros(label.shape, np.uint8)
    out[label == ID["liver"]] = 1
    out[(label == ID["tumor"]) | (label == ID["cyst"])] = 2
    return out


@pytest.fixture(scope="session")
def msd_task(tmp_path_factory) -> Path:
    """Task99_Synth: 4 training studies (the last without lesions) and 2 test images."""
    root = tmp_path_factory.mktemp("msd") / "Task99_Synth"
    training, test = [], []
    for i in range(4):
        c = case(i, lesions=i < 3)
        save_nifti(c.image, c.affine, root / "imagesTr" / f"synth_{i}.nii.gz")
        save_nifti(msd_labels(c.label), c.affine, root / "labelsTr" / f"synth_{i}.nii.gz")
        training.append({"image": f"./imagesTr/synth_{i}.nii.gz", "label": f"./labelsTr/synth_{i}.nii.gz"})
    for i in (10, 11):
        c = case(i)
        save_nifti(c.image, c.affine, root / "imagesTs" / f"synth_{i}.nii.gz")
        test.append(f"./imagesTs/synth_{i}.nii.gz")
    meta = {
        "name": "Synth",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": 4,
        "numTest": 2,
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


@pytest.fixture(scope="session")
def luna16_root(tmp_path_factory) -> tuple[Path, dict[str, SyntheticCase]]:
    """Three scans in subset0/ (oblique-free but LPS on disk, the last without nodules), annotations.csv in LPS,
    plus one annotated scan that is not in the folder (a subset not downloaded)."""
    root = tmp_path_factory.mktemp("luna16")
    cases = {}
    rows = []
    for i in range(3):
        uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{100 + i}"
        c = case(20 + i, lesions=i < 2, orientation="LPS" if i == 1 else "RAS")
        cases[uid] = c
        save_mhd(c.image, c.affine, root / "subset0" / f"{uid}.mhd")
        for lesion in c.lesions:
            x, y, z = lesion.center_mm
            rows.append([uid, -x, -y, z, 2 * lesion.radius_mm])
    rows.append(["1.3.6.1.4.1.14519.5.2.1.6279.6001.999", 10.0, 20.0, 30.0, 6.0])
    with open(root / "annotations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        writer.writerows(rows)
    return root, cases


TSEG_STRUCTURES = ("liver", "spleen", "kidney_left", "kidney_right", "aorta")


@pytest.fixture(scope="session")
def totalseg_root(tmp_path_factory) -> tuple[Path, dict[str, SyntheticCase]]:
    """Four subjects (train, train, val, test in meta.csv); 'aorta' is a bar that overlaps the liver."""
    root = tmp_path_factory.mktemp("totalseg")
    cases = {}
    splits = ["train", "train", "val", "test"]
    for i in range(4):
        name = f"s{i:04d}"
        c = case(30 + i)
        cases[name] = c
        save_nifti(c.image, c.affine, root / name / "ct.nii.gz")
        for structure in TSEG_STRUCTURES:
            if structure == "aorta":
                mask = np.zeros(c.label.shape, np.uint8)
                mask[14:17, 14:17, :] = 1
            else:
                mask = (c.label == ID[structure]).astype(np.uint8)
            save_nifti(mask, c.affine, root / name / "segmentations" / f"{structure}.nii.gz")
    with open(root / "meta.csv", "w", newline="") as f:
        f.write("image_id;age;gender;split\n")
        for i, split in enumerate(splits):
            f.write(f"s{i:04d};60;m;{split}\n")
    return root, cases


@pytest.fixture(scope="session")
def kits_root(tmp_path_factory) -> tuple[Path, dict[str, SyntheticCase]]:
    """kits23-like: dataset/case_0000{0..3}; case 3 has no segmentation (unlabeled), case 2 no lesion."""
    root = tmp_path_factory.mktemp("kits23")
    cases = {}
    for i in range(4):
        name = f"case_{i:05d}"
        c = case(40 + i, lesions=i != 2)
        cases[name] = c
        save_nifti(c.image, c.affine, root / "dataset" / name / "imaging.nii.gz")
        if i == 3:
            continue
        seg = np.zeros(c.label.shape, np.uint8)
        seg[(c.label == ID["kidney_left"]) | (c.label == ID["kidney_right"])] = 1
        seg[c.label == ID["tumor"]] = 2
        seg[c.label == ID["cyst"]] = 3
        save_nifti(seg, c.affine, root / "dataset" / name / "segmentation.nii.gz")
    return root, cases


def component_boxes(labels: np.ndarray, affine: np.ndarray, mask_id: int) -> list[list[float]]:
    """World RAS boxes of the connected components of ``mask_id``, computed independently of the converters:
    the min/max voxel centres of each component, widened by half a voxel (axis-aligned grids only)."""
    from scipy import ndimage

    components, n = ndimage.label(labels == mask_id, structure=np.ones((3, 3, 3)))
    half = np.abs(affine[:3, :3]).sum(axis=1) / 2
    out = []
    for k in range(1, n + 1):
        ijk = np.argwhere(components == k)
        world = ijk @ affine[:3, :3].T + affine[:3, 3]
        out.append([*(world.min(0) - half), *(world.max(0) + half)])
    return sorted(out)


def inside_image(box: list[float], shape: tuple[int, ...], affine: np.ndarray) -> bool:
    """Whether a world box lies within the physical extent of the image (axis-aligned grids)."""
    corners = np.array([[0, 0, 0], np.asarray(shape[:3]) - 1.0]) @ affine[:3, :3].T + affine[:3, 3]
    half = np.abs(affine[:3, :3]).sum(axis=1) / 2
    lo, hi = corners.min(0) - half - 1e-6, corners.max(0) + half + 1e-6
    return bool(np.all(np.asarray(box[:3]) >= lo) and np.all(np.asarray(box[3:]) <= hi))
