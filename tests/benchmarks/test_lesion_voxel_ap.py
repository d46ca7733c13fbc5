"""Voxel AP of the class-token masks: one value per mask class present in the labelled studies, None otherwise."""

from __future__ import annotations

import torch

from benchmarks.lesion_voxel_ap import lesion_fit, voxel_ap
from unimed_core.data.datalist import load_datalist
from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_tiny
from unimed_core.synthetic.dataset import generate_dataset


def _test_studies(tmp_path, cases: int, seed: int, n_test: int):
    """The label map and the test split of a small generated dataset, with torch seeded for an untrained model."""
    lm = LabelMap.default()
    path = generate_dataset(tmp_path, cases, seed=seed, shape=(36, 36, 32), spacing=(10.0, 10.0, 10.0),
                            n_validation=0, n_test=n_test)  # fmt: skip
    torch.manual_seed(0)
    return lm, load_datalist(path, lm)["test"]


def test_voxel_ap_per_class(tmp_path):
    lm, items = _test_studies(tmp_path, 3, seed=4, n_test=2)
    ap = voxel_ap(unimed_tiny(lm), items, lm, patch=(32, 32, 32), spacing=(10.0, 10.0, 10.0))
    assert set(ap) == {name for name in lm.class_names if lm.class_index_to_mask_id(lm.class_index(name)) is not None}
    assert ap["liver"] is not None and 0.0 < ap["liver"] <= 1.0  # every study has a liver
    present = {n for it in items for n in it.get("box_labels", [])}
    for lesion in ("cyst", "tumor"):
        assert (ap[lesion] is None) == (lesion not in present)


def test_lesion_fit_reads_every_lesion_with_its_host_organ(tmp_path):
    lm, items = _test_studies(tmp_path, 4, seed=5, n_test=3)
    fit = lesion_fit(unimed_tiny(lm), items, lm, patch=(32, 32, 32), spacing=(10.0, 10.0, 10.0))
    assert fit["lesions"], "the generated studies have lesions"
    organs = {"liver", "spleen", "kidney_left", "kidney_right"}
    assert all(x["kind"] in ("cyst", "tumor") and x["host"] in organs and x["voxels"] > 0 for x in fit["lesions"])
    by_host = [g for name, g in fit["summary"].items() if name.split("/")[1] in organs]
    assert sum(g["lesions"] for g in by_host) == len(fit["lesions"])  # and once more by domain
    # an untrained head's lesion logits are far below 0: none of them is fit
    assert fit["fit"] == sum(x["mean_logit"] > 0 for x in fit["lesions"]) / len(fit["lesions"])
