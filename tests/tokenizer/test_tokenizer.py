"""Tests of the tokenizer: encode → decode round trips, robust decoding of garbage, prompts, padding."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimed_core.label_map import LabelMap
from unimed_core.tokenizer import DecodedSequence, Tokenizer, Vocabulary

VOCAB = Vocabulary.from_label_map(LabelMap.default(), num_bins=32)
TOK = Tokenizer(VOCAB)
C = VOCAB.num_classes
HALF_BIN = 0.5 / VOCAB.num_bins

class_lists = st.lists(st.integers(0, C - 1), max_size=12)
unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def boxes_and_labels(draw, max_boxes=8):
    n = draw(st.integers(0, max_boxes))
    corners = draw(st.lists(st.tuples(*[unit] * 6), min_size=n, max_size=n))
    boxes = np.array(
        [[min(c[i], c[i + 3]) for i in range(3)] + [max(c[i], c[i + 3]) for i in range(3)] for c in corners]
    )
    labels = draw(st.lists(st.integers(0, C - 1), min_size=n, max_size=n))
    return boxes.reshape(n, 6), labels


def check_valid(d: DecodedSequence, tokens) -> None:
    """Everything a decode returns is well formed."""
    assert d.task in (None, "classification", "detection", "segmentation")
    assert d.classes == sorted(set(d.classes)) and all(0 <= c < C for c in d.classes)
    assert d.boxes.ndim == 2 and d.boxes.shape[1] == 6 and d.boxes.shape[0] == len(d.box_labels)
    assert np.isfinite(d.boxes).all() and (d.boxes >= 0).all() and (d.boxes <= 1).all()
    assert (d.boxes[:, 3:] >= d.boxes[:, :3]).all()
    assert all(0 <= c < C for c in d.box_labels)
    slot_classes = [c for _, c in d.mask_slots]
    assert len(set(slot_classes)) == len(slot_classes)
    for pos, c in d.mask_slots:
        assert tokens[pos] == VOCAB.mask and tokens[pos - 1] == VOCAB.class_token(c)
    if d.task != "detection":
        assert d.boxes.shape[0] == 0
    if d.task != "segmentation":
        assert d.mask_slots == []


@settings(max_examples=100, deadline=None)
@given(classes=class_lists)
def test_classification_round_trip(classes):
    seq = TOK.encode_classification(classes)
    assert seq[:2] == [VOCAB.bos, VOCAB.cls] and seq[-1] == VOCAB.eos
    d = TOK.decode(seq)
    assert d.task == "classification"
    assert d.classes == sorted(set(classes))
    check_valid(d, seq)


@settings(max_examples=100, deadline=None)
@given(classes=class_lists)
def test_segmentation_round_trip(classes):
    seq = TOK.encode_segmentation(classes)
    d = TOK.decode(seq)
    assert d.task == "segmentation"
    assert [c for _, c in d.mask_slots] == sorted(set(classes)) == d.classes
    assert len(seq) == 3 + 2 * len(set(classes))
    check_valid(d, seq)


@settings(max_examples=100, deadline=None)
@given(data=boxes_and_labels())
def test_detection_round_trip(data):
    boxes, labels = data
    seq = TOK.encode_detection(boxes, labels)
    assert len(seq) == 3 + 7 * len(labels)
    d = TOK.decode(seq)
    check_valid(d, seq)
    assert d.task == "detection" and len(d.box_labels) == len(labels)
    expected = VOCAB.dequantize(VOCAB.quantize(boxes))
    # Objects come back in the tokenizer's fixed order: compare as sorted (label, box) rows.
    got = sorted(zip(d.box_labels, d.boxes.round(9).tolist()))
    want = sorted(zip(labels, expected.round(9).tolist()))
    assert got == want
    if len(labels):
        order = sorted(range(len(labels)), key=lambda i: (labels[i], *expected[i]))
        assert np.all(np.abs(d.boxes - boxes[order]) <= HALF_BIN + 1e-12)


def test_detection_order_does_not_depend_on_input_order():
    boxes = np.array([[0.5, 0.5, 0.5, 0.9, 0.9, 0.9], [0.1, 0.1, 0.1, 0.2, 0.2, 0.2], [0.0, 0.3, 0.3, 0.4, 0.4, 0.4]])
    labels = [5, 5, 4]
    a = TOK.encode_detection(boxes, labels)
    b = TOK.encode_detection(boxes[::-1].copy(), labels[::-1])
    assert a == b
    assert TOK.decode(a).box_labels == [4, 5, 5]


def test_encode_accepts_tensors():
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    assert TOK.encode_detection(boxes, torch.tensor([1])) == TOK.encode_detection(boxes.numpy(), [1])


@pytest.mark.parametrize(
    "boxes, labels",
    [
        (np.zeros((2, 4)), [0, 1]),  # 2D boxes
        (np.zeros((6,)), [0]),  # not (N, 6)
        (np.array([[0.5, 0, 0, 0.4, 1, 1]]), [0]),  # x2 < x1
        (np.array([[0, 0, 0, 1, 1, 1.5]]), [0]),  # outside [0, 1]
        (np.array([[0, 0, 0, 1, 1, np.nan]]), [0]),  # not finite
        (np.array([[0, 0, 0, 1, 1, 1]]), [0, 1]),  # label count
        (np.array([[0, 0, 0, 1, 1, 1]]), [C]),  # label out of range
        (np.array([[0, 0, 0, 1, 1, 1]]), [0.5]),  # label not integer
    ],
)
def test_encode_detection_bad_arguments_raise(boxes, labels):
    with pytest.raises(ValueError):
        TOK.encode_detection(boxes, labels)


@pytest.mark.parametrize("call", ["encode_classification", "encode_segmentation"])
@pytest.mark.parametrize("classes", [[-1], [C], [1.0], [True]])
def test_encode_class_lists_bad_arguments_raise(call, classes):
    with pytest.raises(ValueError):
        getattr(TOK, call)(classes)


def test_tokenizer_needs_a_vocabulary():
    with pytest.raises(ValueError):
        Tokenizer(["liver"])


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.integers(-5, VOCAB.size + 5), max_size=60))
def test_decode_never_raises_on_garbage(tokens):
    check_valid(TOK.decode(tokens), tokens)
    assert isinstance(TOK.decode_prompt(tokens), dict)


@settings(max_examples=300, deadline=None)
@given(
    head=st.sampled_from([[VOCAB.bos, VOCAB.cls], [VOCAB.bos, VOCAB.det], [VOCAB.seg], [VOCAB.det]]),
    # Mostly well-typed tokens, so the garbage often contains near-objects.
    body=st.lists(
        st.one_of(
            st.integers(VOCAB.coord_offset, VOCAB.size - 1),
            st.integers(VOCAB.class_offset, VOCAB.coord_offset - 1),
            st.sampled_from([VOCAB.mask, VOCAB.eos, VOCAB.pad, -3, VOCAB.size + 2]),
        ),
        max_size=60,
    ),
)
def test_decode_keeps_only_valid_objects_from_near_garbage(head, body):
    tokens = head + body
    d = TOK.decode(tokens)
    check_valid(d, tokens)
    assert d.task is not None


def test_decode_repairs_and_drops():
    v = VOCAB
    c = v.coord_token
    # Reversed corners are sorted per axis; a truncated object and everything after EOS are dropped.
    seq = [v.bos, v.det, c(9), c(1), c(1), c(2), c(5), c(5), v.class_token(0), c(3), c(3), v.class_token(1), v.eos]
    seq += [c(0)] * 6 + [v.class_token(2)]
    d = TOK.decode(seq)
    assert d.box_labels == [0]
    assert np.allclose(d.boxes, v.dequantize(np.array([[2, 1, 1, 9, 5, 5]])))
    # A class without MASK, a MASK without class and a repeated class are dropped; missing BOS/EOS is fine.
    seq = [v.seg, v.class_token(3), v.class_token(1), v.mask, v.mask, v.class_token(1), v.mask, v.class_token(2)]
    d = TOK.decode(seq)
    assert d.mask_slots == [(3, 1)] and d.classes == [1]
    # No task token: nothing.
    d = TOK.decode([v.bos, v.class_token(0), v.eos])
    assert d.task is None and d.classes == []
    # Tensors and numpy arrays decode like lists; PAD ends the body.
    seq = TOK.encode_classification([0, 2])
    assert TOK.decode(torch.tensor(seq + [v.pad, v.class_token(4)])).classes == [0, 2]
    assert TOK.decode(np.array(seq)).classes == [0, 2]


def test_class_prompt_round_trip():
    for c in range(C):
        p = TOK.encode_class_prompt(c)
        assert p == [VOCAB.class_token(c)]
        assert TOK.decode_prompt(p + [VOCAB.pad]) == {"kind": "class", "class_index": c}
    with pytest.raises(ValueError):
        TOK.encode_class_prompt(C)


@settings(max_examples=100, deadline=None)
@given(
    points=st.lists(st.tuples(unit, unit, unit), min_size=1, max_size=6),
    flags=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_point_prompt_round_trip(points, flags):
    pts = np.array(points)
    flags = flags[: len(points)]
    p = TOK.encode_point_prompt(pts, flags)
    assert len(p) == 4 * len(points)
    out = TOK.decode_prompt(p)
    assert out["kind"] == "points" and out["positive"] == flags
    assert np.allclose(out["points"], VOCAB.dequantize(VOCAB.quantize(pts)))
    assert np.all(np.abs(out["points"] - pts) <= HALF_BIN + 1e-12)


@settings(max_examples=100, deadline=None)
@given(data=boxes_and_labels(max_boxes=1).filter(lambda d: len(d[1]) == 1))
def test_box_prompt_round_trip(data):
    box = data[0][0]
    p = TOK.encode_box_prompt(box)
    assert p[0] == VOCAB.box and len(p) == 7
    out = TOK.decode_prompt(p)
    assert out["kind"] == "box"
    assert np.allclose(out["box"], VOCAB.dequantize(VOCAB.quantize(box)))


@pytest.mark.parametrize(
    "call, args",
    [
        ("encode_point_prompt", (np.zeros((0, 3)), [])),
        ("encode_point_prompt", (np.zeros((2, 2)), [True, False])),
        ("encode_point_prompt", (np.zeros((2, 3)), [True])),
        ("encode_point_prompt", (np.full((1, 3), 2.0), [True])),
        ("encode_box_prompt", (np.zeros(5),)),
        ("encode_box_prompt", (np.array([0.5, 0, 0, 0.4, 1, 1]),)),
    ],
)
def test_prompt_bad_arguments_raise(call, args):
    with pytest.raises(ValueError):
        getattr(TOK, call)(*args)


def test_decode_prompt_of_malformed_prompts():
    v = VOCAB
    assert TOK.decode_prompt([]) == {"kind": None}
    assert TOK.decode_prompt([v.pad, v.pad]) == {"kind": None}
    assert TOK.decode_prompt([v.box, v.coord_token(1)]) == {"kind": None}
    assert TOK.decode_prompt([v.eos, v.class_token(0)]) == {"kind": None}
    # A broken click is dropped, the good one kept.
    p = [v.point_pos, v.coord_token(1), v.point_neg, v.coord_token(2), v.coord_token(3), v.coord_token(4)]
    out = TOK.decode_prompt(p)
    assert out["kind"] == "points" and out["positive"] == [False]
    assert np.allclose(out["points"], v.dequantize(np.array([[2, 3, 4]])))


def test_pad_batch():
    a = TOK.encode_classification([1])
    b = TOK.encode_segmentation([0, 2])
    batch = TOK.pad_batch([a, b])
    assert batch.dtype == torch.long and batch.shape == (2, len(b))
    assert batch[0, : len(a)].tolist() == a and (batch[0, len(a) :] == VOCAB.pad).all()
    assert batch[1].tolist() == b
    assert TOK.pad_batch([a, torch.tensor(b)], pad_to=12).shape == (2, 12)
    assert TOK.pad_batch([], pad_to=4).shape == (0, 4)
    with pytest.raises(ValueError):
        TOK.pad_batch([a, b], pad_to=len(b) - 1)
