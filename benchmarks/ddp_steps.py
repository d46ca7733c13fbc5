"""UniMed training steps under ``torchrun`` on CPUs (gloo): the scaling half of ``benchmarks/speed.py``.

    torchrun --standalone --nproc_per_node=2 -m benchmarks.ddp_steps --data data/bench_quick --steps 8 --out r.json

Every process trains ``unimed_small`` wrapped in ``DistributedDataParallel`` (as ``bundle/configs/
multi_gpu_train.json`` does) with one thread, batch 2 per process, on the benchmark's fully annotated training
items; rank 0 writes the median step time and the samples per second of all processes together (steps after
the first two, which load the cases).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Events

from benchmarks.learning import PATCH, SPACING
from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.datalist import load_datalist
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.training.fit import build_objective, build_train_loader, build_trainer

BATCH = 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="benchmark data folder (with datalist.json)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    label_map = LabelMap.default()
    items = [i for i in load_datalist(args.data / "datalist.json", label_map)["training"] if "label" in i]
    torch.manual_seed(0)
    model = unimed_small(label_map)
    network = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    loader = build_train_loader(items, model, label_map, PATCH, SPACING, BATCH, distributed=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    trainer = build_trainer(network, build_objective(model, label_map), loader, optimizer, "cpu", max_epochs=100)
    stamps: list[float] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stamp(engine) -> None:
        stamps.append(time.monotonic())
        if engine.state.iteration >= args.steps + 2:
            engine.terminate()

    trainer.run()
    steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # the first two steps load the cases
    median = statistics.median(steps)
    if rank == 0:
        atomic_write_json(args.out, {"processes": world, "threads_per_process": 1, "batch_per_process": BATCH,
                                     "steps_timed": len(steps), "median_step_s": round(median, 3),
                                     "samples_per_s": round(world * BATCH / median, 3)})  # fmt: skip
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
