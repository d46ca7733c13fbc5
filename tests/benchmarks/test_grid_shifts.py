"""The grid-shift benchmark's choice: the best organ Dice on the tuning studies, fewer passes on a tie."""

from __future__ import annotations

from benchmarks.grid_shifts import choose

SHIFTS = {"none": (), "1/2": (0.5,), "1/3, 2/3": (1 / 3, 2 / 3)}


def _rows(*dice):
    return {name: {"dice/organs_mean": d} for name, d in zip(SHIFTS, dice)}


def test_the_best_organ_dice_wins():
    assert choose(_rows(0.880, 0.884, 0.890), SHIFTS, tie=0.002) == "1/3, 2/3"


def test_a_tie_goes_to_fewer_passes():
    assert choose(_rows(0.880, 0.8885, 0.890), SHIFTS, tie=0.002) == "1/2"
    assert choose(_rows(0.8895, 0.8885, 0.890), SHIFTS, tie=0.002) == "none"
