"""Speed and memory on the CPU: inference latency and peak memory per volume size, training throughput, and
two-process ``torchrun`` scaling of UniMed's training steps.

    .venv/bin/python -m benchmarks.speed --mode quick [--weights DIR]
    .venv/bin/python -m benchmarks.speed --grids --repeats 1 --weights bundle/models/model.pt   # per working grid

Method (so that the numbers mean one thing):

- Inputs are generated CT-like studies of one physical field of view (384 x 384 x 360 mm) at 64^3, 128^3,
  256x256x128 and 512x512x300 voxels, stored as uncompressed NIfTI. Both sides go from the loaded volume to
  outputs on the input grid / in world mm (``predict``): resampling to the 6 mm working grid, the networks,
  and labels restored onto the input grid. UniMed gives all three tasks in one pass; the baselines run in turn
  (SegResNet, RetinaNet, DenseNet121) after one shared preparation.
- Latency: the median over ``mode.repeats`` timed calls after one warm-up call.
- Peak memory: each (model, size) runs in its own fresh process, and we read the kernel's high-water mark of
  its resident set (``VmHWM`` in ``/proc/self/status``, which starts afresh at ``exec``): it counts everything
  torch, numpy and MONAI allocate, which ``tracemalloc`` (Python allocations only) would miss. We report the peak and the RSS just
  before the first call (model loaded, volume read), whose difference is what inference itself needs.
- Training throughput: samples per second over ``mode.train_steps`` steps (batch 2, 64^3 patches) after two
  warm-up steps that also load the cases.
- Scaling: ``torchrun --nproc_per_node=N benchmarks/ddp_steps.py`` for N = 1, 2 with one thread per
  process and the same per-process batch (gloo, DistributedDataParallel).

Writes ``benchmarks/results/speed.json``; ``--grids`` writes ``benchmarks/results/speed_grids.json`` instead: the
same inputs' 256x256x128 and 512x512x300 at 6, 3 and 1.5 mm working grids, UniMed beside MONAI's SegResNet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.baseline_training import train_baseline
from benchmarks.baselines import BUILDERS, TASKS, BaselinePredictor
from benchmarks.common import MODES, RESULTS, Mode, load_items
from benchmarks.learning import PATCH, SPACING
from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.image_io import read_image
from unimed_core.inference.predictor import UniMedPredictor
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import load_weights
from unimed_core.paths import REPO_ROOT
from unimed_core.synthetic.case import SyntheticConfig, generate_case
from unimed_core.synthetic.reproducible_nifti import save_nifti_reproducible
from unimed_core.training.fit import fit

__all__ = ["FOV_MM", "make_volume", "measure_inference", "training_throughput", "ddp_scaling", "main"]

FOV_MM = (384.0, 384.0, 360.0)
MODELS = ("unimed", "baselines")


def make_volume(folder: Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """A CT-like study of ``shape`` voxels over :data:`FOV_MM` (reused when already written)."""
    path = folder / f"ct_{'x'.join(map(str, shape))}.nii"
    if not path.exists():
        spacing = tuple(f / s for f, s in zip(FOV_MM, shape))
        case = generate_case(seed, SyntheticConfig(domain="ct", shape=shape, spacing=spacing))
        save_nifti_reproducible(case.image, case.affine, path)
    return path


def _rss_mib(kib: float) -> float:
    return round(kib / 1024.0, 1)  # /proc reports kB


def _status_kib(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return float(next(line for line in f if line.startswith(f"{field}:")).split()[1])


def _current_rss_kib() -> float:
    return _status_kib("VmRSS")


def _peak_rss_kib() -> float:
    """This process's resident high-water mark. ``VmHWM``, not ``ru_maxrss``: the latter survives ``exec``, so a
    child started by a parent holding 1.8 GB (``make bench`` after training) reports at least that."""
    return _status_kib("VmHWM")


def _predictor(name: str, label_map: LabelMap, weights: Path | None, spacing=SPACING):
    if name == "unimed":
        model = unimed_small(label_map)
        if weights and (weights / "unimed.pt").exists():
            load_weights(model, weights / "unimed.pt")
        elif weights and weights.suffix == ".pt":  # a weights file (the shipped model.pt)
            load_weights(model, weights)
        return UniMedPredictor(model, label_map, spacing=spacing, roi_size=PATCH)
    nets = {task: BUILDERS[task](label_map) for task in TASKS}
    for task, net in nets.items():
        if weights and (weights / f"{task}.pt").exists():
            load_weights(net, weights / f"{task}.pt")
    if name == "segresnet":  # MONAI's SegResNet alone: the segmentation beside UniMed's, per working grid
        return BaselinePredictor(nets["segmentation"], None, None, label_map, spacing, PATCH)
    return BaselinePredictor(nets["segmentation"], nets["detection"], nets["classification"], label_map, spacing, PATCH)


def _child(name: str, volume_path: Path, weights: Path | None, repeats: int, spacing=SPACING) -> dict:
    """Runs in a fresh process: load, warm up, time ``repeats`` calls, report latency and memory. ``repeats`` 0
    times the one warm-up call itself (a cold call, for rows too long to run twice on a busy machine)."""
    label_map = LabelMap.default()
    predictor = _predictor(name, label_map, weights, spacing)
    volume = read_image(volume_path)
    before = _current_rss_kib()
    if repeats:
        predictor.predict(volume)
    times, cpu, parts = [], [], []
    for _ in range(max(repeats, 1)):
        start, start_cpu = time.perf_counter(), time.process_time()
        predictor.predict(volume)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)  # all threads' CPU seconds: less swayed by other jobs' load
        parts.append(dict(getattr(predictor, "timings", {})))
    peak = _peak_rss_kib()
    part_medians = {k: round(statistics.median(p[k] for p in parts), 3) for k in (parts[0] if parts else {})}
    return {"model": name, "shape": list(volume.shape), "spacing_mm": list(spacing),
            "latency_s": round(statistics.median(times), 3), "cpu_s": round(statistics.median(cpu), 3),
            "latencies_s": [round(t, 3) for t in times], "parts_s": part_medians,
            "rss_before_mib": _rss_mib(before), "peak_rss_mib": _rss_mib(peak),
            "inference_mib": _rss_mib(peak - before)}  # fmt: skip


def _run_child(name: str, path: Path, shape, weights: Path | None, repeats: int, spacing=SPACING) -> dict:
    """One (model, volume, working grid) row, measured in its own process."""
    command = [sys.executable, "-m", "benchmarks.speed", "--child", name, str(path), "--repeats", str(repeats),
               "--threads", str(torch.get_num_threads()), "--spacing", ",".join(map(str, spacing))]  # fmt: skip
    if weights:
        command += ["--weights", str(weights)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        row = {"model": name, "shape": list(shape), "spacing_mm": list(spacing), "error": done.stderr[-2000:]}
    else:
        row = json.loads(done.stdout.strip().splitlines()[-1])
    print(row, flush=True)
    return row


def measure_inference(mode: Mode, folder: Path, weights: Path | None) -> list[dict]:
    """Latency and peak RSS of each model on each size, each in its own process."""
    rows = []
    for shape in mode.sizes:
        path = make_volume(folder, shape)
        rows += [_run_child(name, path, shape, weights, mode.repeats) for name in MODELS]
    return rows


GRID_SPACINGS = (6.0, 3.0, 1.5)  # the bundle's CPU default, the CPU preset, highres.json's
GRID_SIZES = ((256, 256, 128), (512, 512, 300))
GRID_MODELS = ("unimed", "segresnet")


def measure_grids(
    folder: Path, weights: Path | None, repeats: int, spacings=GRID_SPACINGS, sizes=GRID_SIZES, out: Path | None = None
) -> dict:
    """Latency and peak RSS of UniMed (small variant, all three tasks in one pass, masks decided on the input
    grid) beside MONAI's SegResNet (its probabilities restored the same way), per working grid and input size,
    each row in its own process, 64^3 windows for both. With ``out`` the table so far is written after every row
    (a run stopped for time keeps what it measured)."""
    load_before = os.getloadavg()
    rows = []

    def table() -> dict:
        return {
            "threads": torch.get_num_threads(), "repeats": repeats, "fov_mm": list(FOV_MM), "window": list(PATCH),
            "weights": str(weights) if weights else "random initialisation",
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
            "rows": rows,
        }  # fmt: skip

    paths = {shape: make_volume(folder, shape) for shape in sizes}
    for spacing in spacings:  # the finest grid last: a run stopped for time has every coarser row
        for shape, path in paths.items():
            for name in GRID_MODELS:
                rows.append(_run_child(name, path, shape, weights, repeats, (spacing,) * 3))
                if out is not None:
                    atomic_write_json(out, table())
    return table()


def _rate(history: list[dict], batch: int, skip: int = 2) -> float:
    """Samples per second between logged step ``skip`` and the last step (every step logged)."""
    first, last = history[skip - 1], history[-1]
    return batch * (last["step"] - first["step"]) / max(last["seconds"] - first["seconds"], 1e-9)


def training_throughput(mode: Mode, label_map: LabelMap) -> dict:
    """Samples/s of each model's training step (batch 2, 64^3), on items carrying every annotation."""
    items = [i for i in load_items(mode, label_map)["training"] if "label" in i][:8]
    steps = mode.train_steps + 2
    out = {}
    history = fit(unimed_small(label_map), items, label_map, patch_size=PATCH, spacing=SPACING,
                  max_steps=steps, log_every=1)  # fmt: skip
    out["unimed"] = round(_rate(history, 2), 3)
    for task in TASKS:
        history = train_baseline(task, BUILDERS[task](label_map), items, label_map, patch_size=PATCH,
                                 spacing=SPACING, max_steps=steps, log_every=1)  # fmt: skip
        out[task] = round(_rate(history, 2), 3)
    out["baselines_in_turn"] = round(1.0 / sum(1.0 / out[t] for t in TASKS), 3)
    return out


