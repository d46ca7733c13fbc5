import pytest
import torch
from torch import nn

from unimed_core.model.prompt_encoder import PromptEncoder
from unimed_core.tokenizer import Vocabulary

D = 16


@pytest.fixture
def parts(vocab, tokenizer):
    torch.manual_seed(0)
    return PromptEncoder(vocab, D, num_heads=2), nn.Embedding(vocab.size, D), tokenizer


def _pack(tokenizer, prompts, length=None):
    """(1, P, L) prompt batch of token lists (an empty list is an absent prompt)."""
    length = length or max(len(p) for p in prompts)
    return torch.tensor([[p + [0] * (length - len(p)) for p in prompts]], dtype=torch.long)


def test_shapes_and_presence(parts):
    enc, table, tok = parts
    prompts = [
        tok.encode_class_prompt(2),
        tok.encode_point_prompt([[0.2, 0.5, 0.7], [0.9, 0.1, 0.3]], [True, False]),
        tok.encode_box_prompt([0.1, 0.2, 0.3, 0.5, 0.6, 0.7]),
        [],
    ]
    q, present = enc(_pack(tok, prompts).expand(3, -1, -1), table)
    assert q.shape == (3, 4, D)
    assert present.tolist() == [[True, True, True, False]] * 3
    assert torch.count_nonzero(q[:, 3]) == 0
    assert torch.all(q[:, :3].norm(dim=-1) > 0)


def test_absent_prompt_changes_nothing_and_padding_length_is_irrelevant(parts):
    enc, table, tok = parts
    box = tok.encode_box_prompt([0.1, 0.2, 0.3, 0.5, 0.6, 0.7])
    alone, _ = enc(_pack(tok, [box]), table)
    with_absent, _ = enc(_pack(tok, [box, []], length=12), table)
    assert torch.allclose(alone[0, 0], with_absent[0, 0], atol=1e-5)


def test_clicks_are_precise(parts):
    enc, table, tok = parts
    nb = tok.vocab.num_bins
    p1 = tok.encode_point_prompt([[5.5 / nb, 0.5, 0.5]], [True])
    p2 = tok.encode_point_prompt([[6.5 / nb, 0.5, 0.5]], [True])  # one bin further along x
    p3 = tok.encode_point_prompt([[0.5, 5.5 / nb, 0.5]], [True])  # same bins on other axes
    neg = tok.encode_point_prompt([[5.5 / nb, 0.5, 0.5]], [False])
    q, _ = enc(_pack(tok, [p1, p2, p3, neg]), table)
    for other in (1, 2, 3):
        assert (q[0, 0] - q[0, other]).norm() > 1e-3 * q[0, 0].norm()


def test_gradients_reach_the_shared_table_and_every_parameter(parts):
    enc, table, tok = parts
    prompts = [tok.encode_point_prompt([[0.2, 0.5, 0.7], [0.6, 0.1, 0.2]], [True, False]), tok.encode_class_prompt(0)]
    tokens = _pack(tok, prompts)
    q, _ = enc(tokens, table)
    q, _, _ = enc.ground(q, tokens, torch.randn(1, D, 4, 4, 4))
    q.square().sum().backward()
    assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    assert [n for n, p in enc.named_parameters() if p.grad is None] == []


def test_anchors_are_the_positive_clicks_mean_or_the_box_centre(parts):
    enc, table, tok = parts
    nb = tok.vocab.num_bins
    c = [(i + 0.5) / nb for i in (1, 2, 3, 5, 6, 7)]  # bin centres: exact after quantisation
    prompts = [
        tok.encode_point_prompt([c[:3], c[3:], [c[1], c[1], c[1]]], [True, True, False]),
        tok.encode_box_prompt(c),
        tok.encode_class_prompt(1),
    ]
    pos, has_pos, neg, has_neg = enc.anchors(_pack(tok, prompts))
    mid = torch.tensor([(a + b) / 2 for a, b in zip(c[:3], c[3:])])
    assert has_pos.tolist() == [[True, True, False]] and has_neg.tolist() == [[True, False, False]]
    assert torch.allclose(pos[0, 0], mid) and torch.allclose(pos[0, 1], mid)
    assert torch.allclose(neg[0, 0], torch.tensor([c[1]] * 3))


def test_grounding_samples_the_embedding_under_the_click(parts):
    """Two clicks on different places of an embedding give queries that differ by what lies under them."""
    enc, table, tok = parts
    emb = torch.zeros(1, D, 4, 4, 4)
    emb[0, :, 0, 0, 0] = 1.0  # one distinctive voxel at the first corner
    prompts = [tok.encode_point_prompt([[0.1, 0.1, 0.1]], [True]), tok.encode_point_prompt([[0.9, 0.9, 0.9]], [True])]
    tokens = _pack(tok, prompts)
    q, _ = enc(tokens, table)
    grounded, anchors, anchored = enc.ground(q, tokens, emb)
    assert anchored.tolist() == [[True, True]]
    delta = grounded - q
    expected = enc.ground_positive.bias.expand(2, -1)  # zero embedding under the second click: only the bias
    assert torch.allclose(delta[0, 1], expected[1], atol=1e-6)
    assert not torch.allclose(delta[0, 0], expected[0], atol=1e-3)


def test_bad_arguments(parts, vocab):
    enc, table, tok = parts
    with pytest.raises(ValueError, match="divisible"):
        PromptEncoder(vocab, 10, num_heads=4)
    with pytest.raises(ValueError, match="embed_dim"):
        PromptEncoder(vocab, 0)
    with pytest.raises(ValueError, match=r"\(B, P, L\)"):
        enc(torch.zeros(2, 3, dtype=torch.long), table)
    with pytest.raises(ValueError, match="max_prompt_length"):
        enc(torch.zeros(1, 1, 33, dtype=torch.long), table)
    with pytest.raises(ValueError, match="token_embedding"):
        enc(torch.zeros(1, 1, 3, dtype=torch.long), nn.Embedding(vocab.size, D + 1))
    other = Vocabulary(["a"], num_bins=4)
    with pytest.raises(ValueError, match="token_embedding"):
        enc(torch.zeros(1, 1, 3, dtype=torch.long), nn.Embedding(other.size, D))
    with pytest.raises(ValueError, match="token ids"):
        enc(torch.full((1, 1, 3), vocab.size, dtype=torch.long), table)
