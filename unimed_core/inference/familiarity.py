"""Is this scan like the ones the model was trained on? Measured signals, each with a reason (DESIGN.md §5).

A model trained on generated abdomens answers confidently on a brain MR or a lung CT; nothing in its outputs
says so. This module compares a volume with statistics of the training scans and says, per signal, why it looks
unfamiliar. The results are still returned; the warnings go beside them.

Two signals do not depend on the weights, so a retrained model keeps them (their statistics only change with the
training data):

- ``region``: body region and field of view: the field of view's extent along R, A, S (the grid's own axes, each
  given to the world axis it is closest to), the body's extent (the
  1st to 99th percentile of its voxels' world coordinates; the body is what lies above the background level that
  ``normalize_intensity`` also uses), and the fraction of the field of view the body fills;
- ``intensity``: the shape of the body's intensity histogram: its 10th..90th percentiles placed within its own
  1st-99th percentile range, which is unchanged by any linear rescaling (MR units, CT offsets), as the model's
  own normalisation is, but differs between an abdomen and a head, or a contrast the model never saw.

A third, ``uncertainty``, is the model's own (normalised entropies over the three tasks, as MONAI Label's
active learning computes them, ``monailabel_app/lib/uncertainty.py``); it depends on the weights, so its limit is
only applied when the statistics file holds one for the weights in use.

The score of a signal is the distance to the *nearest* training scan, in units of each feature's spread
(``max(floor, 1.4826 * MAD)`` over the training scans), the largest over the signal's features: the training
data mix CT and MR, so one mean per feature would blur both. A signal warns when its score exceeds its limit,
calibrated on held-out studies (``benchmarks/familiarity_calibration.py``, ``docs/reliability.md``).

The statistics file (``bundle/configs/familiarity.json``) is written by one command from a datalist::

    python -m benchmarks.familiarity_calibration --datalist data/learning-cpu/datalist.json
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nibabel.orientations import io_orientation

from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.image_io import Volume

__all__ = [
    "FEATURES",
    "SIGNALS",
    "FamiliarityReference",
    "volume_features",
    "familiarity_warnings",
    "uncertainty_warning",
    "warning_lines",
]

AXES = ("R", "A", "S")
_QUANTILES = (10, 25, 50, 75, 90)
# feature name → (signal, floor of its spread). Extents are logarithms of mm: a floor of 0.1 is about 10 %.
FEATURES: dict[str, tuple[str, float]] = {
    **{f"fov_{a}": ("region", 0.1) for a in AXES},
    **{f"body_{a}": ("region", 0.1) for a in AXES},
    "body_fraction": ("region", 0.05),
    **{f"q{q}": ("intensity", 0.02) for q in _QUANTILES},
}
SIGNALS = ("region", "intensity", "uncertainty")
_MAX_SAMPLES = 2_000_000
_BACKGROUND = 0.05  # as normalize_intensity: below lo + 5 % of the robust range is air / outside the body


def volume_features(volume: Volume) -> dict[str, float]:
    """The features of ``volume`` (names in :data:`FEATURES`), from its voxels and affine; no model involved.

    Raises:
        ValueError: the volume has (nearly) constant intensities or no voxels above its background level.
    """
    array = np.asarray(volume.array)
    shape = np.asarray(array.shape, dtype=np.float64)
    step = max(1, int(math.ceil((array.size / _MAX_SAMPLES) ** (1 / 3))))
    sample = array[::step, ::step, ::step].astype(np.float32, copy=False)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if not hi - lo > 1e-6 * max(1.0, abs(hi)):
        raise ValueError(f"{volume.path or 'volume'}: intensities are constant (or nearly so)")
    body = sample > lo + _BACKGROUND * (hi - lo)
    if body.sum() < 10:
        raise ValueError(f"{volume.path or 'volume'}: nothing above the background level")
    affine = np.asarray(volume.affine, dtype=np.float64)
    # the grid's extent along each of its own axes (what the model's working grid spans, oblique or not), given to
    # the world axis R, A or S that array axis is closest to
    fov = np.zeros(3)
    for axis, world in enumerate(io_orientation(affine)[:, 0].astype(int)):  # a permutation, even at 45 degrees
        fov[world] = np.linalg.norm(affine[:3, axis]) * shape[axis]
    ijk = np.argwhere(body).astype(np.float64) * step
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    voxel = np.abs(affine[:3, :3]) @ np.ones(3)
    extent = np.percentile(world, 99, axis=0) - np.percentile(world, 1, axis=0) + voxel
    values = sample[body]
    p1, p99 = np.percentile(values, [1, 99])
    quantiles = (np.percentile(values, _QUANTILES) - p1) / max(float(p99 - p1), 1e-6)
    out = {f"fov_{a}": math.log(max(float(v), 1e-3)) for a, v in zip(AXES, fov)}
    out.update({f"body_{a}": math.log(max(float(v), 1e-3)) for a, v in zip(AXES, extent)})
    out["body_fraction"] = float(body.mean())
    out.update({f"q{q}": float(v) for q, v in zip(_QUANTILES, quantiles)})
    return out


@dataclass
class FamiliarityReference:
    """Statistics of the training scans and the limits of each signal.

    Args:
        features: one dict of :data:`FEATURES` per training scan.
        limits: signal → the score above which it warns (``region``, ``intensity``; ``uncertainty`` optional).
        source: where the statistics came from (the datalist), for the record.
        weights_sha256: the weights the ``uncertainty`` limit was calibrated for (None: not calibrated).

    Example:
        >>> ref = FamiliarityReference([{k: 0.0 for k in FEATURES}, {k: 1.0 for k in FEATURES}], {"region": 4.0})
        >>> round(ref.scores({k: 0.5 for k in FEATURES})["region"], 2)
        0.67
    """

    features: list[dict[str, float]]
    limits: dict[str, float] = field(default_factory=dict)
    source: str = ""
    weights_sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("a familiarity reference needs the features of at least one training scan")
        for i, row in enumerate(self.features):
            missing = set(FEATURES) - set(row)
            if missing:
                raise ValueError(f"training scan {i} lacks the features {sorted(missing)}")
        unknown = set(self.limits) - set(SIGNALS)
        if unknown or any(not (isinstance(v, (int, float)) and v > 0) for v in self.limits.values()):
            raise ValueError(f"limits must map signals of {SIGNALS} to positive numbers, got {self.limits}")
        self._table = np.array([[row[k] for k in FEATURES] for row in self.features], dtype=np.float64)
        floors = np.array([floor for _, floor in FEATURES.values()])
        mad = np.median(np.abs(self._table - np.median(self._table, axis=0)), axis=0)
        self._scale = np.maximum(floors, 1.4826 * mad)

    def distances(self, features: Mapping[str, float]) -> dict[str, float]:
        """Per feature: its distance (in spreads) to the nearest training scan *of its signal*."""
        x = np.array([features[k] for k in FEATURES], dtype=np.float64)
        z = np.abs(self._table - x) / self._scale  # (scans, features)
        out = {}
        for signal in ("region", "intensity"):
            cols = [i for i, (s, _) in enumerate(FEATURES.values()) if s == signal]
            nearest = int(np.argmin(z[:, cols].max(axis=1)))
            out.update({name: float(z[nearest, i]) for i, name in enumerate(FEATURES) if i in cols})
        return out

    def scores(self, features: Mapping[str, float]) -> dict[str, float]:
        """Signal → score: the largest feature distance to the nearest training scan."""
        d = self.distances(features)
        return {s: max(v for k, v in d.items() if FEATURES[k][0] == s) for s in ("region", "intensity")}

    def training_range(self, name: str) -> tuple[float, float]:
        col = list(FEATURES).index(name)
        return float(self._table[:, col].min()), float(self._table[:, col].max())

    # -- files ----------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "about": "statistics of the training scans for unimed_core.inference.familiarity; regenerate with "
            "python -m benchmarks.familiarity_calibration --datalist DATALIST",
            "source": self.source,
            "limits": self.limits,
            "weights_sha256": self.weights_sha256,
            "features": [{k: round(float(v), 6) for k, v in row.items()} for row in self.features],
        }

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> FamiliarityReference:
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                [{k: float(v) for k, v in row.items()} for row in doc["features"]],
                {k: float(v) for k, v in doc.get("limits", {}).items()},
                str(doc.get("source", "")),
                doc.get("weights_sha256"),
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path}: not a familiarity statistics file: {e}") from e


def _describe(name: str, value: float, low: float, high: float) -> str:
    if name == "body_fraction":  # before the extents: it also starts with "body_"
        return f"body fills {100 * value:.0f}% of the field of view (training {100 * low:.0f}-{100 * high:.0f}%)"
    if name.startswith(("fov_", "body_")):
        what = "field of view" if name.startswith("fov_") else "body extent"
        return f"{what} along {name[-1]} {math.exp(value):.0f} mm (training {math.exp(low):.0f}-{math.exp(high):.0f})"
    return f"{name[1:]}th intensity percentile at {value:.2f} of the body's range (training {low:.2f}-{high:.2f})"


_HEADLINE = {
    "region": "the body region or field of view is unlike the training scans (generated abdomens)",
    "intensity": "the body's intensities are unlike those of the training scans",
}


def familiarity_warnings(volume: Volume, reference: FamiliarityReference) -> list[dict]:
    """Warnings for ``volume``: one ``{"signal", "score", "limit", "message"}`` per signal over its limit.

    A volume whose features cannot be measured (constant, nothing above the background) gets one warning saying so.
    """
    try:
        features = volume_features(volume)
    except ValueError as e:
        return [{"signal": "region", "score": None, "limit": None, "message": f"cannot check the scan: {e}"}]
    distances = reference.distances(features)
    out = []
    for signal, score in reference.scores(features).items():
        limit = reference.limits.get(signal)
        if limit is None or score <= limit:
            continue
        worst = sorted((k for k in distances if FEATURES[k][0] == signal), key=lambda k: -distances[k])[:3]
        reasons = [_describe(k, features[k], *reference.training_range(k)) for k in worst if distances[k] > limit]
        out.append(
            {
                "signal": signal,
                "score": round(score, 3),
                "limit": limit,
                "message": f"{_HEADLINE[signal]}: {'; '.join(reasons)}. Results may be wrong; check them.",
            }
        )
    return out


def uncertainty_warning(uncertainty: Mapping[str, float], reference: FamiliarityReference) -> list[dict]:
    """A warning when the model's combined uncertainty (``Uncertainty.as_dict()``) exceeds the calibrated limit.

    Nothing when the reference has no ``uncertainty`` limit (it is calibrated per weights).
    """
    limit = reference.limits.get("uncertainty")
    value = float(uncertainty.get("combined", float("nan")))
    if limit is None or not value > limit:
        return []
    terms = ", ".join(f"{k} {float(uncertainty[k]):.2f}" for k in ("mask", "boxes", "image") if k in uncertainty)
    message = f"the model is unusually unsure about this scan (normalised entropy {value:.2f} > {limit:.2f}: {terms})"
    return [{"signal": "uncertainty", "score": round(value, 3), "limit": limit, "message": message + "."}]


def warning_lines(warnings: Sequence[Mapping]) -> list[str]:
    """One line of text per warning, for a terminal or a status bar."""
    return [f"warning ({w['signal']}): {w['message']}" for w in warnings]
