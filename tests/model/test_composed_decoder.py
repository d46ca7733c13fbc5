import pytest
import torch
from torch import nn

from unimed_core.model.composed_decoder import ComposedDecoder
from unimed_core.tokenizer import SequenceGrammar

D = 16


@pytest.fixture
def parts(vocab):
    torch.manual_seed(0)
    dec = ComposedDecoder(vocab, D, num_layers=2, num_heads=2, max_length=64).eval()
    table = nn.Embedding(vocab.size, D)
    return dec, table, torch.randn(4, 6, D)


def test_teacher_forcing_shapes_and_causality(parts, vocab, tokenizer):
    dec, table, memory = parts
    seqs = tokenizer.pad_batch(
        [
            tokenizer.encode_segmentation([0, 3]),
            tokenizer.encode_classification([4, 5]),
            tokenizer.encode_detection([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], [5]),
            tokenizer.encode_segmentation([]),
        ]
    )
    hidden, logits = dec(seqs, memory, table)
    assert hidden.shape == (*seqs.shape, D) and logits.shape == (*seqs.shape, vocab.size)
    changed = seqs.clone()
    changed[:, 3] = vocab.class_token(1)
    _, logits2 = dec(changed, memory, table)
    assert torch.allclose(logits[:, :3], logits2[:, :3], atol=1e-6)
    assert not torch.allclose(logits[:, 3:], logits2[:, 3:], atol=1e-6)


def test_logits_are_tied_to_the_table(parts, vocab):
    dec, table, memory = parts
    seq = torch.tensor([[vocab.bos, vocab.seg]] * 4)
    hidden, logits = dec(seq, memory, table)
    assert torch.allclose(logits, dec.out_proj(hidden) @ table.weight.t() / D**0.5, atol=1e-5)


@pytest.mark.parametrize("task", ["seg", "det", "cls"])
def test_cached_generation_matches_teacher_forcing_and_grammar(parts, vocab, task):
    dec, table, memory = parts
    grammar = SequenceGrammar(vocab, max_objects=3)
    task_token = getattr(vocab, task)
    tokens, hidden, probs = dec.generate(memory, table, grammar, task_token, grammar.max_length)
    assert tokens.shape == probs.shape and hidden.shape == (*tokens.shape, D)
    assert (tokens[:, :2] == torch.tensor([vocab.bos, task_token])).all()
    assert torch.all((probs > 0) & (probs <= 1))
    tf_hidden, tf_logits = dec(tokens, memory, table)
    assert torch.allclose(hidden, tf_hidden, atol=1e-5)
    for b in range(tokens.shape[0]):
        seq = tokens[b].tolist()
        body = seq[: seq.index(vocab.eos) + 1]  # every sequence is closed by EOS, then PAD only
        assert all(t == vocab.pad for t in seq[len(body) :])
        state = grammar.state_of(body)  # raises if the grammar rejects the sequence
        assert grammar.mask(state)[vocab.pad]  # the grammar's "done" state
        for t in range(1, len(body) - 1):
            allowed = grammar.allowed_next(seq[: t + 1])
            expected = tf_logits[b, t].masked_fill(~allowed, float("-inf")).argmax()
            assert int(expected) == seq[t + 1], f"sample {b} step {t}"
    assert max(len([t for t in s if t != vocab.pad]) for s in tokens.tolist()) > 3  # not all empty


def test_generation_stops_cleanly_at_max_length(parts, vocab):
    dec, table, memory = parts
    grammar = SequenceGrammar(vocab, allowed_tasks=[vocab.cls])
    tokens, _, _ = dec.generate(memory, table, grammar, vocab.cls, 4)
    assert tokens.shape[1] <= 4
    for seq in tokens.tolist():
        assert vocab.eos in seq


def test_memory_mask_hides_entries(parts, vocab):
    dec, table, memory = parts
    seq = torch.tensor([[vocab.bos, vocab.seg, vocab.class_token(0), vocab.mask]] * 4)
    keep = torch.ones(4, 6, dtype=torch.bool)
    keep[:, 4:] = False
    masked, _ = dec(seq, memory, table, keep)
    other = memory.clone()
    other[:, 4:] = torch.randn(4, 2, D)
    masked2, _ = dec(seq, other, table, keep)
    trimmed, _ = dec(seq, memory[:, :4], table)
    assert torch.allclose(masked, masked2, atol=1e-6) and torch.allclose(masked, trimmed, atol=1e-5)


def test_bad_arguments(parts, vocab):
    dec, table, memory = parts
    grammar = SequenceGrammar(vocab, allowed_tasks=[vocab.cls])
    with pytest.raises(ValueError, match="divisible"):
        ComposedDecoder(vocab, 10, num_heads=4)
    with pytest.raises(ValueError, match="max_length"):
        dec(torch.ones(4, 65, dtype=torch.long), memory, table)
    with pytest.raises(ValueError, match="memory"):
        dec(torch.ones(4, 3, dtype=torch.long), torch.randn(4, 6, D + 1), table)
    with pytest.raises(ValueError, match="tokens"):
        dec(torch.ones(3, 3, dtype=torch.long), memory, table)
    with pytest.raises(ValueError, match="token_embedding"):
        dec(torch.ones(4, 3, dtype=torch.long), memory, nn.Embedding(vocab.size + 1, D))
    with pytest.raises(ValueError, match="max_length"):
        dec.generate(memory, table, grammar, vocab.cls, 2)
    with pytest.raises(ValueError, match="not allowed"):
        dec.generate(memory, table, grammar, vocab.seg, 10)
