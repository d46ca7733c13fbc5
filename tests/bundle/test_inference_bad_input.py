"""inference.json on a corrupt input: the run stops with the reader's error naming the file and writes nothing."""

from __future__ import annotations

import pytest

from tests.bundle.test_inference_config import _workflow
from unimed_core.errors import ImageReadError


def _error_chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_corrupt_input_stops_the_run_naming_the_file(weights, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = inputs / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 truncated")
    out = tmp_path / "out"
    workflow = _workflow(weights, out, input_path=str(inputs))
    workflow.initialize()
    with pytest.raises(Exception) as info:
        workflow.run()
    errors = [e for e in _error_chain(info.value) if isinstance(e, ImageReadError)]
    assert errors and errors[0].path == bad and "corrupt or truncated NIfTI" in errors[0].problem
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
