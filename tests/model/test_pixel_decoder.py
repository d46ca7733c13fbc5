import pytest
import torch

from unimed_core.model.pixel_decoder import PixelDecoder3D

CH, ST = (4, 8, 8, 16), (2, 4, 8, 16)


def _feats(size=32, batch=2):
    return [torch.randn(batch, c, size // s, size // s, size // s) for c, s in zip(CH, ST)]


def test_shapes():
    pd = PixelDecoder3D(CH, ST, embed_dim=16)
    assert pd.embedding_stride == 2 and pd.level_strides == (16, 8, 4)
    emb, levels = pd(_feats())
    assert emb.shape == (2, 16, 16, 16, 16)
    assert [tuple(x.shape) for x in levels] == [(2, 16, 2, 2, 2), (2, 16, 4, 4, 4), (2, 16, 8, 8, 8)]


def test_output_stride_and_levels():
    pd = PixelDecoder3D(CH, ST, embed_dim=8, output_stride=4, num_transformer_levels=2)
    emb, levels = pd(_feats(batch=1))
    assert emb.shape == (1, 8, 8, 8, 8)
    assert pd.level_strides == (16, 8) and [x.shape[-1] for x in levels] == [2, 4]


def test_embedding_depends_on_every_level():
    pd = PixelDecoder3D(CH, ST, embed_dim=8)
    feats = [f.requires_grad_() for f in _feats(batch=1)]
    emb, _ = pd(feats)
    emb.square().mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_bad_arguments():
    with pytest.raises(ValueError, match="output_stride"):
        PixelDecoder3D(CH, ST, 8, output_stride=3)
    with pytest.raises(ValueError, match="increasing"):
        PixelDecoder3D(CH, (2, 4, 4, 16), 8)
    with pytest.raises(ValueError, match="same length"):
        PixelDecoder3D(CH, ST[:3], 8)
    with pytest.raises(ValueError, match="num_transformer_levels"):
        PixelDecoder3D(CH, ST, 8, output_stride=8, num_transformer_levels=3)
    with pytest.raises(ValueError, match="embed_dim"):
        PixelDecoder3D(CH, ST, 0)
    pd = PixelDecoder3D(CH, ST, 8)
    with pytest.raises(ValueError, match="channels"):
        pd([torch.zeros(1, 5, 16, 16, 16), *_feats(batch=1)[1:]])
    with pytest.raises(ValueError, match="levels"):
        pd(_feats()[:3])
