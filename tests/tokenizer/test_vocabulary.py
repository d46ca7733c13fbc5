"""Tests of the vocabulary: id ranges, class / coordinate lookups, quantisation."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimed_core.label_map import LabelMap
from unimed_core.tokenizer import Vocabulary


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_label_map(LabelMap.default(), num_bins=32)


def test_from_label_map_uses_the_label_map_order(vocab):
    lm = LabelMap.default()
    assert vocab.class_names == lm.class_names
    assert vocab.num_classes == len(lm.class_names)
    assert vocab.num_bins == 32


def test_special_token_attributes_follow_the_declared_order(vocab):
    for i, name in enumerate(Vocabulary.SPECIAL_TOKENS):
        assert getattr(vocab, name.lower()) == i
        assert vocab.token_name(i) == name


def test_id_ranges_are_disjoint_and_cover_the_vocabulary(vocab):
    specials = set(range(len(Vocabulary.SPECIAL_TOKENS)))
    classes = set(vocab.class_token_ids.tolist())
    coords = set(vocab.coord_token_ids.tolist())
    assert len(classes) == vocab.num_classes and len(coords) == vocab.num_bins
    assert not (specials & classes) and not (specials & coords) and not (classes & coords)
    assert specials | classes | coords == set(range(vocab.size))
    assert len(vocab) == vocab.size == len(specials) + vocab.num_classes + vocab.num_bins
    assert vocab.class_token_ids.dtype == torch.long and vocab.coord_token_ids.dtype == torch.long


def test_every_token_is_exactly_one_kind(vocab):
    for t in range(vocab.size):
        kinds = [t < 10, vocab.is_class(t), vocab.is_coord(t)]
        assert sum(kinds) == 1, t
    assert not vocab.is_class(-1) and not vocab.is_coord(vocab.size)


def test_class_and_coord_lookups_round_trip(vocab):
    for c in range(vocab.num_classes):
        t = vocab.class_token(c)
        assert vocab.is_class(t) and vocab.class_index(t) == c
        assert vocab.token_name(t) == vocab.class_names[c]
    for b in range(vocab.num_bins):
        t = vocab.coord_token(b)
        assert vocab.is_coord(t) and vocab.coord_bin(t) == b
    assert vocab.token_name(vocab.size + 3) == f"<unk {vocab.size + 3}>"


@pytest.mark.parametrize("call", ["class_token", "coord_token", "class_index", "coord_bin"])
@pytest.mark.parametrize("value", [-1, 10_000])
def test_lookups_outside_their_range_raise(vocab, call, value):
    with pytest.raises(ValueError):
        getattr(vocab, call)(value)


def test_class_index_of_a_coordinate_token_raises(vocab):
    with pytest.raises(ValueError):
        vocab.class_index(vocab.coord_token(0))
    with pytest.raises(ValueError):
        vocab.coord_bin(vocab.class_token(0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"class_names": []},
        {"class_names": ["a", "a"]},
        {"class_names": ["a"], "num_bins": 1},
        {"class_names": ["a"], "num_bins": 2.5},
        {"class_names": ["a"], "num_bins": True},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        Vocabulary(**kwargs)


def test_quantize_edges(vocab):
    nb = vocab.num_bins
    x = np.array([0.0, 1.0 / nb - 1e-9, 1.0 / nb, 0.5, 1.0 - 1e-9, 1.0])
    assert vocab.quantize(x).tolist() == [0, 0, 1, nb // 2, nb - 1, nb - 1]
    # Values outside [0, 1] are clipped to the end bins.
    assert vocab.quantize(np.array([-0.3, 1.7])).tolist() == [0, nb - 1]
    assert np.allclose(vocab.dequantize(np.array([0, nb - 1])), [0.5 / nb, 1 - 0.5 / nb])


def test_quantize_rejects_non_finite(vocab):
    with pytest.raises(ValueError):
        vocab.quantize(np.array([0.2, np.nan]))
    with pytest.raises(ValueError):
        vocab.quantize(torch.tensor([np.inf]))


def test_quantize_keeps_the_container_type(vocab):
    t = vocab.quantize(torch.tensor([[0.1, 0.9]]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.long and t.shape == (1, 2)
    a = vocab.quantize(np.array([[0.1, 0.9]]))
    assert isinstance(a, np.ndarray) and a.dtype == np.int64
    assert t.tolist() == a.tolist()
    d = vocab.dequantize(t)
    assert isinstance(d, torch.Tensor) and d.is_floating_point()


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=20),
    num_bins=st.integers(2, 300),
)
def test_round_trip_moves_a_value_at_most_half_a_bin(values, num_bins):
    v = Vocabulary(["a", "b"], num_bins=num_bins)
    x = np.asarray(values)
    bins = v.quantize(x)
    assert ((bins >= 0) & (bins < num_bins)).all()
    assert np.all(np.abs(v.dequantize(bins) - x) <= 0.5 / num_bins + 1e-12)
    # Quantisation is monotone, so sorted corners stay sorted.
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(bins[order]) >= 0)
    # Bin centres are fixed points.
    assert v.quantize(v.dequantize(bins)).tolist() == bins.tolist()
