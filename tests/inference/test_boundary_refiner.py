"""The organ boundary refiner: band features, a fit that reads the intensities, safe files, its place in the
predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimed_core.data.image_io import Volume
from unimed_core.inference.boundary_refiner import (
    FEATURE_NAMES,
    BoundaryRefiner,
    band_features,
    bundle_boundary_refiner,
    fit_boundary_refiner,
    load_boundary_refiner,
    save_boundary_refiner,
)
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_tiny
from unimed_core.model.weights import WeightsError, sha256_of
from unimed_core.synthetic.case import SyntheticConfig, generate_case

LM = LabelMap.default()
K = LM.num_mask_classes - 1  # foreground classes: liver, spleen, kidneys, cyst, tumor


def _study(seed: int, size: int = 24):
    """A ball organ (mask id 1) brighter than its surroundings, in noise, and the 'network's' score of it: a soft
    ball of the same radius shifted by 1.5 voxels along a random axis and sign, so its boundary is a voxel or two
    off on two sides while the intensities show where it is."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij")).astype(np.float32)
    centre = np.full(3, size / 2 - 0.5) + rng.uniform(-1, 1, 3)
    truth = np.linalg.norm(grid - centre[:, None, None, None], axis=0) <= 6.5
    image = np.where(truth, 0.6, -0.2) + rng.normal(0, 0.1, truth.shape)
    shifted = centre.copy()
    shifted[rng.integers(3)] += rng.choice([-1.5, 1.5])
    distance = np.linalg.norm(grid - shifted[:, None, None, None], axis=0)
    scores = torch.zeros(K, size, size, size)
    scores[0] = torch.from_numpy(1 / (1 + np.exp(distance - 6.5))).float()
    labels = (scores[0] >= 0.5).long()  # mask id 1 where the score wins
    return torch.from_numpy(image.astype(np.float32)), scores, labels, truth


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_band_features_cover_the_voxels_either_side_of_the_boundary():
    image, scores, labels, _ = _study(0)
    box, band, features = band_features(image, scores, labels, 1)
    organ = labels.numpy()[box] == 1
    assert features.shape == (int(band.sum()), len(FEATURE_NAMES))
    assert band[organ].any() and band[~organ].any()  # inside and outside the predicted organ
    assert not band[organ].all()  # not the organ's core
    own = scores[0].numpy()[box][band].clip(1e-4, 1 - 1e-4)
    np.testing.assert_allclose(features[:, 0].numpy(), np.log(own / (1 - own)), rtol=1e-5, atol=1e-5)
    assert features[:, 1:].abs().max() <= 20.0
    assert band_features(image, scores, torch.zeros_like(labels), 1) is None  # no organ predicted


def test_a_fitted_refiner_moves_a_displaced_boundary_to_the_intensity_edge():
    """The scores are off by 1.5 voxels, the intensities are not: a refiner that reads both must beat the scores on
    studies it was not fitted on (one that ignored the intensities could not)."""
    fit = [_study(seed) for seed in range(6)]
    samples = {}
    for image, scores, labels, truth in fit:
        box, band, features = band_features(image, scores, labels, 1)
        samples.setdefault(1, []).append((features, torch.from_numpy(truth[box][band]).float()))
    samples = {m: (torch.cat([f for f, _ in s]), torch.cat([t for _, t in s])) for m, s in samples.items()}
    refiner = fit_boundary_refiner(samples, spacing=4.0, epochs=200, weights_sha256="a" * 64)
    for seed in (10, 11):
        image, scores, labels, truth = _study(seed)
        refined = refiner.refine(image, scores, labels)
        assert torch.equal(refined[1:], scores[1:])  # only the organs it has a model for
        before, after = _dice(labels.numpy() == 1, truth), _dice(refined[0].numpy() >= 0.5, truth)
        assert after > before + 0.05, (before, after)


