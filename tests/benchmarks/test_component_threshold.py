"""The component-threshold benchmark chooses on the tuning studies' mAP@0.1, ties to the stricter rule."""

from __future__ import annotations

from benchmarks.component_threshold import THRESHOLDS, _name, choose


def _rows(*maps):
    return {_name(t): {"mAP@0.10": m} for t, m in zip(THRESHOLDS, maps)}


def test_choose_takes_the_best_tuning_map():
    assert choose(_rows(0.11, 0.12, 0.15, 0.17, 0.15, 0.15)) == "score >= 0.2"


def test_choose_breaks_a_tie_towards_the_stricter_rule():
    assert choose(_rows(0.1, 0.2, 0.2, 0.2, 0.1, 0.0)) == "score >= 0.5"
    assert choose(_rows(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)) == "label volume"  # nothing found: keep the old rule


def test_choose_reads_a_missing_map_as_zero():
    assert choose(_rows(None, None, 0.05, None, None, None)) == "score >= 0.3"
