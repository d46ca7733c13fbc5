"""Tests of unimed_core.losses.sequence_loss."""

import pytest
import torch

from unimed_core.label_map import LabelMap
from unimed_core.losses.sequence_loss import sequence_loss, sequence_mask_targets
from unimed_core.model.outputs import ComposedOutput
from unimed_core.model.targets import Target
from unimed_core.tokenizer.tokenizer import Tokenizer
from unimed_core.tokenizer.vocabulary import Vocabulary

S, G = 8, 4
LABEL_MAP = LabelMap({0: "background", 1: "liver", 2: "tumor"}, ("tumor",), ("tumor",))
VOCAB = Vocabulary(LABEL_MAP.class_names, num_bins=8)
TOK = Tokenizer(VOCAB)


def _class_of(token: int):
    return VOCAB.class_index(token) if VOCAB.is_class(token) else None


def _semantic() -> torch.Tensor:
    sem = torch.zeros(S, S, S, dtype=torch.long)
    sem[:4] = 1  # liver: first half along D
    sem[6:, 6:, 6:] = 2  # tumor: a corner
    return sem


def _batch():
    seqs = TOK.pad_batch([TOK.encode_segmentation([0, 1]), TOK.encode_classification([1]), []])
    targets = [Target(semantic=_semantic()), Target(image_labels=torch.tensor([0.0, 1.0])), Target()]
    return seqs, targets


def _composed(seqs: torch.Tensor, seed: int = 0, requires_grad: bool = False) -> ComposedOutput:
    g = torch.Generator().manual_seed(seed)
    b, t = seqs.shape
    positions = seqs == VOCAB.mask
    masks = torch.randn(b, t, G, G, G, generator=g) * positions[..., None, None, None]
    return ComposedOutput(
        token_logits=torch.randn(b, t, VOCAB.size, generator=g).requires_grad_(requires_grad),
        mask_logits=masks.requires_grad_(requires_grad),
        mask_positions=positions,
    )


def test_mask_targets_are_the_semantic_mask_of_the_class_before_mask():
    seqs, targets = _batch()
    slots = sequence_mask_targets(seqs, targets, VOCAB.mask, _class_of, LABEL_MAP.class_index_to_mask_id)
    # BOS SEG liver MASK tumor MASK EOS: MASK at positions 3 and 5 of sample 0.
    assert slots.positions.tolist() == [[0, 3], [0, 5]]
    assert torch.equal(slots.masks[0], _semantic() == 1)
    assert torch.equal(slots.masks[1], _semantic() == 2)


def test_mask_targets_fall_back_to_instances_and_skip_unannotated():
    seqs, _ = _batch()
    inst = torch.stack([_semantic() == 2, torch.zeros(S, S, S, dtype=torch.bool)])
    inst[1, 0, 0, 0] = True
    targets = [Target(instance_labels=torch.tensor([1, 1]), instance_masks=inst), Target(), Target()]
    slots = sequence_mask_targets(seqs, targets, VOCAB.mask, _class_of, LABEL_MAP.class_index_to_mask_id)
    assert slots.positions.tolist() == [[0, 5]]  # liver has no instance here → no target
    assert torch.equal(slots.masks[0], inst.any(0))
    assert sequence_mask_targets(seqs, [Target()] * 3, VOCAB.mask, _class_of, LABEL_MAP.class_index_to_mask_id) is None


def test_loss_terms_and_gradients():
    seqs, targets = _batch()
    slots = sequence_mask_targets(seqs, targets, VOCAB.mask, _class_of, LABEL_MAP.class_index_to_mask_id)
    composed = _composed(seqs, requires_grad=True)
    losses = sequence_loss(composed, seqs, slots, VOCAB.pad)
    assert set(losses) == {"loss_sequence", "loss_sequence_mask_bce", "loss_sequence_mask_dice"}
    sum(losses.values()).backward()
    assert composed.token_logits.grad.abs().sum() > 0
    assert composed.mask_logits.grad[0, 3].abs().sum() > 0
    assert composed.mask_logits.grad[0, 2].abs().sum() == 0  # not a MASK slot
    assert set(sequence_loss(composed, seqs, None, VOCAB.pad)) == {"loss_sequence"}


def test_pad_targets_are_ignored():
    seqs, targets = _batch()
    composed = _composed(seqs, seed=1)
    base = sequence_loss(composed, seqs, None, VOCAB.pad)["loss_sequence"]
    # Logits at positions whose NEXT token is PAD (and the all-PAD row) must not matter.
    ignored = torch.zeros_like(seqs, dtype=torch.bool)
    ignored[:, :-1] = seqs[:, 1:] == VOCAB.pad
    ignored[:, -1] = True  # the last position predicts nothing
    changed = composed.token_logits.clone()
    changed[ignored] = torch.randn(int(ignored.sum()), VOCAB.size) * 10
    composed.token_logits = changed
    assert sequence_loss(composed, seqs, None, VOCAB.pad)["loss_sequence"].item() == pytest.approx(base.item())
    # ...while a non-PAD target does.
    changed = changed.clone()
    changed[0, 0] += torch.randn(VOCAB.size) * 10
    composed.token_logits = changed
    assert sequence_loss(composed, seqs, None, VOCAB.pad)["loss_sequence"].item() != pytest.approx(base.item())


def test_all_pad_batch_gives_no_terms_and_shapes_are_checked():
    seqs = torch.zeros(2, 5, dtype=torch.long)
    composed = _composed(seqs)
    assert sequence_loss(composed, seqs, None, VOCAB.pad) == {}
    with pytest.raises(ValueError, match="do not match"):
        sequence_loss(composed, seqs[:, :4], None, VOCAB.pad)
    with pytest.raises(ValueError, match="sequences must be"):
        sequence_mask_targets(seqs, [Target()], VOCAB.mask, _class_of, LABEL_MAP.class_index_to_mask_id)
