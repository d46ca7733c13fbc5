"""The image-label fusion benchmark's rules."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.image_label_fusion import RULES, noisy_or


def test_noisy_or_is_the_chance_that_at_least_one_candidate_is_true():
    assert noisy_or([]) == 0.0
    assert noisy_or([0.5]) == pytest.approx(0.5)
    assert noisy_or([0.5, 0.5]) == pytest.approx(0.75)
    assert noisy_or([1.0, 0.2]) == pytest.approx(1.0)


def test_rules_combine_the_head_and_the_candidates():
    head, found = np.array([0.2, 0.9]), np.array([0.6, 0.1])
    np.testing.assert_allclose(RULES["image head"](head, found), head)
    np.testing.assert_allclose(RULES["noisy-OR of the candidates"](head, found), found)
    np.testing.assert_allclose(RULES["mean"](head, found), [0.4, 0.5])
    np.testing.assert_allclose(RULES["maximum"](head, found), [0.6, 0.9])
