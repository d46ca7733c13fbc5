import pytest
import torch

from unimed_core.model.position import FourierEncoding, voxel_centres


def test_voxel_centres_shape_and_values():
    c = voxel_centres((2, 4, 8))
    assert c.shape == (2, 4, 8, 3)
    assert torch.allclose(c[0, 0, 0], torch.tensor([0.25, 0.125, 0.0625]))
    assert torch.allclose(c[-1, -1, -1], torch.tensor([0.75, 0.875, 1 - 0.0625]))


@pytest.mark.parametrize("dim", [2, 10, 64, 65])
def test_fourier_shapes_and_range(dim):
    enc = FourierEncoding(dim)
    out = enc(torch.rand(5, 7, 3))
    assert out.shape == (5, 7, dim)
    assert out.abs().max() <= 1.0 + 1e-6
    assert enc.grid((3, 4, 5)).shape == (dim, 3, 4, 5)


def test_grid_matches_pointwise_encoding():
    enc = FourierEncoding(12)
    grid = enc.grid((4, 6, 8))
    point = enc(torch.tensor([(2 + 0.5) / 4, (3 + 0.5) / 6, (5 + 0.5) / 8]))
    assert torch.allclose(grid[:, 2, 3, 5], point, atol=1e-6)


def test_neighbouring_bins_are_distinct():
    # Two clicks one bin apart (of 128) must get clearly different encodings, far apart ones more so.
    enc = FourierEncoding(64, num_axes=1)
    a, b, far = (enc(torch.tensor([x])) for x in (64.5 / 128, 65.5 / 128, 10.5 / 128))
    assert (a - b).norm() > 0.5
    assert (a - far).norm() > 0.5
    assert torch.allclose(enc(torch.tensor([0.3])), enc(torch.tensor([0.3])))


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        FourierEncoding(1)
    with pytest.raises(ValueError, match="num_axes"):
        FourierEncoding(8, num_axes=0)
    with pytest.raises(ValueError, match="max_frequency"):
        FourierEncoding(8, max_frequency=0)
    with pytest.raises(ValueError, match="3 axes"):
        FourierEncoding(8)(torch.rand(4, 2))
    with pytest.raises(ValueError, match="spatial_shape"):
        FourierEncoding(8).grid((4, 4))
