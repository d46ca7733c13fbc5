"""Fit ``DenseClassHead``'s lesion outputs on the frozen features of trained weights, before joint fine-tuning.

Trained jointly from zero, the head did not learn tumours: at the fine-tuning rate its output stayed flat after 600
steps, at ten times the rate (with or without the lesion-balanced BCE) it became a constant after 300 (the tumour
voxel AP on the test studies stayed at 0.02, the share of tumour voxels). Its zero last layer lets no gradient reach
its hidden layer at first, and two studies a step give the lesion voxels little say. A probe on the same frozen
features, trained on as many lesion voxels as others, reached 0.37. So the head is first fitted as that probe was
(linear probing, then fine-tuning: the recipe of Kumar et al., ICLR 2022, for a new head on trained features), then
the whole model trains on (``learning_curve train --init-weights`` the weights written here).

Only the lesion classes' outputs are fitted (the organs' rows stay zero: the class tokens already draw organs), on
cells of ``E``'s grid sampled from the centred 64³ patch of every labelled training study (``fit_head``: lesion cells,
organ cells, other body cells), as a residual on the class masks without the head, then the intercepts are refit on
every cell so that the scores are calibrated again. Whole volumes with a balanced loss instead reached a tumour voxel
AP of 0.07; sampled cells 0.20 (``benchmarks/results/dense_head_fit/README.md``)::

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
from benchmarks.lesion_voxel_ap import centred_patches, voxel_ap
from unimed_core.data.atomic import atomic_write_json
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
        for _, crop in centred_patches(items, label_map, patch, spacing):
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


def fit_head(head, features, lesion_classes: list[int], epochs: int = 10, batch: int = 1024, lr: float = 1e-3,
             negatives: int = 1000, seed: int = 0) -> list[float]:  # fmt: skip
    """Fit the head's lesion outputs as its probe was fitted; returns the mean loss per epoch.

    Cells of ``E``'s grid are sampled from every study: each cell holding a lesion, ``negatives`` organ cells and
    ``negatives`` other cells of the body (organs are where a lesion must be told from its host: hard negatives). An
    MLP of the head's shape is trained on them with globally standardised inputs (Adam, BCE of the class masks
    without the head plus the MLP, foreground weighted by the background-to-foreground ratio), then written into the
    head with the standardisation folded into its first layer. The head must have no normalisation layer (its
    per-volume statistics do not exist for sampled cells)."""
    if any(isinstance(m, (torch.nn.GroupNorm, torch.nn.InstanceNorm3d, torch.nn.BatchNorm3d)) for m in head.modules()):
        raise ValueError("fit_head needs a DenseClassHead without normalisation (norm=None)")
    generator = torch.Generator().manual_seed(seed)
    xs, ts, bs = [], [], []
    for embeddings, stats, share, base in features:
        x = torch.cat([embeddings.float(), stats.float()]).flatten(1)
        lesion, organ = share[:-1].float().flatten(1), share[-1].float().flatten()
        positive = lesion.sum(0) > 0
        body = stats[0].float().flatten() > -0.9
        picks = [positive.nonzero().flatten()]
        for pool in ((organ > 0.5) & ~positive, body & (organ <= 0.5) & ~positive):
            idx = pool.nonzero().flatten()
            picks.append(idx[torch.randperm(idx.numel(), generator=generator)[:negatives]])
        idx = torch.cat(picks)
        xs.append(x[:, idx].T)
        ts.append(lesion[:, idx].T)
        bs.append(base.float().flatten(1)[:, idx].T)
    x, t, b = torch.cat(xs), torch.cat(ts), torch.cat(bs)
    mean, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    xn = (x - mean) / sd
    width = head.out.in_channels
    mlp = torch.nn.Sequential(torch.nn.Linear(x.shape[1], width), torch.nn.GELU(), torch.nn.Linear(width, width),
                              torch.nn.GELU(), torch.nn.Linear(width, len(lesion_classes)))  # fmt: skip
    pos_weight = ((1 - t).sum(0) / t.sum(0).clamp(min=1e-6)).detach()
    optimizer = torch.optim.Adam(mlp.parameters(), lr=lr, weight_decay=1e-4)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for rows in torch.randperm(len(t), generator=generator).split(batch):
            loss = F.binary_cross_entropy_with_logits(b[rows] + mlp(xn[rows]), t[rows], pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach().item() * len(rows)
        losses.append(total / len(t))
    with torch.no_grad():  # the sampling and the foreground weight shift every logit: refit the intercepts on all cells
        zs, ts = [], []
        for embeddings, stats, share, base in features:
            x = (torch.cat([embeddings.float(), stats.float()]).flatten(1).T - mean) / sd
            zs.append(base.float().flatten(1).T + mlp(x))
            ts.append(share[:-1].float().flatten(1).T)
        z, t = torch.cat(zs), torch.cat(ts)
    offset = _intercepts(z, t)
    with torch.no_grad():
        mlp[4].bias += offset
    _write_into(head, mlp, mean, sd, lesion_classes)
    return losses


def _intercepts(z: torch.Tensor, t: torch.Tensor, steps: int = 50) -> torch.Tensor:
    """(L,) offsets ``c`` minimising the unweighted mean BCE of ``z + c`` against ``t`` over every cell (Newton's
    method on one convex scalar per class): the fit's logits, enriched for lesions by the sampling and the foreground
    weight, brought back to how rare lesions are, so that score thresholds mean what they say."""
    c = torch.zeros(z.shape[1], dtype=torch.float64)
    z, t = z.double(), t.double()
    for _ in range(steps):
        p = torch.sigmoid(z + c)
        grad = (p - t).mean(0)
        hess = (p * (1 - p)).mean(0).clamp(min=1e-12)
        c = c - (grad / hess).clamp(-2.0, 2.0)  # damped: far from the optimum the curvature is tiny
    return c.float()


def _write_into(head, mlp, mean, sd, lesion_classes) -> None:
    """The MLP's weights into the head, the input standardisation folded into the first layer
    (``W (x - m) / s + b = (W / s) x + (b - W m / s)``)."""
    first, hidden, last = mlp[0], mlp[2], mlp[4]
    d = head.context.in_channels
    with torch.no_grad():
        w = first.weight / sd
        head.context.weight.copy_(w[:, :d].reshape(head.context.weight.shape))
        head.local.weight.copy_(w[:, d:].reshape(head.local.weight.shape))
        head.context.bias.copy_(first.bias - first.weight @ (mean / sd))
        head.local.bias.zero_()
        head.hidden[0].weight.copy_(hidden.weight.reshape(head.hidden[0].weight.shape))
        head.hidden[0].bias.copy_(hidden.bias)
        head.out.weight.zero_()
        head.out.bias.zero_()
        head.out.weight[lesion_classes] = last.weight.reshape(len(lesion_classes), -1, 1, 1, 1)
        head.out.bias[lesion_classes] = last.bias


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("init", type=Path, help="trained weights (with or without a DenseClassHead)")
    parser.add_argument("out", type=Path, help="where the weights with the fitted head go (sha256 beside)")
    parser.add_argument("--data", type=Path, default=Path("data/learning-cpu"))
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--extra-studies", type=int, default=0)
    parser.add_argument("--extra-seed", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=10)
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
