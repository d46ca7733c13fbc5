"""Per training step: how long the trainer waited for its batch and how long it computed (issue 19).

"Data-loading bound" is then a number: the share of each step spent in ``GET_BATCH`` (the ``DataLoader``
handing over the next batch) against the forward, backward and optimiser step. On a GPU the compute time is
taken after ``torch.cuda.synchronize()``, since kernels run asynchronously (ignite's ``BasicTimeProfiler``
does not synchronise, so it would report launch times, and the wait for the GPU would land in the next step).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from ignite.engine import Events

from unimed_core.data.atomic import atomic_write_json

__all__ = ["StepTimes", "summarise_steps"]

logger = logging.getLogger(__name__)


def summarise_steps(steps: list[dict], skip: int = 0) -> dict:
    """Totals, means and the data-wait share of ``steps`` (dicts with ``data_s``, ``compute_s``), after ``skip``
    warm-up steps."""
    kept = steps[skip:]
    data = sum(s["data_s"] for s in kept)
    compute = sum(s["compute_s"] for s in kept)
    total = data + compute
    return {
        "steps": len(kept),
        "skipped": min(skip, len(steps)),
        "data_s": round(data, 4),
        "compute_s": round(compute, 4),
        "data_share": round(data / total, 4) if total else None,
        "steps_per_s": round(len(kept) / total, 4) if total else None,
        "mean_data_s": round(data / len(kept), 4) if kept else None,
        "mean_compute_s": round(compute / len(kept), 4) if kept else None,
    }


class StepTimes:
    """Handler: one line per training step, ``{"iteration", "epoch", "data_s", "compute_s"}``, appended to
    ``output_file`` (JSON lines) and logged every ``log_every`` steps; at ``COMPLETED`` a summary
    (:func:`summarise_steps`, the first ``skip`` steps left out) is written beside it as ``NAME.summary.json``.

    Args:
        output_file: the JSON-lines file (its folder is created); None keeps the times in :attr:`steps` only.
        log_every: log a step's line every this many iterations (0: never).
        skip: warm-up steps left out of the summary (the first epoch's cache writes, CUDA initialisation).
    """

    def __init__(self, output_file: str | Path | None = None, log_every: int = 1, skip: int = 0) -> None:
        if log_every < 0 or skip < 0:
            raise ValueError(f"log_every and skip must be >= 0, got {log_every}, {skip}")
        self.output_file = None if output_file is None else Path(output_file)
        self.log_every, self.skip = log_every, skip
        self.steps: list[dict] = []
        self._started = self._got = 0.0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        if self.output_file is not None:
            self.output_file.parent.mkdir(parents=True, exist_ok=True)

    def _batch_started(self, engine) -> None:
        self._started = time.perf_counter()

    def _batch_completed(self, engine) -> None:
        self._got = time.perf_counter()

    def _iteration_completed(self, engine) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        now = time.perf_counter()
        step = {
            "iteration": int(engine.state.iteration),
            "epoch": int(engine.state.epoch),
            "data_s": round(self._got - self._started, 5),
            "compute_s": round(now - self._got, 5),
        }
        self.steps.append(step)
        if self.output_file is not None:
            with open(self.output_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(step) + "\n")
        if self.log_every and step["iteration"] % self.log_every == 0:
            logger.info("step %(iteration)d: data %(data_s).3f s, compute %(compute_s).3f s", step)

    def _completed(self, engine) -> None:
        summary = summarise_steps(self.steps, self.skip)
        logger.info("step times: %s", summary)
        if self.output_file is not None:
            atomic_write_json(self.output_file.with_suffix(".summary.json"), summary)
