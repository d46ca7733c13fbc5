"""``unimed-infer``: outputs and summary for a NIfTI, exit status 2 on bad input, click parsing."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from unimed_core.cli.infer import main, parse_point
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import save_weights
from unimed_core.synthetic.reproducible_nifti import save_nifti_reproducible

# 24 x 24 x 16 voxels of 2 mm: the working grid (2 mm) fits one 64³ window of the default predictor
AFFINE = np.array([[2.0, 0, 0, -40.0], [0, 2.0, 0, -30.0], [0, 0, 2.0, -20.0], [0, 0, 0, 1]])
CENTRE = (AFFINE @ np.array([11.5, 11.5, 7.5, 1.0]))[:3]  # negative coordinates on every axis


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    save_weights(unimed_small(LabelMap.default()), path)
    return path


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    grid = np.indices((24, 24, 16)).astype(np.float32)
    array = 100 * (np.linalg.norm(grid - np.array([12, 12, 8])[:, None, None, None], axis=0) < 6)
    return save_nifti_reproducible((array + rng.normal(0, 5, array.shape)).astype(np.float32), AFFINE,
                                   tmp_path / "in" / "ct.nii.gz")  # fmt: skip


def _run(*argv, weights) -> int:
    return main([*map(str, argv), "--weights", str(weights), "--device", "cpu", "--quiet"])


def test_infer_writes_outputs_and_summary(tmp_path, image, weights):
    out = tmp_path / "out"
    assert _run(image, "--out", out, weights=weights) == 0
    expected = {"ct_seg.nii.gz", "ct.seg.nrrd", "ct_boxes.json", "ct_boxes.mrk.json", "ct_classes.json", "summary.json"}
    assert {p.name for p in out.iterdir()} == expected  # and no temporary files
    labels = nib.load(out / "ct_seg.nii.gz")
    assert labels.shape == (24, 24, 16)
    np.testing.assert_allclose(labels.affine, AFFINE, atol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 1 and summary[0]["input"] == str(image)
    assert {(out / p).name for p in map(str, summary[0]["outputs"].values())} == expected - {"summary.json"}
    assert list(summary[0]["classes"]) == list(LabelMap.default().image_classes)
    counts = np.unique(np.asarray(labels.dataobj), return_counts=True)
    names = LabelMap.default().mask_classes
    assert summary[0]["segments"] == {names[int(i)]: int(n) for i, n in zip(*counts) if i > 0}


def test_corrupt_input_exits_2_naming_the_file(tmp_path, weights, capsys):
    bad = tmp_path / "in" / "bad.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"\x1f\x8b this is not a gzipped NIfTI")
    out = tmp_path / "out"
    assert _run(bad, "--out", out, weights=weights) == 2
    err = capsys.readouterr().err
    assert err.startswith("unimed-infer: error:") and "bad.nii.gz" in err
    assert not out.exists() or not any(out.iterdir())


def test_missing_weights_exit_2(tmp_path, image, capsys):
    assert _run(image, "--out", tmp_path / "out", weights=tmp_path / "none.pt") == 2
    assert "weight file not found" in capsys.readouterr().err


def test_click_with_negative_coordinates(tmp_path, image, weights):
    out = tmp_path / "out"
    click = ",".join(f"{v:g}" for v in CENTRE)
    assert click.startswith("-")
    negative = ",".join(f"{v:g}" for v in CENTRE + 10)
    assert _run(image, "--out", out, f"--click={click}", f"--negative-click={negative}", weights=weights) == 0
    assert {p.name for p in out.iterdir()} == {"ct_click.nii.gz", "summary.json"}
    mask = nib.load(out / "ct_click.nii.gz")
    assert mask.shape == (24, 24, 16)
    summary = json.loads((out / "summary.json").read_text())
    assert summary[0]["voxels"] == int(np.asarray(mask.dataobj).sum())


def test_parse_point():
    assert parse_point("-1.5,2,-3e1") == [-1.5, 2.0, -30.0]
    for text in ("1,2", "1,2,3,4", "a,b,c", "1,2,nan", "1,inf,2", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="a point is three finite numbers"):
            parse_point(text)


def test_bad_point_is_an_argparse_error(tmp_path, image, weights, capsys):
    with pytest.raises(SystemExit) as info:
        _run(image, "--out", tmp_path / "out", "--click=1,2", weights=weights)
    assert info.value.code == 2
    assert "a point is three finite numbers 'x,y,z' in RAS mm, got '1,2'" in capsys.readouterr().err


def test_no_inputs_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path)])
    assert info.value.code == 2
    assert "give input volumes or --datalist" in capsys.readouterr().err
