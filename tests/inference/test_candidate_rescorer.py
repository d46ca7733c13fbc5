"""The lesion candidates' false-positive reduction stage: features, fit, safe files, and its place in the predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimed_core.data.image_io import Volume
from unimed_core.inference.candidate_rescorer import (
    CandidateRescorer,
    bundle_rescorer,
    candidate_features,
    feature_names,
    fit_rescorer,
    load_rescorer,
    save_rescorer,
)
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_tiny
from unimed_core.model.weights import WeightsError, sha256_of
from unimed_core.synthetic.case import SyntheticConfig, generate_case

LM = LabelMap.default()
NAMES = [LM.class_names[c] for c in range(LM.num_mask_classes - 1)]  # liver, spleen, kidneys, cyst, tumor
BOX_CLASSES = LM.box_class_indices()


def _scene():
    """A 16³ working grid: liver everywhere on the left half (its label volume: liver there, background elsewhere), a
    bright 'tumour' blob inside it."""
    scores = torch.zeros(len(NAMES), 16, 16, 16)
    image = torch.full((16, 16, 16), -0.5)
    scores[0, :8] = 0.9
    tumor = NAMES.index("tumor")
    scores[tumor, 3:6, 4:7, 4:7] = 0.6
    image[3:6, 4:7, 4:7] = 0.8
    labels = torch.zeros((16, 16, 16), dtype=torch.long)
    labels[:8] = 1
    boxes = torch.tensor([[3.0, 4.0, 4.0, 6.0, 7.0, 7.0]])
    return boxes, torch.tensor([0.6]), torch.tensor([tumor]), scores, image, labels


def test_features_read_size_contrast_and_the_surrounding_organ():
    boxes, peaks, classes, scores, image, labels = _scene()
    features = candidate_features(boxes, peaks, classes, scores, image, BOX_CLASSES, 0.2, labels, [0.1, 0.7])
    names = feature_names(NAMES, BOX_CLASSES)
    assert features.shape == (1, len(names))
    row = dict(zip(names, features[0].tolist()))
    assert row["peak"] == pytest.approx(0.6)
    assert row["log_voxels"] == pytest.approx(np.log(27))
    assert row["fill"] == pytest.approx(1.0)
    assert row["image_mean"] == pytest.approx(0.8)
    assert row["contrast"] > 3  # bright on a flat darker surround (sd clamped)
    assert row["is_tumor"] == 1.0 and row["is_cyst"] == 0.0
    assert row["surround_liver"] > 0.5 and row["surround_spleen"] == 0.0
    assert row["image_probability_tumor"] == pytest.approx(0.7)


def test_no_candidates_give_an_empty_table_of_the_right_width():
    _, _, _, scores, image, labels = _scene()
    empty = candidate_features(torch.zeros((0, 6)), torch.zeros(0), torch.zeros(0, dtype=torch.long), scores, image,
                               BOX_CLASSES, 0.2, labels, [0.0, 0.0])  # fmt: skip
    assert empty.shape == (0, len(feature_names(NAMES, BOX_CLASSES)))


def test_a_fitted_rescorer_ranks_held_out_hits_above_false_candidates():
    rng = np.random.default_rng(0)

    def draw(n):  # a hit is known by the second feature (say, contrast), not by the first (the peak)
        hits = rng.random(n) < 0.4
        features = rng.normal(size=(n, 3))
        features[:, 1] += 2.0 * hits
        return torch.tensor(features, dtype=torch.float32), torch.tensor(hits.astype(np.int64))

    features, hits = draw(400)
    rescorer = fit_rescorer(features, hits, component_threshold=0.1, epochs=200)
    test_features, test_hits = draw(400)
    with torch.no_grad():
        p = rescorer(test_features).numpy()
    truth = test_hits.numpy().astype(bool)
    # AUC by counting pairs: well above chance (0.5) when the rescorer reads the informative column
    auc = (p[truth][:, None] > p[~truth][None, :]).mean()
    assert auc > 0.85


def test_fit_refuses_candidates_of_one_kind():
    with pytest.raises(ValueError, match="both true and false"):
        fit_rescorer(torch.zeros(5, 3), torch.ones(5, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="features must be"):
        fit_rescorer(torch.zeros(5, 3), torch.ones(4, dtype=torch.long), 0.1)


@pytest.mark.parametrize("kwargs", [dict(num_features=0), dict(num_features=3, hidden=0),
                                    dict(num_features=3, members=0), dict(num_features=3, component_threshold=0.0)])  # fmt: skip
def test_bad_rescorer_arguments(kwargs):
    with pytest.raises(ValueError):
        CandidateRescorer(**kwargs)


def test_wrong_number_of_features_is_refused():
    with pytest.raises(ValueError, match=r"features must be \(N, 4\)"):
        CandidateRescorer(4)(torch.zeros(2, 3))


def test_save_load_round_trip_and_hash_check(tmp_path):
    torch.manual_seed(0)
    rescorer = CandidateRescorer(4, hidden=8, members=3, component_threshold=0.2)
    rescorer.mean.fill_(0.5)
    path = tmp_path / "rescorer.pt"
    save_rescorer(rescorer, path)
    loaded = load_rescorer(path)
    x = torch.randn(3, 4)
    torch.testing.assert_close(loaded(x), rescorer(x))
    assert float(loaded.component_threshold) == pytest.approx(0.2) and len(loaded.members) == 3
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(WeightsError, match="sha256"):
        load_rescorer(path)
    with pytest.raises(WeightsError, match="not found"):
        load_rescorer(tmp_path / "missing.pt")


def test_the_bundle_uses_a_rescorer_only_with_the_weights_it_was_fitted_for(tmp_path, caplog):
    weights, other = tmp_path / "model.pt", tmp_path / "finetuned.pt"
    weights.write_bytes(b"the shipped weights")
    other.write_bytes(b"fine-tuned weights")
    rescorer = CandidateRescorer(4, weights_sha256=sha256_of(weights))
    save_rescorer(rescorer, tmp_path / "rescorer.pt")
    assert bundle_rescorer(None, weights) is None
    assert bundle_rescorer(tmp_path / "rescorer.pt", weights).fitted_for == sha256_of(weights)
    with caplog.at_level("WARNING"):
        assert bundle_rescorer(tmp_path / "rescorer.pt", other) is None
    assert "it is left out; refit it with benchmarks/candidate_rescorer.py" in caplog.text
    with pytest.raises(ValueError, match="64-character"):
        CandidateRescorer(4, weights_sha256="abc")


def test_a_rescorer_of_other_features_is_refused(tmp_path):
    rescorer = CandidateRescorer(4)
    rescorer.features_version.fill_(0)
    save_rescorer(rescorer, tmp_path / "old.pt")
    with pytest.raises(WeightsError, match="features version 0"):
        load_rescorer(tmp_path / "old.pt")


@pytest.fixture(scope="module")
def predictor_and_volume():
    torch.manual_seed(0)
    model = unimed_tiny(LM, max_sequence_length=32)
    case = generate_case(1, SyntheticConfig(shape=(40, 40, 32), spacing=(8.0, 8.0, 10.0), lesion_presence=1.0))
    predictor = UniMedPredictor(model, LM, spacing=(10.0, 10.0, 10.0), roi_size=(32, 32, 32), score_threshold=0.0,
                                detection_path="segmentation", component_threshold=0.05, nms_iou=1.0)  # fmt: skip
    return predictor, Volume(case.image, case.affine)


def test_the_predictor_scores_candidates_by_the_rescorer(predictor_and_volume):
    predictor, volume = predictor_and_volume
    predictor.rescorer = None
    plain = predictor.predict(volume)
    width = len(feature_names(NAMES, BOX_CLASSES))
    assert len(plain.boxes) > 0 and plain.box_features.shape == (len(plain.boxes), width)
    np.testing.assert_allclose(plain.box_features[:, 0], plain.box_scores, rtol=1e-6)  # the peak is the score
    torch.manual_seed(1)
    rescorer = CandidateRescorer(width, component_threshold=0.05)
    predictor.rescorer = rescorer
    try:
        rescored = predictor.predict(volume)
    finally:
        predictor.rescorer = None
    assert rescored.box_features.shape == (len(rescored.boxes), width) and len(rescored.boxes) > 0
    with torch.no_grad():  # each kept box's score is the rescorer's probability of its own features
        expected = rescorer(torch.from_numpy(rescored.box_features)).numpy()
    np.testing.assert_allclose(rescored.box_scores, expected, rtol=1e-5)
    assert not np.allclose(rescored.box_scores, rescored.box_features[:, 0])  # no longer the peaks
    # a lesion class's image probability: the mean of the head's and "at least one candidate is true" (noisy-OR)
    for name in LM.box_classes:
        own = rescored.box_scores[np.array(rescored.box_labels) == name]
        found = 1.0 - np.prod(1.0 - own)
        expected = 0.5 * (plain.class_probabilities[name] + found)
        assert rescored.class_probabilities[name] == pytest.approx(expected, rel=1e-5)


def test_a_rescorer_fitted_at_another_component_threshold_is_refused(predictor_and_volume):
    predictor, volume = predictor_and_volume
    predictor.rescorer = CandidateRescorer(len(feature_names(NAMES, BOX_CLASSES)), component_threshold=0.3)
    try:
        with pytest.raises(ValueError, match="component threshold 0.3"):
            predictor.predict(volume)
    finally:
        predictor.rescorer = None


def test_the_shipped_rescorer_was_fitted_for_the_shipped_weights():
    """Replacing bundle/models/model.pt without refitting the rescorer would silently fall back to the peaks (with a
    warning): the bundle must ship the pair."""
    from unimed_core.paths import DEFAULT_RESCORER, DEFAULT_WEIGHTS

    rescorer = load_rescorer(DEFAULT_RESCORER)
    assert rescorer.fitted_for == sha256_of(DEFAULT_WEIGHTS)
    assert len(rescorer.members) == 5 and rescorer.num_features == len(feature_names(NAMES, BOX_CLASSES))
