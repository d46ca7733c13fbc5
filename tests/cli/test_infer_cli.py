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


def test_warning_on_an_unfamiliar_scan_reaches_summary_and_stderr(tmp_path, image, weights, capsys):
    """The 48 mm ball is nothing like a generated abdomen: results are written, and the user is told why."""
    out = tmp_path / "out"
    assert _run(image, "--out", out, weights=weights) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "ct_seg.nii.gz").is_file()
    signals = {w["signal"] for w in summary[0]["warnings"]}
    assert "region" in signals
    err = capsys.readouterr().err
    assert f"unimed-infer: {image}: warning (region): the body region or field of view" in err
    assert "field of view along" in err


def test_a_generated_abdomen_gets_no_warning(tmp_path, weights, capsys):
    from unimed_core.synthetic.case import SyntheticConfig, generate_case

    case = generate_case(5, SyntheticConfig(shape=(48, 48, 40), spacing=(8.0, 8.0, 9.0)))
    path = save_nifti_reproducible(case.image, case.affine, tmp_path / "in" / "abdomen.nii.gz")
    assert _run(path, "--out", tmp_path / "out", "--classes", "liver", weights=weights) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())[0]["warnings"] == []
    assert "warning" not in capsys.readouterr().err


def test_box_prompt_writes_a_mask_inside_the_box(tmp_path, image, weights):
    out = tmp_path / "out"
    lo, hi = CENTRE - 8, CENTRE + 8
    box = ",".join(f"{v:g}" for v in (*hi[:2], lo[2], *lo[:2], hi[2]))  # corners in any order
    assert box.startswith("-")
    assert _run(image, "--out", out, f"--box={box}", weights=weights) == 0
    assert {p.name for p in out.iterdir()} == {"ct_box.nii.gz", "summary.json"}
    written = nib.load(out / "ct_box.nii.gz")
    mask = np.asarray(written.dataobj)
    assert mask.shape == (24, 24, 16)
    np.testing.assert_allclose(written.affine, AFFINE, atol=1e-4)
    centres = np.stack(np.nonzero(mask), 1) @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    assert np.all((centres >= lo - 1e-6) & (centres <= hi + 1e-6))  # untrained weights: whatever they find is in it
    summary = json.loads((out / "summary.json").read_text())
    assert summary[0]["voxels"] == int(mask.sum()) and "warnings" in summary[0]


def test_bad_boxes_are_argparse_errors(tmp_path, image, weights, capsys):
    for box, message in (
        ("1,2,3,4,5", "a box is six finite numbers 'x1,y1,z1,x2,y2,z2' in RAS mm"),
        ("1,2,3,4,2,6", "has no extent along an axis"),
    ):
        with pytest.raises(SystemExit) as info:
            _run(image, "--out", tmp_path / "out", f"--box={box}", weights=weights)
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(image, "--out", tmp_path / "out", "--box=0,0,0,1,1,1", "--click=0,0,0", weights=weights)
    assert "either --box or clicks" in capsys.readouterr().err


def test_a_box_outside_the_volume_exits_2(tmp_path, image, weights, capsys):
    assert _run(image, "--out", tmp_path / "out", "--box=500,500,500,520,520,520", weights=weights) == 2
    assert "lies outside the volume" in capsys.readouterr().err
