"""The high-resolution recipe on a GPU: train ``train.json + highres.json`` a few hundred steps and run
``inference.json + highres.json`` on a 512 x 512 x 300 study, through MONAI's ``ConfigWorkflow`` as a user would.

    python -m benchmarks.gpu_highres --out results_dir [--steps 300]
    python -m benchmarks.gpu_highres --out /tmp/check --tiny      # the same code path on the CPU, tiny sizes

Reports (``gpu_highres.json`` in ``--out``, written after each phase): the card's name; steps/s and the data-wait
share of every training step (``unimed_core.engine.StepTimes``: the wait for the ``DataLoader`` against forward,
backward and optimiser after a CUDA synchronise), for the first epoch (which preprocesses every study into the
cache) and the later ones (which read the cache) apart; the peak GPU memory of training and of inference; and the
end-to-end seconds of the inference run (read the NIfTI, prepare, sliding windows, masks decided on the input grid,
every output file written). Generated CT-like studies over 384 x 384 x 360 mm; validation is skipped (it would
time full studies, not steps). ``--tiny`` overrides only sizes (grid, patch, network width, study shapes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from benchmarks.speed import make_volume
from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.datalist import load_datalist
from unimed_core.engine import summarise_steps
from unimed_core.model.weights import save_weights
from unimed_core.paths import BUNDLE_DIR
from unimed_core.synthetic.dataset import generate_dataset

__all__ = ["run", "main"]

CONFIGS = BUNDLE_DIR / "configs"
FULL = {"cases": 16, "study": (192, 192, 144), "study_spacing": (2.0, 2.0, 2.5), "infer_shape": (512, 512, 300)}
TINY = {"cases": 6, "study": (32, 32, 32), "study_spacing": (10.0, 10.0, 10.0), "infer_shape": (48, 48, 40)}
TINY_OVERRIDES = {
    "spacing": [10.0, 10.0, 10.0],
    "patch_size": [32, 32, 32],
    "roi_size": [32, 32, 32],
    "network_def#feature_size": 12,
    "num_workers": 2,
}


def _workflow(names: tuple[str, ...], kind: str, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=[str(CONFIGS / f"{n}.json") for n in names],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=kind,
        **overrides,
    )


def _peak_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1e9, 3) if torch.cuda.is_available() else None


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def run(out: Path, data: Path, steps: int, tiny: bool = False) -> dict:
    sizes, overrides = (TINY, TINY_OVERRIDES) if tiny else (FULL, {})
    result: dict = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)",
        "torch": torch.__version__,
        "tiny": tiny,
        "configs": "train.json + highres.json; inference.json + highres.json",
    }

    def save() -> None:
        atomic_write_json(out / "gpu_highres.json", result)

    start = time.perf_counter()
    datalist = generate_dataset(
        data / "studies", sizes["cases"], seed=0, shape=sizes["study"], spacing=sizes["study_spacing"],
        n_validation=1, n_test=1,
    )  # fmt: skip
    splits = load_datalist(datalist)
    n_train = len(splits["training"]) + len(splits["unlabeled"])
    batch = 2
    per_epoch = math.ceil(n_train / batch)
    epochs = max(2, math.ceil(steps / per_epoch))
    result["data"] = {"studies": sizes["cases"], "training_items": n_train, "shape": list(sizes["study"]),
                      "spacing_mm": list(sizes["study_spacing"]), "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    save()

    train_dir = out / "train"
    workflow = _workflow(
        ("train", "highres"), "train", **overrides, dataset_dir=str(data / "studies"), output_dir=str(train_dir),
        cache_dir=str(data / "cache"), batch_size=batch, max_epochs=epochs, val_interval=epochs + 1,
    )  # fmt: skip
    workflow.initialize()
    _reset_peak()
    start = time.perf_counter()
    workflow.run()
    wall = time.perf_counter() - start
    lines = (train_dir / "step_times.jsonl").read_text().splitlines()
    times = [json.loads(line) for line in lines]
    first = [s for s in times if s["epoch"] == 1]
    later = [s for s in times if s["epoch"] > 1]
    result["train"] = {
        "steps": len(times), "epochs": epochs, "batch": batch, "wall_s": round(wall, 1),
        "steps_per_s_wall": round(len(times) / wall, 3), "peak_gpu_gb": _peak_gb(),
        "first_epoch_cache_build": summarise_steps(first), "later_epochs_from_cache": summarise_steps(later),
        "final_loss": float(workflow.trainer.state.output["loss"]),
    }  # fmt: skip
    weights = out / "model_highres.pt"
    save_weights(workflow.network_def, weights)
    workflow.finalize()
    save()
    print(json.dumps(result["train"], indent=1), flush=True)

    study = make_volume(data, tuple(sizes["infer_shape"]))
    infer = _workflow(
        ("inference", "highres"), "infer", **overrides, ckpt_path=str(weights), input_path=str(study),
        output_dir=str(out / "inference"),
    )  # fmt: skip
    _reset_peak()
    start = time.perf_counter()
    infer.initialize()
    infer.run()
    infer.finalize()
    result["inference"] = {"shape": list(sizes["infer_shape"]), "end_to_end_s": round(time.perf_counter() - start, 2),
                           "peak_gpu_gb": _peak_gb()}  # fmt: skip
    save()
    return result


def data_cost(out: Path, data: Path, cases: int = 4, draws: int = 8) -> dict:
    """The data side of highres.json at its real sizes, on this machine's CPU, one process: seconds to preprocess
    a study into the cache (once per study), and per training sample drawn from the warm cache (read, foreground
    crop, augmentation, target). With W workers and batch B the loader keeps up while ``B * draw_s / W`` is below
    a GPU step."""
    from unimed_core.data.cached_dataset import CachedTrainingDataset
    from unimed_core.label_map import LabelMap
    from unimed_core.model.factory import unimed_small
    from unimed_core.tokenizer import Tokenizer

    raw = json.loads((CONFIGS / "highres.json").read_text())
    datalist = generate_dataset(
        data / "studies", cases, seed=0, shape=FULL["study"], spacing=FULL["study_spacing"], n_validation=0, n_test=0,
        levels={"mask": 1.0},
    )  # fmt: skip
    items = load_datalist(datalist)["training"]
    label_map = LabelMap.default()
    tokenizer = Tokenizer(unimed_small(label_map).vocab)
    dataset = CachedTrainingDataset(
        items, label_map, tokenizer, data / "cache_cost", raw["patch_size"], raw["spacing"], seed=0
    )
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset.case(i)
    build = (time.perf_counter() - start) / len(dataset)
    times = []
    for d in range(draws):
        dataset.set_epoch(d + 1)
        start = time.perf_counter()
        dataset[d % len(dataset)]
        times.append(time.perf_counter() - start)
    result = {"threads": torch.get_num_threads(), "studies": len(dataset), "study_shape": list(FULL["study"]),
              "working_shape": list(dataset.case(0).image.shape[1:]), "patch": raw["patch_size"],
              "cache_build_s_per_study": round(build, 2), "draw_s_median": round(sorted(times)[len(times) // 2], 3),
              "draws_s": [round(t, 3) for t in times]}  # fmt: skip
    atomic_write_json(out / "highres_data_cost.json", result)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="where studies and the cache go (default OUT/data)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, to check the script on the CPU")
    parser.add_argument("--data-cost", action="store_true", help="only the data side at real sizes (any machine)")
    args = parser.parse_args(argv)
    if args.data_cost:
        args.out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(data_cost(args.out, args.data or args.out / "data"), indent=1))
        return 0
    if not torch.cuda.is_available() and not args.tiny:
        parser.error("no GPU here; --tiny checks the script on the CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.out, args.data or args.out / "data", args.steps, args.tiny)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
