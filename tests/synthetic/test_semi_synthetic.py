"""Tests of semi-synthetic studies on real anatomy (unimed_core.synthetic.semi_synthetic)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from unimed_core.data.datalist import load_datalist
from unimed_core.synthetic.semi_synthetic import (
    SOURCES,
    available_sources,
    load_source,
    main,
    make_semi_synthetic_case,
    make_semi_synthetic_dataset,
    semi_synthetic_label_map,
)

STRIDE = 3  # 1 mm sources read every third voxel: small and quick


def _source(name: str) -> str:
    reason = available_sources()[name]
    if reason is not None:
        pytest.skip(f"semi-synthetic source {name!r} unavailable: {reason}")
    return name


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_lesions_inserted_keep_real_labels(name):
    source = _source(name)
    vol = load_source(source, STRIDE)
    lm = semi_synthetic_label_map(vol.tissue_names)
    assert [lm.mask_classes[i] for i in range(1, len(vol.tissue_names) + 1)] == list(vol.tissue_names)
    for t in range(1, len(vol.tissue_names) + 1):
        assert (vol.tissue == t).sum() > 100, vol.tissue_names[t - 1]
    case = make_semi_synthetic_case(1, source, stride=STRIDE, lesion_presence=1.0, lesion_radius_mm=(8.0, 14.0))
    assert case.image.shape == case.label.shape == vol.tissue.shape and case.image.dtype == np.float32
    lesion = case.label > len(vol.tissue_names)
    assert lesion.any()
    np.testing.assert_array_equal(case.label[~lesion], vol.tissue[~lesion])  # real labels kept
    assert vol.brain[lesion].all()  # lesions inside the brain
    ids = {lm.mask_classes[int(i)] for i in np.unique(case.label[lesion])}
    assert ids == set(case.image_labels) == set(case.box_labels)
    for les in case.lesions:
        pts = np.argwhere(case.label == les.mask_id) @ case.affine[:3, :3].T + case.affine[:3, 3]
        box = np.array(les.box_mm)
        assert ((pts >= box[:3]) & (pts <= box[3:])).all(axis=1).sum() >= les.num_voxels
    cyst = case.label == lm.class_index("cyst") + 1
    if cyst.any():  # fluid is dark on T1, darker than the brain around it
        assert case.image[cyst].mean() < 0.5 * case.image[vol.brain & ~lesion].mean()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_semi_synthetic_case_is_seeded(name):
    source = _source(name)
    a = make_semi_synthetic_case(4, source, stride=STRIDE)
    b = make_semi_synthetic_case(4, source, stride=STRIDE)
    c = make_semi_synthetic_case(5, source, stride=STRIDE)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)


def test_dataset_writes_own_label_map_and_is_deterministic(tmp_path):
    source = next((n for n, reason in available_sources().items() if reason is None), None)
    if source is None:
        pytest.skip(f"no semi-synthetic source available: {available_sources()}")
    kw = {"source": source, "stride": STRIDE, "n_validation": 1, "n_test": 0, "levels": {"mask": 0.5, "none": 0.5}}
    a = make_semi_synthetic_dataset(tmp_path / "a", 3, seed=2, **kw)
    b = make_semi_synthetic_dataset(tmp_path / "b", 3, seed=2, **kw)
    files = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*") if p.is_file())
    assert len(files) == 7
    for f in files:
        assert (
            hashlib.sha256((a.parent / f).read_bytes()).digest() == hashlib.sha256((b.parent / f).read_bytes()).digest()
        )
    out = load_datalist(a)  # uses the datalist's own label map
    assert len(out["training"]) == 1 and len(out["unlabeled"]) == 1 and len(out["validation"]) == 1
    assert "label" in out["validation"][0] and out["validation"][0]["domain"] == "mr"


def test_unknown_source_and_listing(capsys):
    with pytest.raises(ValueError, match="unknown source 'ixi'; known sources"):
        load_source("ixi")
    reasons = available_sources()
    assert set(reasons) == set(SOURCES) and all(r is None or isinstance(r, str) for r in reasons.values())
    assert main(["--list"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in SOURCES)


def test_missing_source_is_reported_with_what_to_install(monkeypatch, tmp_path, capsys):
    import unimed_core.synthetic.semi_synthetic as semi

    monkeypatch.setattr(semi, "MRICRON_TEMPLATES", tmp_path / "nowhere")
    reason = available_sources()["colin27"]
    assert reason is not None and "mricron-data" in reason
    with pytest.raises(ValueError, match="source 'colin27' is not available: Debian package mricron-data"):
        load_source("colin27", 7)
    assert main(["--out", str(tmp_path / "out"), "--source", "colin27"]) == 2
    assert "skipping source 'colin27'" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
