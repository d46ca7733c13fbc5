"""Fitting DenseClassHead's lesion outputs on frozen features: the lesion rows learn, the organ rows stay zero."""

from __future__ import annotations

import pytest
import torch

from benchmarks.dense_head_fit import _intercepts, fit_head
from unimed_core.model.dense_class_head import DenseClassHead


def test_lesion_rows_learn_a_conjunction_of_e_and_the_image_and_organ_rows_stay_zero():
    torch.manual_seed(0)
    features = []
    for _ in range(8):
        embeddings = torch.randn(4, 6, 6, 6)
        image = torch.randn(1, 6, 6, 6)  # on E's grid: the head's pooling keeps it
        share = ((embeddings[:1] > 0.5) & (image > 0.5)).float()  # a rare "lesion": two conditions at once
        organ = (embeddings[:1] > 0.5).float() * (1 - share)  # its host: one condition only
        features.append((embeddings, image, torch.cat([share, organ])))
    head = DenseClassHead(4, 3, width=16, radii=(1,))
    features = [(e.half(), head.image_features(i[None], e.shape[1:])[0].half(), s.half(), torch.zeros_like(s[:1]).half())
                for e, i, s in features]  # fmt: skip
    losses = fit_head(head, features, lesion_classes=[2], epochs=60, batch=64, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    assert not head.out.weight[:2].any() and not head.out.bias[:2].any()
    with torch.no_grad():
        logits = head.from_image_features(torch.stack([f[0] for f in features]).float(),
                                          torch.stack([f[1] for f in features]).float())[:, 2]  # fmt: skip
    share = torch.stack([f[2] for f in features]).float()
    assert logits[share[:, 0] > 0].mean() > logits[share[:, 1] > 0].mean() + 2.0  # told from its host


def test_a_head_with_a_per_volume_norm_is_refused():
    head = DenseClassHead(4, 3, width=8, norm=("group", {"num_groups": 2}))
    with pytest.raises(ValueError, match="without normalisation"):
        fit_head(head, [], lesion_classes=[2])


def test_intercepts_bring_enriched_logits_back_to_the_prevalence():
    t = torch.zeros(10000, 2)
    t[:100, 0] = 1.0  # 1 % lesion cells in class 0, 10 % in class 1
    t[:1000, 1] = 1.0
    z = torch.full((10000, 2), 3.0)  # an enriched fit calls every cell a lesion
    c = _intercepts(z, t)
    assert torch.sigmoid(3.0 + c).tolist() == pytest.approx([0.01, 0.1], rel=1e-3)
