"""unimed-prepare-dataset luna16: LPS annotations.csv and .mhd scans → RAS boxes and image labels."""

from __future__ import annotations

import numpy as np
import pytest

from tests.datasets.conftest import ID
from unimed_core.cli.prepare_dataset import main
from unimed_core.data.boxes import world_to_voxel_points
from unimed_core.data.datalist import label_map_from_datalist, load_datalist
from unimed_core.data.image_io import read_image
from unimed_core.datasets.luna16 import convert_luna16, read_annotations


def test_luna16_boxes_are_ras_spheres_and_scans_without_rows_are_negatives(luna16_root, tmp_path):
    root, cases = luna16_root
    with pytest.warns(UserWarning, match="1 annotations of 1 scans that are not in the folder"):
        path = convert_luna16(root, tmp_path, validation_fraction=0.0)
    assert "nodule" in label_map_from_datalist(path).box_classes
    items = {it["image"].rsplit("/", 1)[-1][: -len(".mhd")]: it for it in load_datalist(path)["training"]}
    assert set(items) == set(cases)
    for uid, c in cases.items():
        item = items[uid]
        assert "label" not in item
        expected = sorted(
            [*(np.array(les.center_mm) - les.radius_mm), *(np.array(les.center_mm) + les.radius_mm)]
            for les in c.lesions
        )
        np.testing.assert_allclose(sorted(item["boxes"]), expected, atol=1e-4)
        assert item["class"] == (["nodule"] if c.lesions else [])
        volume = read_image(item["image"])
        np.testing.assert_allclose(volume.affine, c.affine, atol=1e-4)  # the scan on disk is the generated one
        # every box centre falls on a lesion voxel of its scan: the LPS → RAS flip is right
        for box in item["boxes"]:
            ijk = np.rint(world_to_voxel_points(np.array([box[:3]]) / 2 + np.array([box[3:]]) / 2, volume.affine)[0])
            assert c.label[tuple(ijk.astype(int))] in (ID["cyst"], ID["tumor"])
    assert not cases[sorted(cases)[2]].lesions and items[sorted(cases)[2]]["boxes"] == []


def test_luna16_cli_and_bad_input(luna16_root, tmp_path, capsys):
    root, _ = luna16_root
    with pytest.warns(UserWarning, match="not in the folder"):
        assert main(["luna16", str(root), "--out", str(tmp_path / "o")]) == 0
    assert "2 training, 1 validation" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\nx,1,2,three,4\n")
    with pytest.raises(ValueError, match="annotations.csv:2: not a number"):
        read_annotations(bad / "annotations.csv")
    assert main(["luna16", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "annotations.csv:2" in capsys.readouterr().err


def test_luna16_refuses_a_nodule_outside_its_scan(luna16_root, tmp_path):
    root, cases = luna16_root
    import shutil

    copy = tmp_path / "luna"
    shutil.copytree(root, copy)
    uid = sorted(cases)[0]
    # the scan spans -155..155 mm around the origin; 400 mm is outside: refused, not silently dropped
    (copy / "annotations.csv").write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{uid},400,0,0,5\n")
    with pytest.raises(ValueError, match="lies outside scan"):
        convert_luna16(copy, tmp_path / "o")
