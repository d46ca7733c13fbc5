"""Tiny UniMed parts for fast tests: widths of a few channels, 32³ inputs, 16 coordinate bins."""

from __future__ import annotations

import pytest
import torch

from unimed_core.label_map import LabelMap
from unimed_core.model import (
    ComposedDecoder,
    ConvEncoder3D,
    DecomposedDecoder,
    PixelDecoder3D,
    PromptEncoder,
    ReconstructionHead,
    UniMed,
)
from unimed_core.tokenizer import Tokenizer, Vocabulary

D = 16  # embed dim of the tiny parts


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.from_label_map(LabelMap.default(), num_bins=16)


@pytest.fixture
def tokenizer(vocab) -> Tokenizer:
    return Tokenizer(vocab)


def build_tiny(vocab: Vocabulary, num_latent: int = 4, seed: int = 0) -> UniMed:
    torch.manual_seed(seed)
    encoder = ConvEncoder3D(1, channels=(8, 8, 16, 16), strides=(2, 2, 2, 2))
    pixel = PixelDecoder3D(encoder.out_channels, encoder.strides, D)
    return UniMed(
        encoder=encoder,
        pixel_decoder=pixel,
        decomposed_decoder=DecomposedDecoder(vocab, D, num_layers=2, num_heads=2, num_latent_queries=num_latent),
        composed_decoder=ComposedDecoder(vocab, D, num_layers=1, num_heads=2, max_length=64),
        prompt_encoder=PromptEncoder(vocab, D, num_heads=2),
        vocab=vocab,
        embed_dim=D,
        reconstruction_head=ReconstructionHead(D, pixel.embedding_stride),
    )


@pytest.fixture
def tiny_model(vocab) -> UniMed:
    return build_tiny(vocab)


@pytest.fixture
def make_tiny(vocab):
    """Builder of tiny models with another number of latent queries or seed."""
    return lambda **kwargs: build_tiny(vocab, **kwargs)
