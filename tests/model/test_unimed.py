import pytest
import torch

from unimed_core.model import (
    ComposedDecoder,
    ConvEncoder3D,
    DecomposedDecoder,
    PixelDecoder3D,
    PromptBatch,
    PromptEncoder,
    UniMed,
)
from unimed_core.tokenizer import SequenceGrammar, Vocabulary

D, N = 16, 4


def _prompts(tokenizer, batch=2):
    rows = [
        tokenizer.encode_class_prompt(1),
        tokenizer.encode_point_prompt([[0.2, 0.4, 0.6], [0.8, 0.5, 0.5]], [True, False]),
        tokenizer.encode_box_prompt([0.1, 0.1, 0.1, 0.6, 0.7, 0.8]),
        [],
    ]
    length = max(len(r) for r in rows)
    tokens = torch.tensor([[r + [0] * (length - len(r)) for r in rows]]).expand(batch, -1, -1).clone()
    return PromptBatch(tokens)


def _sequences(tokenizer):
    return tokenizer.pad_batch(
        [tokenizer.encode_segmentation([0, 4]), tokenizer.encode_detection([[0.1, 0.2, 0.3, 0.5, 0.6, 0.7]], [5])]
    )


def test_forward_shapes(tiny_model, tokenizer, vocab):
    image = torch.randn(2, 1, 32, 32, 48)
    seqs = _sequences(tokenizer)
    out = tiny_model(image, _prompts(tokenizer), seqs, torch.rand(2, 1, 32, 32, 48) < 0.5)
    q = N + 4 + 1
    assert out.embedding_stride == tiny_model.embedding_stride == 2
    assert out.decomposed.mask_logits.shape == (2, q, 16, 16, 24)
    assert out.decomposed.class_logits.shape == (2, q, vocab.num_classes + 1)
    assert out.composed.token_logits.shape == (*seqs.shape, vocab.size)
    assert out.composed.mask_logits.shape == (*seqs.shape, 16, 16, 24)
    assert torch.equal(out.composed.mask_positions, seqs == vocab.mask)
    assert out.reconstruction.shape == image.shape
    plain = tiny_model(torch.randn(1, 1, 16, 32, 16))  # any multiple of 16 works
    assert plain.composed is None and plain.reconstruction is None
    assert plain.decomposed.mask_logits.shape == (1, N + 1, 8, 16, 8)


def test_no_mask_token_gives_no_composed_masks(tiny_model, tokenizer):
    seqs = tokenizer.pad_batch([tokenizer.encode_classification([4])] * 2)
    out = tiny_model(torch.randn(2, 1, 32, 32, 32), sequences=seqs)
    assert out.composed.mask_logits is None and not out.composed.mask_positions.any()


def test_gradients_reach_every_parameter(tiny_model, tokenizer):
    out = tiny_model(
        torch.randn(2, 1, 32, 32, 32),
        _prompts(tokenizer),
        _sequences(tokenizer),
        torch.rand(2, 1, 32, 32, 32) < 0.5,
    )
    dec = out.decomposed
    loss = (
        dec.class_logits.square().mean()
        + dec.mask_logits.square().mean()
        + dec.box_logits.square().mean()
        + dec.image_logits.square().mean()
        + sum(a[k].square().mean() for a in dec.aux for k in a)
        + out.composed.token_logits.square().mean()
        + out.composed.mask_logits.square().mean()
        + out.reconstruction.square().mean()
    )
    loss.backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.grad is None]
    assert missing == [], f"parameters without gradient: {missing}"


def test_absent_prompts_equal_no_prompts(tiny_model, vocab):
    tiny_model.eval()
    image = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        ref = tiny_model(image).decomposed
        absent = PromptBatch(torch.full((2, 3, 5), vocab.pad, dtype=torch.long))
        out = tiny_model(image, absent).decomposed
    keep = [*range(N), out.layout.image]
    assert out.layout.num_prompt == 3
    for name in ("class_logits", "mask_logits", "box_logits", "queries"):
        assert torch.allclose(getattr(out, name)[:, keep], getattr(ref, name), atol=1e-5), name
    assert torch.allclose(out.image_logits, ref.image_logits, atol=1e-5)


def test_composed_masks_use_the_decomposed_pixel_path(tiny_model, tokenizer, vocab):
    tiny_model.eval()
    image, seqs = torch.randn(2, 1, 32, 32, 32), _sequences(tokenizer)
    with torch.no_grad():
        out = tiny_model(image, sequences=seqs)
        emb, _ = tiny_model.encode(image)
        hidden, _ = tiny_model.composed_decoder(seqs, out.decomposed.queries, tiny_model.token_embedding)
        expected = tiny_model.decomposed_decoder.masks_from_hidden(hidden, emb)
    pos = seqs == vocab.mask
    assert pos.sum() == 2
    assert torch.allclose(out.composed.mask_logits[pos], expected[pos], atol=1e-5)
    assert torch.count_nonzero(out.composed.mask_logits[~pos]) == 0


