"""Validation and evaluation on MONAI's engine, with UniMed's whole-volume metrics (Dice, mAP, AUC).

Detection mAP and classification AUC are properties of a whole set of cases, so the metric collects the
cases of an epoch and computes everything once at the epoch's end with
:func:`unimed_core.evaluation.evaluate` (the same numbers as the benchmarks). The key metric (default mean
Dice) drives MONAI's best-checkpoint logic; every other number lands in ``engine.state.metrics`` for the
Stats / TensorBoard handlers, and the per-case rows in ``engine.state.metric_details``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from ignite.engine import Events
from ignite.metrics import Metric
from monai.engines.utils import IterationEvents

from unimed_core.data.atomic import atomic_write_json, atomic_write_text
from unimed_core.evaluation import evaluate
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap

__all__ = ["CaseIteration", "UniMedMetric", "WriteEvaluationReport"]

logger = logging.getLogger(__name__)


class CaseIteration:
    """``iteration_update`` for a validation ``SupervisedEvaluator``: hand each datalist item to the metrics.

    Each output is ``{"item": item}``; the predictions are made by :class:`UniMedMetric` when the epoch ends.
    """

    def __call__(self, engine, batch: Sequence[dict]) -> list[dict]:
        batch = batch if isinstance(batch, list) else [batch]
        engine.state.output = [{"item": dict(item)} for item in batch]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class UniMedMetric(Metric):
    """Ignite metric over an epoch of fully annotated datalist items.

    Args:
        predictor: the predictor to evaluate (its network is switched to eval mode first).
        label_map: the label map.
        key: summary entry returned as this metric's value (e.g. "dice/all_mean", "mAP@0.10", "AUC").
        click_classes: classes for click-prompted Dice (None: organs; ``[]``: skip clicks, faster).
    """

    def __init__(
        self,
        predictor: UniMedPredictor,
        label_map: LabelMap,
        key: str = "dice/all_mean",
        click_classes: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(predictor, UniMedPredictor):
            raise ValueError(f"predictor must be a UniMedPredictor, got {type(predictor).__name__}")
        self.predictor, self.label_map, self.key = predictor, label_map, key
        self.click_classes = None if click_classes is None else list(click_classes)
        self.summary: dict = {}
        self.rows: list[dict] = []
        super().__init__(output_transform=lambda output: output, device="cpu")

    def reset(self) -> None:
        self._items: list[dict] = []

    def update(self, output) -> None:
        outputs = output if isinstance(output, list) else [output]
        self._items.extend(o["item"] for o in outputs)

    def iteration_completed(self, engine) -> None:
        self.update(self._output_transform(engine.state.output))

    def compute(self) -> float:
        if not self._items:
            raise ValueError("UniMedMetric needs at least one case before it can be computed")
        was_training = self.predictor.model.training
        self.predictor.model.eval()

        def progress(done: int, total: int) -> None:
            logger.info(f"evaluated {done}/{total}")

        try:
            self.summary, self.rows = evaluate(
                self.predictor, self._items, self.label_map, self.click_classes, progress=progress
            )
        finally:
            self.predictor.model.train(was_training)
        if self.key not in self.summary:
            raise ValueError(f"key {self.key!r} is not an evaluation result; known: {sorted(self.summary)}")
        return float(self.summary[self.key])

    def completed(self, engine, name: str) -> None:
        engine.state.metrics[name] = self.compute()
        for key, value in self.summary.items():
            if isinstance(value, (int, float)):
                engine.state.metrics.setdefault(key, float(value))
        engine.state.metric_details[name] = list(self.rows)


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class WriteEvaluationReport:
    """Handler: when an evaluator completes, write ``metrics.json`` and a per-case CSV.

    Args:
        output_dir: folder of the report.
        metric_name: name of the :class:`UniMedMetric` in the evaluator (its rows make the CSV).
        metrics_file: name of the JSON file (NaN becomes null).
        cases_file: name of the CSV file.
    """

    def __init__(
        self,
        output_dir: str | Path,
        metric_name: str,
        metrics_file: str = "metrics.json",
        cases_file: str = "per_case.csv",
    ) -> None:
        self.output_dir, self.metric_name = Path(output_dir), metric_name
        self.metrics_file, self.cases_file = metrics_file, cases_file

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics = {k: _finite(float(v)) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        atomic_write_json(self.output_dir / self.metrics_file, metrics)
        rows = engine.state.metric_details.get(self.metric_name, [])
        columns = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.output_dir / self.cases_file, buffer.getvalue())
