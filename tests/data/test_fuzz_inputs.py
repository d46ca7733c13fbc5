"""Fuzzing the readers and the datalist parser with hypothesis: any input gives a valid result or a clean error.

Readers: random bytes, and valid files truncated or with bytes overwritten (header and data), under every
image suffix → a 3-D finite :class:`Volume` or :class:`ImageReadError` naming the file; never another
exception, never a hang (a per-example deadline). Datalist: arbitrary JSON, and near-valid datalists with
mutated items → the four splits of well-formed items, or a ``ValueError`` naming the datalist.

Example counts stay small so the suite stays fast; the ``slow`` variants run many more.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unimed_core.data.datalist import SPLITS, load_datalist
from unimed_core.data.image_io import Volume, read_image
from unimed_core.errors import ImageReadError
from unimed_core.label_map import LabelMap

LM = LabelMap.default()
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _examples(n: int) -> settings:
    # a deadline per example: a reader that hangs fails the test instead of stalling the suite
    return settings(
        max_examples=n, deadline=timedelta(seconds=20), suppress_health_check=[HealthCheck.function_scoped_fixture]
    )


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, bytes]:
    """One small valid volume per suffix (float data, an anisotropic affine), as bytes."""
    folder = tmp_path_factory.mktemp("valid")
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    out = {}
    for suffix in SUFFIXES:
        path = folder / f"valid{suffix}"
        if suffix.startswith(".nii"):
            nib.save(nib.Nifti1Image(array, np.diag([1.5, 2.0, 3.0, 1.0])), str(path))
        else:
            sitk.WriteImage(sitk.GetImageFromArray(array.transpose(2, 1, 0)), str(path), useCompression=False)
        out[suffix] = path.read_bytes()
    return out


def _check_read(path: Path) -> None:
    """The reader's contract: a usable volume, or ImageReadError 'PATH: problem'."""
    try:
        volume = read_image(path)
    except ImageReadError as e:
        assert e.path == path and str(e).startswith(f"{path}: ") and e.problem
        return
    assert isinstance(volume, Volume) and volume.array.ndim == 3 and volume.array.size > 0
    assert np.isfinite(volume.affine).all()
    if np.issubdtype(volume.array.dtype, np.floating):
        assert np.isfinite(volume.array).all()


def _mutate(data: bytes, cut: int | None, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data if cut is None else data[: cut % (len(data) + 1)])
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out)


mutations = st.tuples(
    st.sampled_from(SUFFIXES),
    st.one_of(st.none(), st.integers(0, 1 << 16)),
    # edits biased to the header (first 400 bytes: NIfTI's 348-byte header, NRRD/MHA text headers)
    st.lists(st.tuples(st.one_of(st.integers(0, 400), st.integers(0, 1 << 16)), st.integers(0, 255)), max_size=8),
)


def _fuzz_readers_mutated(folder: Path, valid: dict[str, bytes], case) -> None:
    suffix, cut, edits = case
    path = folder / f"mutated{suffix}"
    path.write_bytes(_mutate(valid[suffix], cut, edits))
    _check_read(path)


@_examples(40)
@given(suffix=st.sampled_from(SUFFIXES), data=st.binary(max_size=2048))
def test_readers_on_random_bytes(tmp_path, suffix, data):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    _check_read(path)


@_examples(120)
@given(case=mutations)
def test_readers_on_truncated_and_overwritten_files(tmp_path, valid, case):
    _fuzz_readers_mutated(tmp_path, valid, case)


@pytest.mark.slow
@_examples(3000)
@given(case=mutations)
def test_readers_on_truncated_and_overwritten_files_long(tmp_path, valid, case):
    _fuzz_readers_mutated(tmp_path, valid, case)


# -- datalist ------------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
_word = st.sampled_from(["image", "label", "boxes", "box_labels", "class", "domain", "mask", ""])
_name = st.sampled_from([*LM.box_classes, *LM.image_classes, "liver", "polyp", ""])
_number = st.one_of(st.integers(-(10**400), 10**400), st.floats(), st.sampled_from([True, "1"]))
near_items = st.dictionaries(
    _word,
    st.one_of(
        st.sampled_from(["a.nii.gz", "/abs/b.nii.gz", "", "../c.nii.gz"]),
        st.lists(st.lists(_number, min_size=5, max_size=7), max_size=3),
        st.lists(_name, max_size=3),
        _name,
        json_values,
    ),
    max_size=6,
)
near_datalists = st.dictionaries(
    st.sampled_from([*SPLITS, "label_map", "coordinates", "other"]),
    st.one_of(st.lists(near_items, max_size=3), json_values),
    max_size=5,
)


def _check_datalist(folder: Path, document) -> None:
    path = folder / "datalist.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    try:
        splits = load_datalist(path, check_files=False)
    except ValueError as e:
        assert str(path.resolve()) in str(e) or str(path) in str(e), str(e)
        return
    assert sorted(splits) == sorted(SPLITS)
    for items in splits.values():
        for item in items:
            assert isinstance(item["image"], str) and os.path.isabs(item["image"])
            if "boxes" in item:
                assert len(item["boxes"]) == len(item["box_labels"])
                assert all(len(b) == 6 and all(np.isfinite(b)) for b in item["boxes"])
                assert all(n in LM.box_classes for n in item["box_labels"]) or "label_map" in document
            if "class" in item:
                assert isinstance(item["class"], list)


@_examples(80)
@given(document=json_values)
def test_datalist_parser_on_any_json(tmp_path, document):
    _check_datalist(tmp_path, document)


@_examples(150)
@given(document=near_datalists)
def test_datalist_parser_on_near_valid_datalists(tmp_path, document):
    _check_datalist(tmp_path, document)


@pytest.mark.slow
@_examples(3000)
@given(document=near_datalists)
def test_datalist_parser_on_near_valid_datalists_long(tmp_path, document):
    _check_datalist(tmp_path, document)