def test_generate_decodes_a_mask_per_slot(tiny_model, vocab):
    tiny_model.eval()
    image = torch.randn(2, 1, 32, 32, 32)
    grammar = SequenceGrammar(vocab, max_objects=3, allowed_tasks=[vocab.seg])
    emb, levels = tiny_model.encode(image)
    dec = tiny_model.decode(emb, levels)
    tokens, probs, masks = tiny_model.generate(emb, dec, vocab.seg, grammar, 16)
    assert tokens.shape == probs.shape and len(masks) == 2
    with torch.no_grad():
        hidden, _ = tiny_model.composed_decoder(tokens, dec.queries, tiny_model.token_embedding)
        expected = tiny_model.decomposed_decoder.masks_from_hidden(hidden, emb)
    for b in range(2):
        seq = tokens[b].tolist()
        grammar.state_of([t for t in seq if t != vocab.pad])
        slots = (tokens[b] == vocab.mask).nonzero().flatten()
        assert masks[b].shape == (len(slots), 16, 16, 16)
        assert torch.allclose(masks[b], expected[b, slots], atol=1e-4)
    with pytest.raises(ValueError, match="task"):
        tiny_model.generate(emb, dec, vocab.mask, grammar, 16)


def test_reconstruction_sees_only_unmasked_voxels(tiny_model):
    tiny_model.eval()
    image = torch.randn(1, 1, 32, 32, 32)
    hidden = torch.zeros(1, 1, 32, 32, 32, dtype=torch.bool)
    hidden[..., :16] = True
    other = image.clone()
    other[hidden] = torch.randn(int(hidden.sum()))
    with torch.no_grad():
        a = tiny_model(image, volume_mask=hidden).reconstruction
        b = tiny_model(other, volume_mask=hidden).reconstruction
        c = tiny_model(other, volume_mask=torch.zeros_like(hidden)).reconstruction
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, c, atol=1e-4)


def test_bad_inputs(tiny_model, tokenizer, vocab):
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny_model(torch.zeros(1, 1, 32, 40, 32))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        tiny_model(torch.zeros(1, 32, 32, 32))
    with pytest.raises(ValueError, match="channel"):
        tiny_model(torch.zeros(1, 2, 32, 32, 32))
    image = torch.zeros(2, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="batch"):
        tiny_model(image, _prompts(tokenizer, batch=3))
    with pytest.raises(ValueError, match="sequences"):
        tiny_model(image, sequences=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        tiny_model(image, sequences=torch.full((2, 4), vocab.size, dtype=torch.long))
    with pytest.raises(ValueError, match="volume_mask"):
        tiny_model(image, volume_mask=torch.zeros(2, 1, 8, 16, 16, dtype=torch.bool))
    tiny_model.reconstruction_head = None
    with pytest.raises(ValueError, match="reconstruction_head"):
        tiny_model(image, volume_mask=torch.zeros(2, 1, 16, 16, 16, dtype=torch.bool))


def test_bad_assembly(vocab):
    enc = ConvEncoder3D(1, channels=(8, 8, 16, 16))
    pixel = PixelDecoder3D(enc.out_channels, enc.strides, D)
    other_vocab = Vocabulary(["a", "b"], num_bins=16)

    def build(**overrides):
        parts = dict(
            encoder=enc,
            pixel_decoder=pixel,
            decomposed_decoder=DecomposedDecoder(vocab, D, num_layers=1, num_heads=2),
            composed_decoder=ComposedDecoder(vocab, D, num_layers=1, num_heads=2),
            prompt_encoder=PromptEncoder(vocab, D, num_heads=2),
            vocab=vocab,
            embed_dim=D,
        )
        parts.update(overrides)
        return UniMed(**parts)

    assert isinstance(build(), UniMed)
    with pytest.raises(ValueError, match="different vocabulary"):
        build(prompt_encoder=PromptEncoder(other_vocab, D, num_heads=2))
    with pytest.raises(ValueError, match="different vocabulary"):
        build(composed_decoder=ComposedDecoder(other_vocab, D, num_heads=2))
    with pytest.raises(ValueError, match="embed_dim"):
        build(composed_decoder=ComposedDecoder(vocab, 2 * D, num_heads=2))
    with pytest.raises(ValueError, match="out_channels"):
        build(pixel_decoder=PixelDecoder3D((4, 8, 8, 32), enc.strides, D))
    with pytest.raises(ValueError, match="levels"):
        build(decomposed_decoder=DecomposedDecoder(vocab, D, num_layers=1, num_heads=2, num_levels=2))
    with pytest.raises(ValueError, match="embed_dim"):
        build(embed_dim=0)
