"""The reporting cut's FROC: hits, false positives per scan and the cut chosen for a false-positive budget."""

from __future__ import annotations

import numpy as np

from benchmarks.reporting_cut import choose_cut, froc

LESION = [10.0, 10.0, 10.0, 20.0, 20.0, 20.0]
ELSEWHERE = [50.0, 50.0, 50.0, 60.0, 60.0, 60.0]


def test_froc_counts_hits_of_the_right_class_once_and_every_other_detection_as_false():
    pred = [
        # scan 1: the lesion (class 0) found at 0.9, found again at 0.6 (a duplicate: false), a false one at 0.4
        (np.array([LESION, LESION, ELSEWHERE]), np.array([0.9, 0.6, 0.4]), np.array([0, 0, 0])),
        # scan 2: the right place with the wrong class (false), the lesion missed
        (np.array([LESION]), np.array([0.8]), np.array([0])),
    ]
    truth = [(np.array([LESION]), np.array([0])), (np.array([LESION]), np.array([1]))]
    rows = {r["cut"]: r for r in froc(pred, truth, cuts=(0.3, 0.5, 0.95))}
    assert rows[0.3]["sensitivity"] == 0.5 and rows[0.3]["fp_per_scan"] == 1.5  # 3 false over 2 scans
    assert rows[0.5]["sensitivity"] == 0.5 and rows[0.5]["fp_per_scan"] == 1.0
    assert rows[0.95]["sensitivity"] == 0.0 and rows[0.95]["fp_per_scan"] == 0.0
    assert rows[0.3]["detections_per_scan"] == 2.0


def test_the_cut_is_the_most_sensitive_one_within_the_false_positive_budget():
    rows = [{"cut": 0.1, "fp_per_scan": 3.0}, {"cut": 0.3, "fp_per_scan": 0.9}, {"cut": 0.5, "fp_per_scan": 0.2}]
    assert choose_cut(rows, 1.0) == 0.3
    assert choose_cut(rows, 5.0) == 0.1
    assert choose_cut(rows, 0.1) == 0.5  # no cut within the budget: the strictest
