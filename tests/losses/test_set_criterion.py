"""Tests of unimed_core.losses.set_criterion: SetCriterion and image_loss."""

import math

import pytest
import torch

from unimed_core.losses.box_losses import target_bins
from unimed_core.losses.mask_losses import resize_masks
from unimed_core.losses.matcher import HungarianMatcher
from unimed_core.losses.set_criterion import SetCriterion, image_loss
from unimed_core.model.outputs import DecomposedOutput, QueryLayout
from unimed_core.model.targets import Target

C, NB, N, P, S = 4, 16, 6, 1, 16
G = S // 2
IMAGE_CLASSES = [2, 3]


def _masks() -> torch.Tensor:
    masks = torch.zeros(2, S, S, S, dtype=torch.bool)
    masks[0, 2:6, 2:6, 2:6] = True
    masks[1, 8:14, 4:10, 10:16] = True
    return masks


def _boxes() -> torch.Tensor:
    return (torch.tensor([[1, 2, 3, 8, 9, 10], [4, 4, 4, 12, 12, 12]]).float() + 0.5) / NB


def _mixed_targets() -> list[Target]:
    return [
        Target(semantic=torch.zeros(S, S, S).long(), instance_labels=torch.tensor([0, 2]), instance_masks=_masks()),
        Target(instance_labels=torch.tensor([3, 3]), instance_boxes=_boxes()),
        Target(image_labels=torch.tensor([0.0, 0.0, 1.0, 0.0])),
        Target(),
    ]


def _output(b: int, aux_layers: int = 0, seed: int = 0, requires_grad: bool = False) -> DecomposedOutput:
    g = torch.Generator().manual_seed(seed)
    q = N + P + 1

    def t(*shape):
        return torch.randn(*shape, generator=g).requires_grad_(requires_grad)

    out = DecomposedOutput(
        class_logits=t(b, q, C + 1),
        mask_logits=t(b, q, G, G, G),
        box_logits=t(b, q, 6, NB),
        image_logits=t(b, C),
        queries=torch.zeros(b, q, 8),
        layout=QueryLayout(num_latent=N, num_prompt=P),
    )
    out.aux = [
        {"class_logits": t(b, q, C + 1), "mask_logits": t(b, q, G, G, G), "box_logits": t(b, q, 6, NB)}
        for _ in range(aux_layers)
    ]
    return out


def _make_perfect(out: DecomposedOutput, targets: list[Target]) -> DecomposedOutput:
    """Write the targets into the first latent queries (others: no object)."""
    out.class_logits.detach().zero_()[..., C] = 20.0
    out.mask_logits.detach().fill_(-20.0)
    out.box_logits.detach().zero_()
    for i, t in enumerate(targets):
        if t.instance_labels is None:
            continue
        for k, label in enumerate(t.instance_labels.tolist()):
            out.class_logits.data[i, k, C] = 0.0
            out.class_logits.data[i, k, label] = 20.0
            if t.instance_masks is not None:
                out.mask_logits.data[i, k] = resize_masks(t.instance_masks[k : k + 1], (G, G, G))[0] * 40 - 20
            if t.instance_boxes is not None:
                out.box_logits.data[i, k].scatter_(-1, target_bins(t.instance_boxes[k], NB)[:, None], 30.0)
    return out


def test_perfect_predictions_give_near_zero_losses():
    targets = _mixed_targets()
    out = _make_perfect(_output(len(targets)), targets)
    losses = SetCriterion(C, HungarianMatcher())(out, targets)
    assert losses["loss_mask_bce"] < 1e-4
    assert losses["loss_mask_dice"] < 1e-3
    assert losses["loss_box"] < 1e-3
    assert losses["loss_class"] < 1e-3
    random = SetCriterion(C, HungarianMatcher())(_output(len(targets)), targets)
    assert all(random[k] > 100 * losses[k] for k in losses)


def test_mixed_batch_gives_exactly_the_allowed_terms():
    targets = _mixed_targets()
    out = _output(len(targets), aux_layers=2)
    losses = SetCriterion(C, HungarianMatcher())(out, targets)
    base = {"loss_class", "loss_mask_bce", "loss_mask_dice", "loss_box"}
    assert set(losses) == base | {f"{k}_{i}" for k in base for i in range(2)}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert set(image_loss(out, targets, IMAGE_CLASSES)) == {"loss_image"}


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        ([0], {"loss_class", "loss_mask_bce", "loss_mask_dice"}),
        ([1], {"loss_class", "loss_box"}),
        ([2], set()),
        ([3], set()),
        ([2, 3], set()),
    ],
)
def test_terms_follow_the_annotations(keep, expected):
    targets = [_mixed_targets()[i] for i in keep]
    assert set(SetCriterion(C, HungarianMatcher())(_output(len(targets)), targets)) == expected


