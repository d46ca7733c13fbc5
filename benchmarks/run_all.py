"""All benchmarks in one run, then the report: what ``make bench`` (quick) and ``make bench-full`` call.

    .venv/bin/python -m benchmarks.run_all --mode quick

Quality (UniMed vs MONAI's baselines) → the paper's claims (reusing the joint model) → speed and memory
(with the models just trained; ``/tmp/unimed_quiet`` exists while it times, so that neighbours on a shared
machine hold their heavy jobs, and is removed afterwards even on failure) → ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.claims import run_claims
from benchmarks.common import MODES, RESULTS
from benchmarks.quality import run_quality
from benchmarks.report import build_report
from benchmarks.speed import run_speed
from unimed_core.data.atomic import atomic_write_json
from unimed_core.label_map import LabelMap

QUIET = Path("/tmp/unimed_quiet")


def _wait_for_quiet(poll_s: float = 60.0) -> None:
    """Someone else is timing a benchmark: wait (the house rule on the shared 2-core machine)."""
    while QUIET.exists():
        print(f"{QUIET} exists: waiting", flush=True)
        time.sleep(poll_s)


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ``finally`` that removes the quiet flag


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default=os.environ.get("BENCH_MODE", "quick"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["quality", "claims", "speed"])
    args = parser.parse_args(argv)
    mode = MODES[args.mode]
    torch.set_num_threads(args.threads or mode.threads)
    warnings.filterwarnings("ignore", message="Setting affine")  # MONAI's resampling, once per volume
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    label_map = LabelMap.default()
    start = time.monotonic()
    _wait_for_quiet()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        joint = None
        if "quality" not in args.skip:
            quality, state = run_quality(mode, label_map, weights)
            atomic_write_json(RESULTS / "quality.json", quality)
            joint = (quality["unimed"]["summary"], quality["unimed"]["run"], state)
            print(f"[{time.monotonic() - start:.0f} s] quality: {quality['headline']}", flush=True)
        if "claims" not in args.skip:
            atomic_write_json(RESULTS / "claims.json", run_claims(mode, label_map, joint))
            print(f"[{time.monotonic() - start:.0f} s] claims done", flush=True)
        if "speed" not in args.skip:
            _wait_for_quiet()
            QUIET.touch()
            try:
                speed = run_speed(mode, weights if joint is not None else None)
            finally:
                QUIET.unlink(missing_ok=True)
            atomic_write_json(RESULTS / "speed.json", speed)
            print(f"[{time.monotonic() - start:.0f} s] speed done", flush=True)
    build_report(RESULTS, Path("docs/benchmarks.md"))
    print(f"[{time.monotonic() - start:.0f} s] wrote docs/benchmarks.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
