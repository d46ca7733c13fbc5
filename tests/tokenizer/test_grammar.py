"""Tests of the decoding grammar: it accepts what the tokenizer writes, rejects what it must not, never sticks."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimed_core.label_map import LabelMap
from unimed_core.tokenizer import SequenceGrammar, Tokenizer, Vocabulary

VOCAB = Vocabulary.from_label_map(LabelMap.default(), num_bins=16)
TOK = Tokenizer(VOCAB)
C = VOCAB.num_classes
GRAMMAR = SequenceGrammar(VOCAB, max_objects=8)
unit = st.floats(0.0, 1.0, allow_nan=False)


def assert_accepted(grammar: SequenceGrammar, seq: list[int]) -> None:
    state = grammar.start()
    for i, token in enumerate(seq):
        allowed = grammar.allowed_next(seq[:i])
        assert allowed.shape == (VOCAB.size,) and allowed.dtype == torch.bool
        assert allowed[token], (i, VOCAB.token_name(token), [VOCAB.token_name(t) for t in seq])
        # The incremental state machine agrees with re-reading the prefix.
        assert torch.equal(grammar.mask(state), allowed)
        state = grammar.step(state, token)
    # After EOS only PAD.
    assert grammar.allowed_next(seq).nonzero().flatten().tolist() == [VOCAB.pad]
    assert grammar.allowed_next([*seq, VOCAB.pad]).nonzero().flatten().tolist() == [VOCAB.pad]


@settings(max_examples=60, deadline=None)
@given(classes=st.lists(st.integers(0, C - 1), max_size=8))
def test_classification_and_segmentation_sequences_are_accepted(classes):
    assert_accepted(GRAMMAR, TOK.encode_classification(classes))
    assert_accepted(GRAMMAR, TOK.encode_segmentation(classes))


@settings(max_examples=60, deadline=None)
@given(
    corners=st.lists(st.tuples(*[unit] * 6), max_size=8),
    labels=st.lists(st.integers(0, C - 1), min_size=8, max_size=8),
)
def test_detection_sequences_are_accepted(corners, labels):
    boxes = np.array(
        [[min(c[i], c[i + 3]) for i in range(3)] + [max(c[i], c[i + 3]) for i in range(3)] for c in corners]
    )
    seq = TOK.encode_detection(boxes.reshape(-1, 6), labels[: len(corners)])
    assert_accepted(GRAMMAR, seq)


def test_grammar_rejects_what_the_tokenizer_never_writes():
    v = VOCAB
    g = SequenceGrammar(VOCAB, max_objects=2)
    c = v.coord_token
    assert g.allowed_next([]).nonzero().flatten().tolist() == [v.bos]
    assert set(g.allowed_next([v.bos]).nonzero().flatten().tolist()) == {v.cls, v.det, v.seg}
    # Classes strictly increasing.
    allowed = g.allowed_next([v.bos, v.cls, v.class_token(2)])
    assert not allowed[v.class_token(2)] and not allowed[v.class_token(1)] and allowed[v.class_token(3)]
    # x2 >= x1 per axis, in bins.
    allowed = g.allowed_next([v.bos, v.det, c(5), c(1), c(1)])
    assert not allowed[c(4)] and allowed[c(5)] and allowed[c(15)] and not allowed[v.eos]
    # A class closes an object; after six coordinates no seventh.
    allowed = g.allowed_next([v.bos, v.det, c(1), c(1), c(1), c(2), c(2), c(2)])
    assert allowed[v.class_offset : v.coord_offset].all() and allowed.sum() == C
    # SEG: a class is followed by MASK and only MASK.
    assert g.allowed_next([v.bos, v.seg, v.class_token(0)]).nonzero().flatten().tolist() == [v.mask]
    # At max_objects only EOS.
    assert g.allowed_next([v.bos, v.cls, v.class_token(0), v.class_token(1)]).nonzero().flatten().tolist() == [v.eos]
    with pytest.raises(ValueError, match="position 2"):
        g.allowed_next([v.bos, v.cls, v.mask])
    with pytest.raises(ValueError):
        g.step(g.start(), v.size + 1)


def test_allowed_tasks_and_classes_restrict_the_grammar():
    v = VOCAB
    g = SequenceGrammar(VOCAB, allowed_tasks=[v.seg], allowed_classes=[4, 1])
    assert g.allowed_next([v.bos]).nonzero().flatten().tolist() == [v.seg]
    allowed = g.allowed_next([v.bos, v.seg])
    assert allowed.nonzero().flatten().tolist() == [v.eos, v.class_token(1), v.class_token(4)]
    assert g.max_length == 3 + 2 * 2
    # A detection grammar without classes can only stop: no object could be closed.
    g = SequenceGrammar(VOCAB, allowed_tasks=[v.det], allowed_classes=[])
    assert g.allowed_next([v.bos, v.det]).nonzero().flatten().tolist() == [v.eos]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_objects": -1},
        {"max_objects": 2.0},
        {"allowed_tasks": []},
        {"allowed_tasks": [VOCAB.mask]},
        {"allowed_classes": [C]},
        {"allowed_classes": [-1]},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        SequenceGrammar(VOCAB, **kwargs)


@pytest.mark.parametrize("task", [VOCAB.cls, VOCAB.det, VOCAB.seg])
@pytest.mark.parametrize("pick", ["lowest", "highest_non_eos"])
def test_greedy_walks_terminate_with_eos_within_max_length(task, pick):
    g = SequenceGrammar(VOCAB, max_objects=5, allowed_tasks=[task])
    seq = [VOCAB.bos]
    while VOCAB.eos not in seq:
        assert len(seq) < g.max_length, seq
        allowed = g.allowed_next(seq).nonzero().flatten().tolist()
        assert allowed, "the grammar got stuck"
        if pick == "lowest":
            seq.append(allowed[0])
        else:
            non_eos = [t for t in allowed if t != VOCAB.eos]
            seq.append(non_eos[-1] if non_eos else VOCAB.eos)
    assert seq[-1] == VOCAB.eos and len(seq) <= g.max_length
    if pick == "highest_non_eos" and task == VOCAB.det:
        assert len(seq) == g.max_length  # the longest walk fills max_objects boxes


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_constrained_walks_decode_losslessly(data):
    """Any sequence the grammar allows decodes to objects that re-encode to the same sequence (up to order)."""
    g = SequenceGrammar(VOCAB, max_objects=4)
    state, seq = g.start(), []
    while VOCAB.eos not in seq:
        allowed = g.mask(state).nonzero().flatten().tolist()
        token = data.draw(st.sampled_from(allowed))
        seq.append(token)
        state = g.step(state, token)
        assert len(seq) <= g.max_length
    d = TOK.decode(seq)
    if d.task == "classification":
        assert TOK.encode_classification(d.classes) == seq
    elif d.task == "segmentation":
        assert TOK.encode_segmentation(d.classes) == seq
    else:
        again = TOK.encode_detection(d.boxes, d.box_labels)
        objects = lambda s: sorted(tuple(s[i : i + 7]) for i in range(2, len(s) - 1, 7))  # noqa: E731
        assert len(again) == len(seq) and objects(again) == objects(seq)


def test_mask_batch_and_copies():
    g = GRAMMAR
    states = [g.start(), g.state_of([VOCAB.bos, VOCAB.seg, VOCAB.class_token(0)])]
    m = g.mask_batch(states, device="cpu")
    assert m.shape == (2, VOCAB.size) and m.dtype == torch.bool
    assert m[0].nonzero().flatten().tolist() == [VOCAB.bos] and m[1].nonzero().flatten().tolist() == [VOCAB.mask]
    # Editing a returned mask must not change the grammar.
    g.mask(g.start()).fill_(True)
    g.mask(g.start(), device="cpu").fill_(True)
    assert g.mask(g.start()).sum() == 1
    assert g.mask_batch([]).shape == (0, VOCAB.size)
