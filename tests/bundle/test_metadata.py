"""metadata.json: MONAI's own schema check offline, and the label map every other part derives from."""

from __future__ import annotations

import json

import pytest
from monai.bundle import verify_metadata

from tests.bundle.conftest import CONFIGS, META
from unimed_core.label_map import LabelMap

SCHEMA = CONFIGS / "schema" / "meta_schema_20240725.json"


def test_verify_metadata_offline():
    # the schema file exists, so MONAI validates against it without downloading
    verify_metadata(meta_file=META, filepath=str(SCHEMA))


def test_verify_metadata_rejects_missing_required_field(tmp_path):
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    del meta["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(bad), filepath=str(SCHEMA))


def test_metadata_declares_three_outputs_and_the_label_map():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    outputs = meta["network_data_format"]["outputs"]
    assert set(outputs) == {"pred", "boxes", "classes"}
    label_map = LabelMap.from_metadata(META)
    assert label_map.mask_classes[0] == "background"
    assert list(label_map.box_classes) == outputs["boxes"]["labels"]
    assert list(label_map.image_classes) == outputs["classes"]["labels"]
    assert meta["schema"].endswith(SCHEMA.name)  # users get the same schema by URL