def test_a_refiner_is_saved_and_loaded_behind_its_hash(tmp_path):
    refiner = BoundaryRefiner([1, 2, 3, 4], spacing=4.0, hidden=8, weights_sha256="b" * 64)
    digest = save_boundary_refiner(refiner, tmp_path / "refiner.pt")
    loaded = load_boundary_refiner(tmp_path / "refiner.pt")
    assert digest == sha256_of(tmp_path / "refiner.pt")
    assert loaded.mask_ids.tolist() == [1, 2, 3, 4] and loaded.grid_spacing == (4.0, 4.0, 4.0)
    assert loaded.fitted_for == "b" * 64
    features = torch.randn(5, len(FEATURE_NAMES))
    torch.testing.assert_close(loaded(features, 3), refiner(features, 3))
    with pytest.raises(ValueError, match="no boundary model for mask id 5"):
        loaded(features, 5)
    (tmp_path / "refiner.pt").write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="sha256"):
        load_boundary_refiner(tmp_path / "refiner.pt")
    refiner.features_version.fill_(0)
    save_boundary_refiner(refiner, tmp_path / "old.pt")
    with pytest.raises(WeightsError, match="band features version 0"):
        load_boundary_refiner(tmp_path / "old.pt")


def test_the_bundle_uses_a_refiner_only_with_the_weights_it_was_fitted_for(tmp_path, caplog):
    weights, other = tmp_path / "model.pt", tmp_path / "finetuned.pt"
    weights.write_bytes(b"the shipped weights")
    other.write_bytes(b"fine-tuned weights")
    save_boundary_refiner(BoundaryRefiner([1], weights_sha256=sha256_of(weights)), tmp_path / "refiner.pt")
    assert bundle_boundary_refiner(None, weights) is None
    assert bundle_boundary_refiner(tmp_path / "refiner.pt", weights).fitted_for == sha256_of(weights)
    with caplog.at_level("WARNING"):
        assert bundle_boundary_refiner(tmp_path / "refiner.pt", other) is None
    assert "refit it with benchmarks/boundary_refiner.py" in caplog.text


def test_the_predictor_decides_the_organs_from_the_refined_scores():
    torch.manual_seed(0)
    model = unimed_tiny(LM, max_sequence_length=32)
    case = generate_case(1, SyntheticConfig(shape=(40, 40, 32), spacing=(8.0, 8.0, 10.0)))
    volume = Volume(case.image, case.affine)
    predictor = UniMedPredictor(model, LM, spacing=(10.0, 10.0, 10.0), roi_size=(32, 32, 32), mask_threshold=0.3)
    plain = predictor.predict(volume)
    prepared = predictor.prepare(volume)
    scores = predictor.class_scores(volume, prepared)
    assert predictor.boundary_scores(volume, scores, prepared)[0] is scores  # no refiner: the scores themselves
    refiner = BoundaryRefiner([1, 2, 3, 4], spacing=8.0)
    for member in refiner.members:  # every band voxel: not the organ
        torch.nn.init.zeros_(member[2].weight)
        torch.nn.init.constant_(member[2].bias, -20.0)
    predictor.boundary_refiner = refiner
    refined, grid = predictor.boundary_scores(volume, scores, prepared)
    assert grid.affine[0, 0] == pytest.approx(8.0) and refined.shape[1:] == grid.image.shape[1:]
    organs = (plain.labels >= 1) & (plain.labels <= 4)
    assert organs.sum() > 0, "the tiny model should claim some organ voxels at threshold 0.3"
    eroded = predictor.predict(volume).labels
    assert ((eroded >= 1) & (eroded <= 4)).sum() < organs.sum()  # the bands were taken off


def test_the_shipped_refiner_was_fitted_for_the_shipped_weights():
    """Replacing bundle/models/model.pt without refitting the refiner would silently draw the organs from the scores
    alone (with a warning): the bundle must ship the pair."""
    from unimed_core.paths import DEFAULT_BOUNDARY_REFINER, DEFAULT_WEIGHTS

    refiner = load_boundary_refiner(DEFAULT_BOUNDARY_REFINER)
    assert refiner.fitted_for == sha256_of(DEFAULT_WEIGHTS)
    assert [LM.mask_classes[m] for m in refiner.mask_ids.tolist()] == ["liver", "spleen", "kidney_left", "kidney_right"]
