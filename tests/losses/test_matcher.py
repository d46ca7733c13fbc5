"""Tests of unimed_core.losses.matcher.HungarianMatcher."""

import pytest
import torch

from unimed_core.losses.box_losses import target_bins
from unimed_core.losses.mask_losses import resize_masks
from unimed_core.losses.matcher import HungarianMatcher, aux_output
from unimed_core.model.outputs import DecomposedOutput, QueryLayout
from unimed_core.model.targets import Target

C, NB, N, P, S = 4, 16, 6, 2, 16  # classes, bins, latent queries, prompt queries, patch edge


def _cube_masks() -> torch.Tensor:
    masks = torch.zeros(3, S, S, S, dtype=torch.bool)
    masks[0, 2:6, 2:6, 2:6] = True
    masks[1, 8:14, 4:10, 10:16] = True
    masks[2, 0:4, 10:16, 0:6] = True
    return masks


def _boxes() -> torch.Tensor:
    bins = torch.tensor([[1, 2, 3, 8, 9, 10], [4, 4, 4, 12, 12, 12], [0, 6, 1, 5, 15, 7]])
    return (bins.float() + 0.5) / NB


def _perfect(targets: list[Target], perms: list[list[int]]) -> DecomposedOutput:
    """Predictions equal to the targets, target k placed at latent query perms[b][k]; others say no-object."""
    b = len(targets)
    q = N + P + 1
    g = S // 2
    cls = torch.zeros(b, q, C + 1)
    cls[..., C] = 10.0
    masks = torch.full((b, q, g, g, g), -10.0)
    boxes = torch.zeros(b, q, 6, NB)
    for i, (t, perm) in enumerate(zip(targets, perms)):
        if t.instance_labels is None:
            continue
        for k, qi in enumerate(perm):
            cls[i, qi, C] = 0.0
            cls[i, qi, t.instance_labels[k]] = 10.0
            if t.instance_masks is not None:
                masks[i, qi] = resize_masks(t.instance_masks[k : k + 1], (g, g, g))[0] * 20 - 10
            if t.instance_boxes is not None:
                boxes[i, qi].scatter_(-1, target_bins(t.instance_boxes[k], NB)[:, None], 20.0)
    return DecomposedOutput(
        class_logits=cls,
        mask_logits=masks,
        box_logits=boxes,
        image_logits=torch.zeros(b, C),
        queries=torch.zeros(b, q, 8),
        layout=QueryLayout(num_latent=N, num_prompt=P),
    )


def _as_dict(match) -> dict[int, int]:
    q, k = match
    return dict(zip(q.tolist(), k.tolist()))


@pytest.mark.parametrize("num_points", [None, 500])
def test_recovers_a_permutation_of_mask_targets(num_points):
    targets = [
        Target(instance_labels=torch.tensor([0, 0, 2]), instance_masks=_cube_masks()),
        Target(instance_labels=torch.tensor([1, 3, 1]), instance_masks=_cube_masks().flip(1), instance_boxes=_boxes()),
    ]
    perms = [[4, 0, 2], [1, 5, 3]]
    matches = HungarianMatcher(num_points=num_points)(
        _perfect(targets, perms), targets, generator=torch.Generator().manual_seed(0)
    )
    for match, perm in zip(matches, perms):
        assert _as_dict(match) == {qi: k for k, qi in enumerate(perm)}


def test_without_masks_matches_on_class_and_box():
    # All objects share one class, so only the boxes can tell them apart.
    targets = [Target(instance_labels=torch.tensor([1, 1, 1]), instance_boxes=_boxes())]
    out = _perfect(targets, [[3, 5, 0]])
    # Mask logits that would prefer a different assignment must be ignored (no masks annotated).
    out.mask_logits.normal_()
    for matcher in (HungarianMatcher(), HungarianMatcher(cost_giou=2.0)):
        assert _as_dict(matcher(out, targets)[0]) == {3: 0, 5: 1, 0: 2}


def test_sample_without_objects_is_skipped_and_zero_objects_is_empty():
    targets = [
        Target(image_labels=torch.zeros(C)),
        Target(instance_labels=torch.zeros(0, dtype=torch.long), instance_masks=torch.zeros(0, S, S, S).bool()),
        Target(instance_labels=torch.tensor([2]), instance_masks=_cube_masks()[:1]),
    ]
    matches = HungarianMatcher()(_perfect(targets, [[], [], [1]]), targets)
    assert [len(q) for q, _ in matches] == [0, 0, 1]
    assert _as_dict(matches[2]) == {1: 0}


def test_only_latent_queries_are_matched():
    targets = [Target(instance_labels=torch.tensor([2]), instance_masks=_cube_masks()[:1])]
    out = _perfect(targets, [[0]])
    # Make a prompt query an even better fit than latent query 0: it must still not be chosen.
    out.class_logits[0, N] = out.class_logits[0, 0] * 2
    out.mask_logits[0, N] = out.mask_logits[0, 0] * 2
    q, _ = HungarianMatcher()(out, targets)[0]
    assert q.tolist() == [0]


def test_runs_without_grad(monkeypatch):
    targets = [Target(instance_labels=torch.tensor([0, 0, 2]), instance_masks=_cube_masks(), instance_boxes=_boxes())]
    out = _perfect(targets, [[0, 1, 2]])
    for f in ("class_logits", "mask_logits", "box_logits"):
        getattr(out, f).requires_grad_(True)
    matcher = HungarianMatcher(cost_giou=1.0)
    seen = []
    original = matcher._cost

    def spy(*args, **kwargs):
        seen.append(torch.is_grad_enabled())
        cost = original(*args, **kwargs)
        seen.append(cost.requires_grad)
        return cost

    monkeypatch.setattr(matcher, "_cost", spy)
    q, k = matcher(out, targets)[0]
    assert seen == [False, False]
    assert not q.requires_grad and q.dtype == torch.long and k.dtype == torch.long


def test_aux_output_uses_the_layer():
    targets = [Target(instance_labels=torch.tensor([0, 0, 2]), instance_masks=_cube_masks())]
    last = _perfect(targets, [[0, 1, 2]])
    layer = _perfect(targets, [[5, 4, 3]])
    last.aux = [{"class_logits": layer.class_logits, "mask_logits": layer.mask_logits, "box_logits": layer.box_logits}]
    assert _as_dict(HungarianMatcher()(aux_output(last, 0), targets)[0]) == {5: 0, 4: 1, 3: 2}


def test_bad_arguments():
    with pytest.raises(ValueError, match="cost_class"):
        HungarianMatcher(cost_class=-1)
    with pytest.raises(ValueError, match="all matching costs"):
        HungarianMatcher(0, 0, 0, 0, 0)
    targets = [Target(instance_labels=torch.tensor([0]), instance_masks=_cube_masks()[:1])]
    with pytest.raises(ValueError, match="targets for a batch"):
        HungarianMatcher()(_perfect(targets, [[0]]), targets * 2)
