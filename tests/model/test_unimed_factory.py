import pytest
import torch

from unimed_core.label_map import LabelMap
from unimed_core.model import ConvEncoder3D, PromptBatch, SwinEncoder3D, UniMed, unimed_base, unimed_small
from unimed_core.tokenizer import Tokenizer


def test_unimed_small_shapes():
    torch.manual_seed(0)
    model = unimed_small()
    assert isinstance(model, UniMed) and isinstance(model.encoder, ConvEncoder3D)
    assert model.embed_dim == 64 and model.embedding_stride == 2
    assert len(model.decomposed_decoder.layers) == 3 and len(model.composed_decoder.layers) == 2
    vocab = model.vocab
    assert vocab.class_names == LabelMap.default().class_names and vocab.num_bins == 128
    tok = Tokenizer(vocab)
    prompts = PromptBatch(torch.tensor([[tok.encode_class_prompt(0)]] * 2))
    seqs = tok.pad_batch([tok.encode_segmentation([0, 5]), tok.encode_classification([4])])
    out = model(torch.randn(2, 1, 32, 32, 32), prompts, seqs, torch.rand(2, 1, 32, 32, 32) < 0.5)
    q = 16 + 1 + 1
    assert out.decomposed.class_logits.shape == (2, q, vocab.num_classes + 1)
    assert out.decomposed.mask_logits.shape == (2, q, 16, 16, 16)
    assert out.decomposed.box_logits.shape == (2, q, 6, 128)
    assert out.decomposed.image_logits.shape == (2, vocab.num_classes)
    assert out.composed.token_logits.shape == (2, seqs.shape[1], vocab.size)
    assert out.reconstruction.shape == (2, 1, 32, 32, 32)


def test_unimed_small_options():
    lm = LabelMap({0: "background", 1: "liver"}, ("liver",), ())
    model = unimed_small(lm, num_bins=32, num_latent_queries=5)
    assert model.vocab.class_names == ("liver",) and model.vocab.num_bins == 32
    out = model(torch.randn(1, 1, 16, 16, 16))
    assert out.decomposed.box_logits.shape == (1, 6, 6, 32)


def test_unimed_base_forward():
    torch.manual_seed(0)
    model = unimed_base().eval()
    assert isinstance(model.encoder, SwinEncoder3D) and model.embed_dim == 192
    assert len(model.decomposed_decoder.layers) == 6 and len(model.composed_decoder.layers) == 6
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 64, 64))
    assert out.decomposed.mask_logits.shape == (1, 33, 32, 32, 32)
    assert out.decomposed.queries.shape == (1, 33, 192)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_bins"):
        unimed_small(num_bins=1)
    with pytest.raises(ValueError, match="num_latent_queries"):
        unimed_small(num_latent_queries=0)
