import pytest
import torch

from unimed_core.model.encoder import ConvEncoder3D, SwinEncoder3D


def test_conv_encoder_shapes():
    enc = ConvEncoder3D(1, channels=(8, 8, 16, 16), strides=(2, 2, 2, 2))
    assert enc.out_channels == (8, 8, 16, 16)
    assert enc.strides == (2, 4, 8, 16)
    feats = enc(torch.randn(2, 1, 32, 48, 16))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 32 // s, 48 // s, 16 // s) for c, s in zip(enc.out_channels, enc.strides)
    ]


def test_conv_encoder_smallest_input_in_training_mode():
    # 16³ gives 1-voxel maps at stride 16; the default group norm must still work while training.
    enc = ConvEncoder3D(1, channels=(8, 8, 16, 16)).train()
    feats = enc(torch.randn(2, 1, 16, 16, 16))
    assert feats[-1].shape == (2, 16, 1, 1, 1) and torch.isfinite(feats[-1]).all()


def test_conv_encoder_other_strides():
    enc = ConvEncoder3D(2, channels=(8, 16), strides=(1, 4), num_res_units=2)
    assert enc.strides == (1, 4)
    feats = enc(torch.randn(1, 2, 8, 8, 8))
    assert feats[0].shape == (1, 8, 8, 8, 8) and feats[1].shape == (1, 16, 2, 2, 2)


def test_swin_encoder_shapes():
    enc = SwinEncoder3D(1, feature_size=6, depths=(1, 1, 1), num_heads=(1, 2, 4), window_size=4)
    assert enc.out_channels == (6, 12, 24, 48)
    assert enc.strides == (2, 4, 8, 16)
    feats = enc(torch.randn(1, 1, 32, 16, 48))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 32 // s, 16 // s, 48 // s) for c, s in zip(enc.out_channels, enc.strides)
    ]


def test_bad_arguments():
    with pytest.raises(ValueError, match="same length"):
        ConvEncoder3D(1, channels=(4, 8), strides=(2,))
    with pytest.raises(ValueError, match="channels"):
        ConvEncoder3D(1, channels=(4, 0))
    with pytest.raises(ValueError, match="in_channels"):
        ConvEncoder3D(0)
    with pytest.raises(ValueError, match="num_heads"):
        SwinEncoder3D(feature_size=6, num_heads=(4, 4, 4))
    with pytest.raises(ValueError, match="3 entries"):
        SwinEncoder3D(feature_size=6, depths=(1, 1), num_heads=(1, 2))
    enc = ConvEncoder3D(1, channels=(8, 8), strides=(2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        enc(torch.zeros(1, 1, 8, 8, 6))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        enc(torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match="channel"):
        enc(torch.zeros(1, 2, 8, 8, 8))
