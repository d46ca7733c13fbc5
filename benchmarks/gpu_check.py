"""Short GPU check: mixed-precision training steps, step time and memory, inference latency, and a GPU-trained
small model evaluated on held-out studies.

    python benchmarks/gpu_check.py --out results_dir --train-minutes 4

Writes ``gpu_check.json`` (and the trained weights) into ``--out``. Runs on whatever GPU is present and names it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning import json_safe, make_data  # noqa: E402

from unimed_core.data.datalist import load_datalist  # noqa: E402
from unimed_core.data.image_io import Volume  # noqa: E402
from unimed_core.evaluation import evaluate  # noqa: E402
from unimed_core.inference.predictor import UniMedPredictor  # noqa: E402
from unimed_core.label_map import LabelMap  # noqa: E402
from unimed_core.model.factory import unimed_base, unimed_small  # noqa: E402
from unimed_core.model.weights import save_weights  # noqa: E402
from unimed_core.training.fit import build_objective, build_train_loader, fit  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"

# The GPU run of 2026-11-27 (an H200, results in benchmarks/results/gpu_check.json) used 5 mm and 80^3 windows;
# the shipped model now uses the CPU benchmark's grid (6 mm, 64^3; bundle/configs/inference.json).
SPACING = (5.0, 5.0, 5.0)
PATCH = (80, 80, 80)


def step_times(factory, items, label_map, patch, batch, amp: bool, steps: int = 12, warmup: int = 4) -> dict:
    """Median seconds per optimisation step and peak GPU memory."""
    torch.manual_seed(0)
    model = factory(label_map).to(DEVICE)
    objective = build_objective(model, label_map)
    loader = build_train_loader(items, model, label_map, patch, SPACING, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 needs no loss scaling
    generator = torch.Generator().manual_seed(0)
    times = []
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    batches = iter(loader)
    for i in range(warmup + steps):
        try:
            batch_data = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch_data = next(batches)
        images = batch_data["image"].to(DEVICE)
        from unimed_core.model.targets import target_to

        targets = [target_to(t, DEVICE) for t in batch_data["targets"]]
        _sync()
        start = time.perf_counter()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=amp and CUDA):
            total, _ = objective(model, images, targets, generator)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        _sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "median_step_s": statistics.median(times),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if CUDA else None,
        "loss_finite": bool(torch.isfinite(total).item()),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def inference_latency(model, label_map, shape, repeats: int = 2) -> dict:
    torch.manual_seed(0)
    volume = Volume(torch.randn(shape).numpy(), torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0])).numpy())
    predictor = UniMedPredictor(model, label_map, spacing=SPACING, roi_size=PATCH, device=DEVICE, amp=CUDA)
    predictor.predict(volume)
    times = []
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        predictor.predict(volume)
        _sync()
        times.append(time.perf_counter() - start)
    return {
        "shape": list(shape),
        "median_s": statistics.median(times),
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9,
    }


def _save(out: Path, result: dict) -> None:
    """Written after every phase, so a run cut short still returns what it measured."""
    (out / "gpu_check.json").write_text(json.dumps(json_safe(result), indent=1))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("/tmp/unimed-data"))
    parser.add_argument("--train-minutes", type=float, default=4.0)
    parser.add_argument("--skip-timings", action="store_true", help="only train, evaluate and time inference")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of every phase, to check the script")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        parser.error("no GPU here; use --smoke to check the script on the CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    label_map = LabelMap.default()
    result: dict = {
        "gpu": torch.cuda.get_device_name() if CUDA else "none (smoke run on CPU)",
        "torch": torch.__version__,
    }
    start = time.monotonic()
    items = load_datalist(make_data(args.data, 144, 0), label_map)
    result["data_seconds"] = round(time.monotonic() - start, 1)
    train = items["training"] + items["unlabeled"]
    test = items["test"][:2] if args.smoke else items["test"]
    steps = 2 if args.smoke else 12
    train_step_s = 0.38  # batch 8 at 80^3, bf16, measured on an H200 by this script (data loading not included)
    if not args.skip_timings:
        result["small_fp32_b2"] = step_times(unimed_small, train, label_map, PATCH, 2, amp=False, steps=steps)
        result["small_amp_b2"] = step_times(unimed_small, train, label_map, PATCH, 2, amp=True, steps=steps)
        result["small_amp_b8"] = step_times(unimed_small, train, label_map, PATCH, 8, amp=True, steps=steps)
        train_step_s = result["small_amp_b8"]["median_step_s"]
    if not args.smoke and not args.skip_timings:
        result["base_amp_b2"] = step_times(unimed_base, train, label_map, (96, 96, 96), 2, amp=True, steps=steps)
    _save(args.out, result)
    print(json.dumps(result, indent=1), flush=True)
    model = unimed_small(label_map)
    budget = args.train_minutes * 60
    # the cosine schedule should end when the budget does: steps the budget allows, from the measured step time
    max_steps = max(10, int(budget / (1.3 * train_step_s)))
    start = time.monotonic()
    history = fit(model, train, label_map, patch_size=PATCH, spacing=SPACING, batch_size=8, lr=2e-3,
                  max_steps=max_steps, time_budget_s=budget, device=DEVICE, amp=CUDA,
                  num_workers=0 if args.smoke else 8, log_every=100)  # fmt: skip
    result["train"] = {"seconds": round(time.monotonic() - start, 1), "planned_steps": max_steps,
                       "steps": history[-1]["step"], "history": history}  # fmt: skip
    save_weights(model, args.out / "model.pt")
    _save(args.out, result)
    predictor = UniMedPredictor(model, label_map, spacing=SPACING, roi_size=PATCH, device=DEVICE, amp=CUDA)
    start = time.monotonic()
    summary, _ = evaluate(predictor, test, label_map)
    result["test_seconds"] = round(time.monotonic() - start, 1)
    result["test_summary"] = summary
    _save(args.out, result)
    sizes = [(64, 64, 64)] if args.smoke else [(64, 64, 64), (128, 128, 128), (256, 256, 128), (512, 512, 300)]
    result["inference"] = [inference_latency(model, label_map, s) for s in sizes]
    _save(args.out, result)
    brief = {k: v for k, v in result.items() if k not in ("test_summary", "train")}
    print(json.dumps(json_safe(brief), indent=1))
    keys = ("dice/organs_mean", "dice/all_mean", "mAP@0.10", "recall@0.10", "AUC", "click_dice/mean")
    print(json.dumps(json_safe({k: summary.get(k) for k in keys}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