def ddp_scaling(mode: Mode) -> dict:
    """UniMed training steps under torchrun with 1 and 2 CPU processes (one thread each, batch 2 per process)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out = {}
    for n in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "ddp.json"
            command = [str(torchrun), "--standalone", f"--nproc_per_node={n}", "-m", "benchmarks.ddp_steps",
                       "--data", str(mode.data), "--steps", str(mode.ddp_steps), "--out", str(result)]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
            done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0 or not result.exists():
                out[str(n)] = {"error": (done.stdout + done.stderr)[-2000:]}
                continue
            out[str(n)] = json.loads(result.read_text())
    if all("samples_per_s" in v for v in out.values()):
        out["speedup_2_vs_1"] = round(out["2"]["samples_per_s"] / out["1"]["samples_per_s"], 3)
    return out


def run_speed(mode: Mode, weights: Path | None) -> dict:
    label_map = LabelMap.default()
    folder = Path("data/bench_speed")
    folder.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()  # other jobs on a shared machine inflate latencies: record how busy it was
    inference = measure_inference(mode, folder, weights)
    by = {(r["model"], tuple(r["shape"])): r for r in inference if "error" not in r}
    ratios = []
    for shape in mode.sizes:
        u, b = by.get(("unimed", tuple(shape))), by.get(("baselines", tuple(shape)))
        if u and b:
            ratios.append({"shape": list(shape), "latency_baselines_over_unimed": round(b["latency_s"] / u["latency_s"], 3),
                           "peak_baselines_over_unimed": round(b["peak_rss_mib"] / u["peak_rss_mib"], 3)})  # fmt: skip
    throughput = training_throughput(mode, label_map)
    return {
        "mode": mode.name, "threads": torch.get_num_threads(), "repeats": mode.repeats,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor(),
                    "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
        "weights": "trained in this run (benchmarks.quality)" if weights else "random initialisation",
        "inference": inference, "ratios": ratios, "training_samples_per_s": throughput,
        "torchrun_cpu": ddp_scaling(mode),
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", type=Path, help="folder with unimed.pt and the baselines' weights")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VOLUME"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row (after one warm-up)")
    parser.add_argument("--spacing", default=",".join(map(str, SPACING)), help=argparse.SUPPRESS)
    parser.add_argument(
        "--grids",
        action="store_true",
        help="only the working-grid table (6, 3, 1.5 mm; UniMed and SegResNet) -> speed_grids.json",
    )
    parser.add_argument("--grid-spacings", default=",".join(map(str, GRID_SPACINGS)), help="with --grids")
    parser.add_argument("--grid-sizes", default=";".join(",".join(map(str, s)) for s in GRID_SIZES),
                        help="with --grids: shapes as X,Y,Z;X,Y,Z")  # fmt: skip
    args = parser.parse_args(argv)
    mode = MODES[args.mode]
    torch.set_num_threads(args.threads or mode.threads)
    np.seterr(all="ignore")
    if args.child:
        spacing = tuple(float(v) for v in args.spacing.split(","))
        print(json.dumps(_child(args.child[0], Path(args.child[1]), args.weights, args.repeats, spacing)))
        return 0
    if args.grids:
        folder = Path("data/bench_speed")
        folder.mkdir(parents=True, exist_ok=True)
        spacings = tuple(float(v) for v in args.grid_spacings.split(","))
        sizes = tuple(tuple(int(v) for v in s.split(",")) for s in args.grid_sizes.split(";"))
        measure_grids(folder, args.weights, args.repeats, spacings, sizes, out=RESULTS / "speed_grids.json")
        return 0
    atomic_write_json(RESULTS / "speed.json", run_speed(mode, args.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
