"""Familiarity checks: features from voxels and geometry, nearest-training-scan scores, warnings with reasons.

Nothing here runs a model: the signals are those that survive a retrain. The shipped statistics file is checked
against generated studies like the training data (no warning) and nilearn's MNI152 brain (a warning).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from unimed_core.data.image_io import Volume
from unimed_core.inference.familiarity import (
    FEATURES,
    FamiliarityReference,
    familiarity_warnings,
    uncertainty_warning,
    volume_features,
    warning_lines,
)
from unimed_core.paths import BUNDLE_DIR
from unimed_core.synthetic.case import SyntheticConfig, generate_case

# the generated field of view (384 x 384 x 360 mm) on a coarse grid, CT and MR
CONFIG = {"shape": (48, 48, 40), "spacing": (8.0, 8.0, 9.0)}
SHIPPED = BUNDLE_DIR / "configs" / "familiarity.json"


def _case(seed: int, domain: str = "ct") -> Volume:
    case = generate_case(seed, SyntheticConfig(domain=domain, **CONFIG))
    return Volume(case.image, case.affine)


@pytest.fixture(scope="module")
def reference() -> FamiliarityReference:
    scans = [_case(s, d) for s in range(6) for d in ("ct", "mr")]
    return FamiliarityReference([volume_features(v) for v in scans], {"region": 3.0, "intensity": 3.0})


def test_features_are_named_and_measure_the_field_of_view():
    volume = _case(0)
    features = volume_features(volume)
    assert list(features) == list(FEATURES)
    fov = [math.exp(features[f"fov_{a}"]) for a in "RAS"]
    np.testing.assert_allclose(fov, [384.0, 384.0, 360.0])
    body = [math.exp(features[f"body_{a}"]) for a in "RAS"]
    assert all(100 < b <= f for b, f in zip(body, fov))
    assert 0 < features["body_fraction"] < 1
    quantiles = [features[f"q{q}"] for q in (10, 25, 50, 75, 90)]
    assert quantiles == sorted(quantiles) and 0 <= quantiles[0] and quantiles[-1] <= 1


def test_features_do_not_change_with_a_linear_rescaling_or_a_flip():
    volume = _case(1, "mr")
    rescaled = Volume(volume.array * 3.5 - 1000.0, volume.affine)
    flipped = Volume(volume.array[::-1].copy(), volume.affine @ np.diag([-1.0, 1, 1, 1]))
    base = volume_features(volume)
    for other in (rescaled, flipped):
        assert volume_features(other) == pytest.approx(base, abs=1e-4)


def test_scans_like_the_reference_get_no_warning(reference):
    for seed, domain in ((10, "ct"), (11, "mr"), (12, "ct")):
        assert familiarity_warnings(_case(seed, domain), reference) == []


def test_another_field_of_view_warns_about_the_region_and_says_why(reference):
    volume = _case(13)
    slab = Volume(volume.array[:, :, 15:26].copy(), volume.affine)  # 99 mm along S
    (warning,) = familiarity_warnings(slab, reference)
    assert warning["signal"] == "region" and warning["score"] > warning["limit"]
    assert "field of view along S 99 mm (training 360-360)" in warning["message"]
    assert warning_lines([warning])[0].startswith("warning (region): the body region or field of view")


def test_a_body_that_fills_the_field_of_view_is_said_so_not_as_an_extent():
    from unimed_core.inference.familiarity import _describe

    assert _describe("body_fraction", 0.9, 0.35, 0.45) == "body fills 90% of the field of view (training 35-45%)"
    assert _describe("body_S", math.log(99.0), math.log(300), math.log(360)).startswith("body extent along S 99 mm")


def test_a_contrast_never_seen_warns_about_the_intensities(reference):
    volume = _case(14, "mr")
    inverted = Volume(volume.array.max() - volume.array, volume.affine)
    signals = {w["signal"]: w for w in familiarity_warnings(inverted, reference)}
    assert "intensity" in signals
    assert "intensity percentile" in signals["intensity"]["message"]


def test_a_constant_volume_gets_a_warning_not_an_error(reference):
    (warning,) = familiarity_warnings(Volume(np.zeros((8, 8, 8), np.float32), np.eye(4)), reference)
    assert warning["message"].startswith("cannot check the scan:") and "constant" in warning["message"]


def test_round_trip_and_bad_files(tmp_path, reference):
    path = reference.save(tmp_path / "familiarity.json")
    loaded = FamiliarityReference.load(path)
    features = volume_features(_case(20))
    assert loaded.limits == reference.limits
    assert loaded.scores(features) == pytest.approx(reference.scores(features), abs=1e-4)
    (tmp_path / "bad.json").write_text('{"features": [{"fov_R": 1}]}')
    with pytest.raises(ValueError, match="bad.json: not a familiarity statistics file"):
        FamiliarityReference.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not a familiarity statistics file"):
        FamiliarityReference.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"features": []}, "at least one training scan"),
        ({"features": [{"fov_R": 1.0}]}, "lacks the features"),
        ({"limits": {"colour": 1.0}}, "limits must map signals"),
        ({"limits": {"region": -1.0}}, "limits must map signals"),
    ],
)
def test_bad_reference_arguments(kwargs, message):
    arguments = {"features": [{k: 0.0 for k in FEATURES}], **kwargs}
    with pytest.raises(ValueError, match=message):
        FamiliarityReference(**arguments)


def test_uncertainty_warns_only_with_a_calibrated_limit():
    rows = [{k: 0.0 for k in FEATURES}]
    unsure = {"mask": 0.9, "boxes": 0.8, "image": 0.7, "combined": 0.8}
    assert uncertainty_warning(unsure, FamiliarityReference(rows)) == []
    calibrated = FamiliarityReference(rows, {"uncertainty": 0.5})
    (warning,) = uncertainty_warning(unsure, calibrated)
    assert warning["signal"] == "uncertainty" and "0.80 > 0.50" in warning["message"]
    assert uncertainty_warning({**unsure, "combined": 0.2}, calibrated) == []


def test_shipped_statistics_know_generated_abdomens_and_not_a_brain():
    """The statistics file the predictor reads (regenerated by benchmarks/familiarity_calibration.py)."""
    shipped = FamiliarityReference.load(SHIPPED)
    assert set(shipped.limits) >= {"region", "intensity"} and len(shipped.features) >= 20
    for seed, domain in ((30, "ct"), (31, "mr")):
        assert familiarity_warnings(_case(seed, domain), shipped) == []
    nilearn = pytest.importorskip("nilearn.datasets")
    t1 = nilearn.load_mni152_template(resolution=2)
    brain = Volume(np.asarray(t1.dataobj, np.float32), t1.affine)
    assert "region" in {w["signal"] for w in familiarity_warnings(brain, shipped)}
