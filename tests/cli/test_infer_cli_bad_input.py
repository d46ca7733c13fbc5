"""``unimed-infer`` on bad input: exit status 2, one line naming the file and the problem, no output written."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

from unimed_core.cli.infer import main
from unimed_core.paths import DEFAULT_WEIGHTS


@pytest.fixture(scope="module")
def weights():
    """The shipped weights (bad input is refused before they run; the good case runs them)."""
    return DEFAULT_WEIGHTS


def _nifti(path, array, spacing=2.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([spacing, spacing, spacing, 1.0])), str(path))
    return path


def _huge_header(path):
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.float32)
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\0" * 4)
    return path


def _bad_inputs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32)
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": "missing.nii.gz"}]}))
    return {
        "constant": (_nifti(folder / "flat.nii.gz", np.zeros((20, 20, 20), np.float32)), "intensities are constant"),
        "2-D": (_nifti(folder / "slice.nii.gz", noise[:, :, 0]), "2-D image"),
        "4-D": (_nifti(folder / "time.nii.gz", np.stack([noise, noise], -1)), "4-D or multi-channel image"),
        "NaN": (_nifti(folder / "nan.nii.gz", np.where(noise > 2, np.nan, noise)), "non-finite voxels"),
        "too large": (_huge_header(folder / "huge.nii"), "4000 x 4000 x 4000 voxels needs about 715.3 GB"),
        "tiny spacing": (_nifti(folder / "tiny.nii.gz", noise, spacing=1e-3), "the volume spans only"),
        "datalist": (datalist, r"test\[0\]: image file .*missing\.nii\.gz.* does not exist"),
    }


def test_each_bad_input_exits_2_naming_the_file_and_writes_nothing(tmp_path, weights, capsys):
    for kind, (path, problem) in _bad_inputs(tmp_path / "in").items():
        out = tmp_path / f"out_{kind}"
        source = ["--datalist", str(path)] if kind == "datalist" else [str(path)]
        code = main([*source, "--out", str(out), "--weights", str(weights), "--device", "cpu", "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, kind
        assert err.startswith("unimed-infer: error: ") and str(path) in err, (kind, err)
        assert re.search(problem, err), (kind, err)
        assert not out.exists() or not any(out.iterdir()), (kind, sorted(out.iterdir()))


def test_a_bad_input_after_a_good_one_keeps_the_finished_outputs_whole(tmp_path, weights, capsys):
    rng = np.random.default_rng(0)
    good = _nifti(tmp_path / "in" / "a_good.nii.gz", rng.normal(size=(20, 20, 16)).astype(np.float32))
    bad = _nifti(tmp_path / "in" / "b_flat.nii.gz", np.zeros((20, 20, 16), np.float32))
    out = tmp_path / "out"
    assert main([str(good), str(bad), "--out", str(out), "--weights", str(weights), "--device", "cpu", "--quiet"]) == 2
    assert "b_flat.nii.gz: image intensities are constant" in capsys.readouterr().err
    written = sorted(p.name for p in out.iterdir())
    assert all(name.startswith("a_good") for name in written) and "summary.json" not in written
    assert not [n for n in written if n.startswith(".")]  # no temporary files left
    assert nib.load(out / "a_good_seg.nii.gz").shape == (20, 20, 16)  # complete, readable


def test_a_folder_of_several_series_needs_series(tmp_path, weights, capsys):
    from tests.data.conftest import _write_ct_series

    hu = np.zeros((6, 5, 4))
    first = _write_ct_series(tmp_path / "dcm", hu, np.diag([1.0, 1.0, 2.0, 1.0]), description="first")
    _write_ct_series(tmp_path / "dcm", hu, np.diag([1.0, 1.0, 3.0, 1.0]), description="second")
    common = [str(tmp_path / "dcm"), "--weights", str(weights), "--device", "cpu", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "folder holds 2 DICOM series" in err and "'first', 6 x 5 x 4" in err and "--series UID" in err
    assert main([*common, "--out", str(tmp_path / "out2"), "--series", "1.2.3"]) == 2
    assert "DICOM series 1.2.3 not found" in capsys.readouterr().err
    # the chosen series gets past reading: what is refused next is the tiny volume itself, not the folder
    assert main([*common, "--out", str(tmp_path / "out3"), "--series", first]) == 2
    assert "the volume spans only" in capsys.readouterr().err
