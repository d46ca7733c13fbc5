"""Fit ``DenseClassHead``'s lesion outputs on the frozen features of trained weights, before joint fine-tuning.

Trained jointly from zero, the head did not learn tumours: at the fine-tuning rate its output stayed flat after 600
steps, at ten times the rate (with or without the lesion-balanced BCE) it became a constant after 300 (the tumour
voxel AP on the test studies stayed at 0.02, the share of tumour voxels). Its zero last layer lets no gradient reach
its hidden layer at first, and two studies a step give the lesion voxels little say. A probe on the same frozen
features, trained on as many lesion voxels as others, reached 0.37. So the head is first fitted as that probe was
(linear probing, then fine-tuning: the recipe of Kumar et al., ICLR 2022, for a new head on trained features), then
the whole model trains on (``learning_curve train --init-weights`` the weights written here).

Only the lesion classes' outputs are fitted (the organs' rows stay zero: the class tokens already draw organs), with
the balanced BCE (``balanced_bce_loss``) of each lesion class against the share of its voxels in each cell of
``E``'s grid, on the centred 64³ patch of every labelled training study, Adam, shuffled with a seed::

    python -m benchmarks.dense_head_fit runs/curve_s0_new_data/step_4800.pt runs/dense_fit/fitted.pt \\
        --extra-studies 960 --extra-seed 2000

Prints the tumour and cyst voxel AP of the class masks on the test studies before and after, and writes them
beside the weights (``<out>.json``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.learning import PATCH, SPACING
from benchmarks.learning_curve import _model, benchmark_items, extra_training_items
from benchmarks.lesion_voxel_ap import voxel_ap
from unimed_core.data.atomic import atomic_write_json
from unimed_core.data.training_data import crop_case_at, load_case
from unimed_core.losses.mask_losses import balanced_bce_loss
from unimed_core.model.dense_class_head import DenseClassHead
from unimed_core.model.weights import load_weights, save_weights, sha256_of

__all__ = ["frozen_features", "fit_head"]


def frozen_features(model, items: list[dict], label_map, patch=PATCH, spacing=SPACING):
    """Per labelled item: ``E``, the head's image features (``DenseClassHead.image_features``), each lesion class's
    voxel share then the organs', and the lesion classes' mask logits without the head, per cell of ``E``'s grid
    (all half precision), from the centred patch."""
    lesion_classes = label_map.box_class_indices()
    lesion_ids = [label_map.class_index_to_mask_id(c) for c in lesion_classes]
    organ_ids = [label_map.class_index_to_mask_id(c) for c in range(len(label_map.class_names))
                 if c not in lesion_classes]  # fmt: skip
    organ_ids = torch.tensor([i for i in organ_ids if i is not None])

    def organ(semantic):
        return torch.isin(semantic, organ_ids)

    model.eval()
    head, model.dense_class_head = model.dense_class_head, None  # the class masks without the head
    out = []
    try:
        for item in (i for i in items if i.get("label")):
            case = load_case(item, label_map, spacing)
            window = [((s - p) // 2, (s - p) // 2 + p) for s, p in zip(case.image.shape[1:], patch)]
            crop = crop_case_at(case, patch, window)
            image = crop.image[None]
            with torch.no_grad():
                embeddings, _ = model.encode(image)
                grid = embeddings.shape[2:]
                stats = head.image_features(image, grid)[0]
                base = F.adaptive_avg_pool3d(model.class_masks(embeddings, image)[:, lesion_classes], grid)[0]
            onehot = torch.stack([crop.semantic == i for i in lesion_ids] + [organ(crop.semantic)]).float()[None]
            share = F.adaptive_avg_pool3d(onehot, grid)[0]
            out.append((embeddings[0].half(), stats.half(), share.half(), base.half()))
    finally:
        model.dense_class_head = head
    return out


def fit_head(head, features, lesion_classes: list[int], epochs: int = 20, batch: int = 4, lr: float = 1e-3,
             seed: int = 0) -> list[float]:  # fmt: skip
    """Adam on the head's parameters against the lesion classes' balanced BCE of the class masks with the head
    (the frozen logits without it plus the head's: the head learns what they miss, where they are wrong
    included); returns the mean loss per epoch."""
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    head.train()
    for _ in range(epochs):
        total, n = 0.0, 0
        for idx in torch.randperm(len(features), generator=generator).split(batch):
            embeddings = torch.stack([features[i][0] for i in idx]).float()
            stats = torch.stack([features[i][1] for i in idx]).float()
            share = torch.stack([features[i][2] for i in idx]).float()
            base = torch.stack([features[i][3] for i in idx]).float()
            logits = base + head.from_image_features(embeddings, stats)[:, lesion_classes]
            lesion, organ = share[:, :-1].flatten(2), share[:, -1:].flatten(2).expand(-1, len(lesion_classes), -1)
            logits = logits.flatten(2)
            # Lesion voxels against organ voxels, and against the rest, each half of the background: the organs
            # are where a lesion must be told from its host (hard negatives, as the probe sampled them); over all
            # voxels the air and fat around the body would make most of the background half.
            loss = balanced_bce_loss(logits.flatten(0, 1), lesion.flatten(0, 1), organ.flatten(0, 1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, n = total + loss.detach().item() * len(idx), n + len(idx)
        losses.append(total / n)
    return losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("init", type=Path, help="trained weights (with or without a DenseClassHead)")
    parser.add_argument("out", type=Path, help="where the weights with the fitted head go (sha256 beside)")
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"))
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--extra-studies", type=int, default=0)
    parser.add_argument("--extra-seed", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=None, help="the head's hidden width (default the factory's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    label_map, items = benchmark_items(args.data, args.data_seed)
    training = items["training"]
    if args.extra_studies:
        training = training + extra_training_items(args.data, args.data_seed, args.extra_studies, args.extra_seed)
    model = _model(label_map, {"dense_class_head": True})
    if args.width is not None:  # an experiment: weights that the factory's model does not load
        model.dense_class_head = DenseClassHead(model.embed_dim, len(label_map.class_names), width=args.width)
    load_weights(model, args.init, missing_ok=("dense_class_head",))
    test = [i for i in items["test"] if i.get("label")]
    before = voxel_ap(model, test, label_map)
    start = time.process_time()
    features = frozen_features(model, training, label_map)
    lesion_classes = label_map.box_class_indices()
    losses = fit_head(model.dense_class_head, features, lesion_classes, args.epochs, lr=args.lr, seed=args.seed)
    after = voxel_ap(model, test, label_map)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, args.out)
    report = {"init": str(args.init), "init_sha256": sha256_of(args.init), "weights": str(args.out),
              "sha256": sha256_of(args.out), "studies": len(features), "epochs": args.epochs, "lr": args.lr,
              "seed": args.seed, "width": model.dense_class_head.out.in_channels, "cpu_seconds": round(time.process_time() - start, 1), "loss_per_epoch": losses,
              "voxel_ap_test_before": before, "voxel_ap_test_after": after}  # fmt: skip
    atomic_write_json(args.out.with_suffix(".json"), report)
    print(f"{len(features)} studies, loss {losses[0]:.3f} -> {losses[-1]:.3f}; test voxel AP "
          + ", ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in ("cyst", "tumor")), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
