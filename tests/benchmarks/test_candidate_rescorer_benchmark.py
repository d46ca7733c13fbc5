"""The rescorer benchmark's bookkeeping: which candidates are hits, pooled study sets, mAP under other scores."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.candidate_rescorer import _pooled, candidate_hits, detection_summary

LESION = [10.0, 10.0, 10.0, 20.0, 20.0, 20.0]
ELSEWHERE = [50.0, 50.0, 50.0, 60.0, 60.0, 60.0]
NAMES = ["cyst", "tumor"]


def test_a_hit_overlaps_a_lesion_of_its_own_class():
    boxes = np.array([LESION, LESION, ELSEWHERE])
    hits = candidate_hits(boxes, ["cyst", "tumor", "cyst"], np.array([LESION]), ["cyst"])
    assert hits.tolist() == [1, 0, 0]  # the tumour box on the cyst is not a hit; nor is the box elsewhere
    assert candidate_hits(boxes, ["cyst"] * 3, np.zeros((0, 6)), []).tolist() == [0, 0, 0]


def _table(scores_of_true: float, scores_of_false: float) -> dict:
    """Two studies, a cyst in each; study 0 has the cyst found and a false candidate, study 1 only a false one."""
    return {
        "boxes": np.array([LESION, ELSEWHERE, ELSEWHERE]),
        "classes": np.array([0, 0, 0]),
        "study": np.array([0, 0, 1]),
        "peaks": np.array([scores_of_true, scores_of_false, scores_of_false]),
        "truth_boxes": np.array([LESION, LESION]),
        "truth_classes": np.array([0, 0]),
        "truth_study": np.array([0, 1]),
        "studies": np.array(2),
    }


def test_a_ranking_that_puts_the_hit_first_scores_higher():
    table = _table(0.4, 0.9)
    peaks = detection_summary(table, table["peaks"], NAMES)
    rescored = detection_summary(table, np.array([0.9, 0.1, 0.1]), NAMES)
    assert rescored["AP@0.10/cyst"] > peaks["AP@0.10/cyst"]
    assert rescored["recall@0.10/cyst"] == peaks["recall@0.10/cyst"] == pytest.approx(0.5)  # same candidates


def test_pooled_sets_keep_their_studies_apart():
    pooled = _pooled([_table(0.4, 0.9), _table(0.4, 0.9)])
    assert int(pooled["studies"]) == 4
    assert pooled["study"].tolist() == [0, 0, 1, 2, 2, 3]
    assert pooled["truth_study"].tolist() == [0, 1, 2, 3]
    summary = detection_summary(pooled, pooled["peaks"], NAMES)
    assert summary["recall@0.10/cyst"] == pytest.approx(0.5)
