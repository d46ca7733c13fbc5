"""The bundle trains one epoch from each converted datalist, through MONAI's ConfigWorkflow with tiny overrides."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigWorkflow

from tests.bundle.conftest import LOGGING, META, config
from unimed_core.datasets.kits import convert_kits
from unimed_core.datasets.luna16 import convert_luna16
from unimed_core.datasets.msd import convert_msd
from unimed_core.datasets.totalsegmentator import convert_totalsegmentator


def _convert(layout: str, request, out):
    if layout == "msd":
        return convert_msd(request.getfixturevalue("msd_task"), out)
    root = request.getfixturevalue(f"{layout}_root")[0]
    if layout == "luna16":
        with pytest.warns(UserWarning, match="not in the folder"):
            return convert_luna16(root, out)
    return {"totalseg": convert_totalsegmentator, "kits": convert_kits}[layout](root, out)


@pytest.mark.parametrize("layout", ["msd", "luna16", "totalseg", "kits"])
def test_bundle_trains_one_epoch_from_the_converted_datalist(layout, request, tmp_path):
    datalist = _convert(layout, request, tmp_path / "data")
    workflow = ConfigWorkflow(
        config_file=config("train"),
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="train",
        dataset_dir=str(datalist.parent),
        label_map="$unimed_core.data.datalist.label_map_from_datalist(@datalist)",
        output_dir=str(tmp_path / "train"),
        spacing=[10.0, 10.0, 10.0],
        patch_size=[32, 32, 32],
        batch_size=2,
        max_epochs=1,
        val_interval=1,
        **{"validate#click_classes": []},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert workflow.trainer.state.epoch == 1
    assert (tmp_path / "train" / "models" / "checkpoint_last.pt").is_file()
