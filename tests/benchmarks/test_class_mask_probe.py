"""The lesion probe reads the class-token masks where the lesions are, and tells a model that sees them from one
that does not."""

from __future__ import annotations

import torch

from benchmarks.class_mask_probe import main, probe
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import save_weights
from unimed_core.synthetic.case import SyntheticConfig
from unimed_core.synthetic.dataset import generate_dataset

LM = LabelMap.default()


def _weights(path, logit: float):
    """Small-model weights whose masks are the constant ``logit`` everywhere: the embeddings E are (1, 0, ...) and
    the mask MLP's last layer returns (logit, ...) whatever the query."""
    torch.manual_seed(0)
    model = unimed_small(LM)
    with torch.no_grad():
        model.pixel_decoder.embed_out.weight.zero_()
        model.pixel_decoder.embed_out.bias.zero_()
        model.pixel_decoder.embed_out.bias[0] = 1.0
        last = [m for m in model.decomposed_decoder.mask_embed.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[0] = logit
    save_weights(model, path)
    return path


def test_probe_reports_where_the_lesion_masks_fire(tmp_path):
    datalist = generate_dataset(
        tmp_path / "data", 3, seed=1, shape=(40, 40, 36), spacing=(9.6, 9.6, 10.0), n_validation=0, n_test=3,
        base_config=SyntheticConfig(lesion_presence=1.0, lesion_radius_mm=(20.0, 30.0)),
    )  # fmt: skip
    on = probe(_weights(tmp_path / "on.pt", 5.0), datalist, "test", 3)["summary"]
    assert on["cyst"]["studies_with_lesion"] >= 1 and on["cyst"]["lesion_voxels"] > 0
    # a mask that is high everywhere: high inside lesions and out, every voxel above 0.5
    assert on["cyst"]["p_lesion"] > 0.99 and on["cyst"]["p_body"] > 0.99
    assert on["cyst"]["voxels_above_half_in_lesions"] == on["cyst"]["lesion_voxels"]
    off = probe(_weights(tmp_path / "off.pt", -5.0), datalist, "test", 3)["summary"]
    assert off["tumor"]["p_lesion"] < 0.01 and off["tumor"]["voxels_above_half_in_lesions"] == 0
    assert main([str(tmp_path / "off.pt"), "--data", str(datalist), "--results", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "class_mask_probe.json").is_file()
