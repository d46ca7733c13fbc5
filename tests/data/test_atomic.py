"""Atomic writes: complete file or nothing, never a stray temporary file."""

from __future__ import annotations

import json

import pytest

from unimed_core.data.atomic import atomic_write, atomic_write_json, atomic_write_text


def test_success_replaces_file(tmp_path):
    out = tmp_path / "a.json"
    atomic_write_json(out, {"x": 1})
    atomic_write_json(out, {"x": 2})
    assert json.loads(out.read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_temp_file_is_in_same_folder_with_suffix(tmp_path):
    with atomic_write(tmp_path / "v.nii.gz", ".nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and tmp != tmp_path / "v.nii.gz"
        tmp.write_bytes(b"data")
    assert (tmp_path / "v.nii.gz").read_bytes() == b"data"


def test_failure_leaves_no_file_and_no_temp(tmp_path):
    out = tmp_path / "b.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(out, ".txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_content(tmp_path):
    out = atomic_write_text(tmp_path / "c.txt", "old")
    with pytest.raises(ValueError):
        atomic_write_json(out, {"bad": float("nan")})  # NaN is not JSON; nothing may be written
    with pytest.raises(TypeError):
        atomic_write_json(out, {"bad": object()})
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        atomic_write_text(tmp_path / "no" / "d.txt", "x")


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = atomic_write_text(tmp_path / "result.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
