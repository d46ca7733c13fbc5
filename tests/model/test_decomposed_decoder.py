import pytest
import torch

from unimed_core.model.decomposed_decoder import DecomposedDecoder

D, N = 16, 4


@pytest.fixture
def setup(vocab):
    torch.manual_seed(0)
    dec = DecomposedDecoder(vocab, D, num_layers=3, num_heads=2, num_latent_queries=N).eval()
    levels = [torch.randn(2, D, s, s, s) for s in (2, 4, 8)]
    emb = torch.randn(2, D, 16, 16, 16)
    class_embed = torch.randn(vocab.num_classes, D)
    return dec, levels, emb, class_embed


def test_shapes_and_layout(setup, vocab):
    dec, levels, emb, ce = setup
    prompts = torch.randn(2, 3, D)
    out = dec(levels, emb, ce, prompts, torch.ones(2, 3, dtype=torch.bool))
    q, c, nb = N + 3 + 1, vocab.num_classes, vocab.num_bins
    assert out.class_logits.shape == (2, q, c + 1)
    assert out.mask_logits.shape == (2, q, 16, 16, 16)
    assert out.box_logits.shape == (2, q, 6, nb)
    assert out.image_logits.shape == (2, c)
    assert out.queries.shape == (2, q, D)
    assert (out.layout.num_latent, out.layout.num_prompt, out.layout.image) == (N, 3, N + 3)
    assert len(out.aux) == 3  # initial queries + every layer but the last
    assert all(a["mask_logits"].shape == out.mask_logits.shape for a in out.aux)
    assert set(out.aux[0]) == {"class_logits", "mask_logits", "box_logits"}


def test_masks_come_from_the_pixel_path(setup):
    dec, levels, emb, ce = setup
    out = dec(levels, emb, ce)
    assert torch.allclose(out.mask_logits, dec.masks_from_hidden(out.queries, emb), atol=1e-5)
    manual = torch.einsum("bqc,bcdhw->bqdhw", dec.mask_embed(out.queries), emb)
    assert torch.allclose(dec.masks_from_hidden(out.queries, emb), manual, atol=1e-5)


def test_class_logits_are_tied_to_class_embeddings(setup):
    dec, levels, emb, ce = setup
    out = dec(levels, emb, ce)
    ce2 = ce.clone()
    ce2[1] = torch.randn(D)
    out2 = dec(levels, emb, ce2)
    changed = (out.class_logits - out2.class_logits).abs().amax(dim=(0, 1)) > 1e-6
    # Class embeddings only score the queries (they never enter attention): only column 1 changes, masks do not.
    assert changed.tolist() == [i == 1 for i in range(ce.shape[0] + 1)]
    assert torch.allclose(out.mask_logits, out2.mask_logits)


def test_absent_prompts_do_not_change_other_queries(setup):
    dec, levels, emb, ce = setup
    ref = dec(levels, emb, ce)
    out = dec(levels, emb, ce, torch.randn(2, 2, D), torch.zeros(2, 2, dtype=torch.bool))
    keep = [*range(N), N + 2]  # latents and the image query
    assert torch.allclose(out.class_logits[:, keep], ref.class_logits, atol=1e-5)
    assert torch.allclose(out.mask_logits[:, keep], ref.mask_logits, atol=1e-5)
    assert torch.allclose(out.box_logits[:, keep], ref.box_logits, atol=1e-5)
    assert torch.allclose(out.image_logits, ref.image_logits, atol=1e-5)
    # ... while present prompts do.
    present = dec(levels, emb, ce, torch.randn(2, 2, D), torch.ones(2, 2, dtype=torch.bool))
    assert not torch.allclose(present.class_logits[:, keep], ref.class_logits, atol=1e-5)


def test_attention_mask_rule(setup):
    dec = setup[0]
    logits = torch.full((1, 3, 4, 4, 4), -5.0)
    logits[0, 0, :2] = 5.0  # query 0: a half-volume mask; query 1: empty; query 2: the image query
    logits[0, 2, :] = -5.0
    blocked = dec._attention_mask(logits, (2, 2, 2), image_index=2)
    assert blocked.shape == (1 * dec.num_heads, 3, 8)
    b = blocked[0].reshape(3, 2, 2, 2)
    assert not b[0, 0].any() and b[0, 1].all()  # attends inside its mask only
    assert not b[1].any()  # empty mask → attends everywhere
    assert not b[2].any()  # image query attends everywhere


def test_bad_arguments(setup, vocab):
    dec, levels, emb, ce = setup
    with pytest.raises(ValueError, match="divisible"):
        DecomposedDecoder(vocab, 10, num_heads=4)
    with pytest.raises(ValueError, match="num_layers"):
        DecomposedDecoder(vocab, D, num_layers=0, num_heads=2)
    with pytest.raises(ValueError, match="levels"):
        dec(levels[:2], emb, ce)
    with pytest.raises(ValueError, match="class_embed"):
        dec(levels, emb, ce[:-1])
    with pytest.raises(ValueError, match="prompt_queries"):
        dec(levels, emb, ce, torch.randn(2, 2, D + 1))
    with pytest.raises(ValueError, match="embeddings"):
        dec(levels, torch.randn(2, D + 1, 16, 16, 16), ce)