def test_unlabelled_samples_do_not_change_the_losses():
    targets = _mixed_targets()
    out = _output(4, seed=3)
    criterion = SetCriterion(C, HungarianMatcher())
    full = criterion(out, targets)
    first_two = DecomposedOutput(
        out.class_logits[:2], out.mask_logits[:2], out.box_logits[:2], out.image_logits[:2], out.queries[:2], out.layout
    )
    part = criterion(first_two, targets[:2])
    assert full.keys() == part.keys()
    for k in full:
        assert full[k].item() == pytest.approx(part[k].item(), rel=1e-5)


def test_gradients_flow_to_every_output():
    targets = _mixed_targets()
    out = _output(len(targets), aux_layers=1, requires_grad=True)
    losses = SetCriterion(C, HungarianMatcher())(out, targets)
    losses.update(image_loss(out, targets, IMAGE_CLASSES))
    sum(losses.values()).backward()
    tensors = [out.class_logits, out.mask_logits, out.box_logits, out.image_logits, *out.aux[0].values()]
    for tensor in tensors:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    # Unlabelled samples get no gradient from the set loss.
    assert out.mask_logits.grad[3].abs().sum() == 0


def test_normalisation_uses_the_count_hook():
    targets = _mixed_targets()[:2]
    out = _output(2, seed=1)
    plain = SetCriterion(C, HungarianMatcher())(out, targets)
    doubled = SetCriterion(C, HungarianMatcher(), count_reducer=lambda n: 2 * n)(out, targets)
    for k in ("loss_mask_bce", "loss_mask_dice", "loss_box"):
        assert doubled[k].item() == pytest.approx(plain[k].item() / 2, rel=1e-5)
    assert doubled["loss_class"].item() == pytest.approx(plain["loss_class"].item(), rel=1e-6)


def test_no_object_weight_changes_the_class_loss():
    targets = _mixed_targets()[:1]
    out = _output(1, seed=2)
    low = SetCriterion(C, HungarianMatcher(), eos_coef=0.1)(out, targets)["loss_class"]
    high = SetCriterion(C, HungarianMatcher(), eos_coef=1.0)(out, targets)["loss_class"]
    assert not math.isclose(low.item(), high.item(), rel_tol=1e-3)


def test_image_loss_reads_only_image_classes_of_labelled_samples():
    targets = _mixed_targets()
    out = _output(len(targets), seed=4)
    loss = image_loss(out, targets, IMAGE_CLASSES)["loss_image"]
    changed = out.image_logits.clone()
    changed[:, [0, 1]] += 5.0  # not image classes
    changed[[0, 1, 3]] += 5.0  # samples without image labels
    out.image_logits = changed
    assert image_loss(out, targets, IMAGE_CLASSES)["loss_image"].item() == pytest.approx(loss.item(), rel=1e-6)
    out.image_logits[2, 2] += 5.0
    assert image_loss(out, targets, IMAGE_CLASSES)["loss_image"].item() != pytest.approx(loss.item(), rel=1e-3)
    with pytest.raises(ValueError, match="targets for a batch"):
        image_loss(out, targets[:2], IMAGE_CLASSES)
    assert image_loss(out, [Target()] * 4, IMAGE_CLASSES) == {}
    with pytest.raises(ValueError, match="image_class_indices"):
        image_loss(out, targets, [7])


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        SetCriterion(0, HungarianMatcher())
    with pytest.raises(ValueError, match="eos_coef"):
        SetCriterion(C, HungarianMatcher(), eos_coef=0.0)
    with pytest.raises(ValueError, match="matcher"):
        SetCriterion(C, matcher=None)
    with pytest.raises(ValueError, match="columns"):
        SetCriterion(C + 1, HungarianMatcher())(_output(1), _mixed_targets()[:1])


def test_unannotated_classes_are_not_taught_as_no_object():
    """A boxes-only sample annotates only some classes: raising an unannotated class's logit costs nothing."""
    torch.manual_seed(0)
    num_classes, queries = 4, 5
    layout = QueryLayout(num_latent=queries, num_prompt=0)

    def output(organ_logit: float) -> DecomposedOutput:
        class_logits = torch.zeros(1, queries + 1, num_classes + 1)
        class_logits[0, :, 0] = organ_logit  # class 0: an organ nobody annotated in this sample
        return DecomposedOutput(
            class_logits=class_logits,
            mask_logits=torch.zeros(1, queries + 1, 4, 4, 4),
            box_logits=torch.zeros(1, queries + 1, 6, 8),
            image_logits=torch.zeros(1, num_classes),
            queries=torch.zeros(1, queries + 1, 8),
            layout=layout,
        )

    box = torch.tensor([[0.1, 0.1, 0.1, 0.4, 0.4, 0.4]])
    partial = Target(instance_labels=torch.tensor([3]), instance_boxes=box, annotated_classes=torch.tensor([2, 3]))
    full = Target(instance_labels=torch.tensor([3]), instance_boxes=box)
    criterion = SetCriterion(num_classes, HungarianMatcher(cost_mask_bce=0, cost_mask_dice=0))
    low, high = (criterion(output(v), [partial])["loss_class"] for v in (0.0, 8.0))
    assert torch.isclose(low, high)
    low, high = (criterion(output(v), [full])["loss_class"] for v in (0.0, 8.0))
    assert high > low + 1.0
