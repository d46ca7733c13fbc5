"""The module's own ``UniMedTest`` (what Slicer's "Reload and Test" and ctest run), run here on slicer-core."""

from __future__ import annotations

import pytest

pytest.importorskip("slicer")


@pytest.mark.slow
def test_module_self_test_runs(mrml_scene, shipped_weights, monkeypatch):
    from UniMed import UniMedTest

    monkeypatch.setattr(UniMedTest, "weights", str(shipped_weights))
    case = UniMedTest("runTest")
    case.runTest()
