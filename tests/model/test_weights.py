"""Weight files: atomic save with a sha256 sidecar, hash-checked and ``weights_only`` loading."""

from __future__ import annotations

import hashlib

import pytest
import torch

from unimed_core.label_map import LabelMap
from unimed_core.model.factory import unimed_small
from unimed_core.model.weights import WeightsError, load_weights, save_weights, sha256_of


class _Payload:
    """Not a tensor: ``torch.load(weights_only=True)`` must refuse to unpickle it."""

    def __init__(self) -> None:
        self.value = 1


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = unimed_small(LabelMap.default())
    path = tmp_path_factory.mktemp("w") / "model.pt"
    digest = save_weights(model, path)
    return model, path, digest


def test_save_writes_file_and_sidecar(saved):
    _, path, digest = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt", "model.pt.sha256"]  # no temp files
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_of(path)
    assert path.with_name("model.pt.sha256").read_text().split() == [digest, "model.pt"]


def test_round_trip_gives_identical_state(saved):
    model, path, digest = saved
    torch.manual_seed(1)
    fresh = unimed_small(LabelMap.default())
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert load_weights(fresh, path) is fresh
    for (k, a), (k2, b) in zip(fresh.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    load_weights(unimed_small(LabelMap.default()), path, sha256=digest.upper())  # explicit hash, any case


def test_monai_checkpoint_dict_is_accepted(tmp_path, saved):
    model, _, _ = saved
    path = tmp_path / "checkpoint.pt"
    torch.save({"network": model.state_dict(), "epoch": torch.tensor(3)}, path)
    loaded = load_weights(unimed_small(LabelMap.default()), path, sha256=sha256_of(path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_flipped_byte_is_refused(tmp_path, saved):
    _, path, _ = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "model.pt"
    bad.write_bytes(bytes(data))
    (tmp_path / "model.pt.sha256").write_text(path.with_name("model.pt.sha256").read_text())  # the original hash
    with pytest.raises(WeightsError, match="sha256 .* does not match the expected") as info:
        load_weights(unimed_small(LabelMap.default()), bad)
    assert str(bad) in str(info.value)


def test_missing_sidecar_or_file_is_refused(tmp_path, saved):
    _, path, _ = saved
    alone = tmp_path / "model.pt"
    alone.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match="no expected sha256 given and no model.pt.sha256"):
        load_weights(unimed_small(LabelMap.default()), alone)
    with pytest.raises(WeightsError, match="weight file not found"):
        load_weights(unimed_small(LabelMap.default()), tmp_path / "absent.pt", sha256="0" * 64)
    assert issubclass(WeightsError, ValueError)


def test_pickled_object_is_refused_even_with_the_right_hash(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(WeightsError, match="cannot load weights safely"):
        load_weights(torch.nn.Linear(2, 1), path, sha256=sha256_of(path))


def test_wrong_architecture_is_refused(saved):
    _, path, _ = saved
    with pytest.raises(WeightsError, match="weights do not fit this network"):
        load_weights(torch.nn.Linear(3, 2), path)
    other = LabelMap({0: "background", 1: "liver"}, (), ())  # another vocabulary: other head sizes
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(unimed_small(other), path)


def test_weights_without_the_refinement_units_continue_in_a_head_that_has_them(saved):
    model, path, _ = saved
    grown = unimed_small(LabelMap.default(), fine_refine_units=1)
    with pytest.raises(WeightsError, match="do not fit"):  # strict unless the missing part is named
        load_weights(grown, path)
    load_weights(grown, path, missing_ok=("fine_class_head.refine",))
    assert torch.equal(grown.fine_class_head.stem.weight, model.fine_class_head.stem.weight)
    with pytest.raises(WeightsError, match="missing or unexpected"):  # only the named part may be missing
        load_weights(grown, path, missing_ok=("decomposed_decoder",))


def test_the_same_tensors_give_the_same_file_wherever_they_are_saved(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    first = save_weights(model, tmp_path / "a" / "model.pt")
    second = save_weights(model, tmp_path / "b" / "other_name.pt")
    assert first == second
