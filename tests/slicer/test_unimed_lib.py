"""UniMedLib, the extension's Slicer-free library: command, process, outputs, findings, remote, dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from unimed_slicer_helpers import MODULE_DIR, oblique_affine
from UniMedLib import (
    Detection,
    InferenceCancelled,
    InferenceFailed,
    InferenceRequest,
    box_voxel_mask,
    build_command,
    findings_rows,
    label_entries,
    overlapping_segment,
    parse_progress,
    read_outputs,
    remote_infer,
    request_params,
    run_command,
)
from UniMedLib.dependencies import missing_modules, pip_arguments

from unimed_core.label_map import LabelMap


def test_library_imports_neither_slicer_nor_qt_nor_torch():
    code = (
        f"import sys; sys.path.insert(0, {str(MODULE_DIR)!r}); import UniMedLib; "
        "bad = [m for m in ('slicer', 'qt', 'vtk', 'torch') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# -- command -----------------------------------------------------------------------------------------------
def test_build_command_automatic_and_prompted():
    auto = build_command(InferenceRequest("in.nrrd", "out", weights="w.pt", device="cpu", classes=["liver"]))
    assert auto[1:4] == ["-m", "unimed_core.cli.infer", "in.nrrd"]
    assert auto[auto.index("--out") + 1] == "out" and auto[auto.index("--weights") + 1] == "w.pt"
    assert auto[auto.index("--classes") + 1 :] == ["liver"]
    assert not any(a.startswith("--click") for a in auto)
    prompted = build_command(
        InferenceRequest("in.nrrd", "out", positive_points=[(-1, 2.5, -3)], negative_points=[[4, 5, 6]])
    )
    assert "--click=-1.0,2.5,-3.0" in prompted and "--negative-click=4.0,5.0,6.0" in prompted
    assert "--weights" not in prompted and "--classes" not in prompted


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "tpu"}, "device"),
        ({"positive_points": [(1, 2)]}, "positive_points"),
        ({"positive_points": [(1, 2, float("nan"))]}, "positive_points"),
        ({"negative_points": [(1, 2, 3)]}, "positive point"),
        ({"classes": []}, "classes"),
    ],
)
def test_request_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InferenceRequest("in.nrrd", "out", **kwargs)


# -- process -----------------------------------------------------------------------------------------------
def test_negative_coordinates_reach_the_cli_parser():
    """argparse must read a click at negative coordinates as a value, not as an option."""
    from unimed_core.cli.infer import parse_point

    cmd = build_command(InferenceRequest("in.nrrd", "out", positive_points=[(-60, -4.5, -1e-3)]))
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("inputs", nargs="*")
    parser.add_argument("--out")
    parser.add_argument("--device")
    parser.add_argument("--click", type=parse_point, action="append")
    assert parser.parse_args(cmd[3:]).click == [[-60.0, -4.5, -1e-3]]


def test_parse_progress():
    assert parse_progress("UniMed:  40%|####      | 2/5 [00:01<00:02]") == 0.4
    assert parse_progress("UniMed: 100%|##########| 1/1") == 1.0
    assert parse_progress("loading weights") is None


def test_run_command_streams_lines_and_progress():
    script = textwrap.dedent(
        """
        import sys
        print("hello")
        for i in range(3):
            sys.stderr.write(f"\\rbar: {50 * i}%|##| {i}/2"); sys.stderr.flush()
        print("\\nbye")
        """
    )
    lines, progress = [], []
    result = run_command(
        [sys.executable, "-c", script], progress_callback=lambda f, m: progress.append(f), log_callback=lines.append
    )
    assert result.returncode == 0
    assert progress == [0.0, 0.5, 1.0]
    assert lines[0] == "hello" and lines[-1] == "bye"


def test_run_command_failure_carries_the_output():
    with pytest.raises(InferenceFailed, match="unimed-infer: error: bad file") as info:
        run_command([sys.executable, "-c", "import sys; print('unimed-infer: error: bad file'); sys.exit(2)"])
    assert info.value.returncode == 2


def test_run_command_cancel_kills_the_process():
    start = time.perf_counter()
    deadline = start + 0.5
    with pytest.raises(InferenceCancelled):
        run_command(
            [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
            should_cancel=lambda: time.perf_counter() > deadline,
        )
    assert time.perf_counter() - start < 10


def test_run_command_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        run_command([])


# -- findings ----------------------------------------------------------------------------------------------
def _brute_force_inside(box, shape, affine):
    ijk = np.stack(np.indices(shape), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return np.all((world >= np.asarray(box[:3]) - 1e-6) & (world <= np.asarray(box[3:]) + 1e-6), axis=-1)


def test_box_voxel_mask_matches_brute_force_on_an_oblique_grid():
    shape = (20, 18, 16)
    affine = oblique_affine(shape, (2.0, 2.5, 3.0))
    box = [-10.0, -6.0, -8.0, 7.0, 9.0, 4.0]
    region, inside = box_voxel_mask(box, shape, affine)
    full = np.zeros(shape, dtype=bool)
    full[region] = inside
    expected = _brute_force_inside(box, shape, affine)
    assert expected.sum() > 20
    np.testing.assert_array_equal(full, expected)


def test_overlapping_segment_and_rows():
    shape = (20, 18, 16)
    affine = oblique_affine(shape, (2.0, 2.5, 3.0))
    labels = np.zeros(shape, dtype=np.int16)
    labels[5:15, 4:14, 3:13] = 1  # "liver"
    labels[8:11, 8:11, 7:10] = 6  # "tumor" inside it
    tumor_world = affine[:3, :3] @ np.indices((3, 3, 3)).reshape(3, -1) + affine[:3, :3] @ [[8], [8], [7]]
    tumor_world += affine[:3, 3:4]
    box = [*tumor_world.min(1), *tumor_world.max(1)]
    names = {1: "liver", 6: "tumor"}
    name, fraction = overlapping_segment(box, labels, affine, names)
    inside = _brute_force_inside(box, shape, affine)
    values, counts = np.unique(labels[inside], return_counts=True)
    assert name == names[int(values[np.argmax(counts)])]
    assert fraction == pytest.approx(counts.max() / inside.sum())
    assert overlapping_segment([100, 100, 100, 101, 101, 101], labels, affine, names) == ("", 0.0)

    detections = [Detection("tumor", 0.4, box), Detection("cyst", 0.9, [100, 100, 100, 102, 103, 104])]
    rows = findings_rows(detections, {"cyst": 0.2, "tumor": 0.7}, labels, affine, names)
    assert [(r.kind, r.label) for r in rows] == [
        ("class", "tumor"),
        ("class", "cyst"),
        ("detection", "cyst"),
        ("detection", "tumor"),
    ]
    assert rows[2].size_mm == (2.0, 3.0, 4.0) and rows[2].center == (101.0, 101.5, 102.0) and rows[2].segment == ""
    assert rows[3].segment == name
    assert rows[2].cells()[3] == "2.0 x 3.0 x 4.0"
    with pytest.raises(ValueError, match="affine"):
        findings_rows(detections, {}, labels)


def test_detection_rejects_inverted_box():
    with pytest.raises(ValueError, match="x1 <= x2"):
        Detection("tumor", 0.5, [1, 0, 0, 0, 1, 1])


# -- outputs -----------------------------------------------------------------------------------------------
def _write_outputs(folder, name="ct", coordinates="world millimetres, RAS"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_seg.nii.gz").write_bytes(b"")
    boxes = {"coordinates": coordinates, "detections": [{"label": "cyst", "score": 0.8, "box": [0, 1, 2, 3, 4, 5]}]}
    (folder / f"{name}_boxes.json").write_text(json.dumps(boxes))
    (folder / f"{name}_classes.json").write_text(json.dumps({"probabilities": {"cyst": 0.8, "tumor": 0.1}}))


def test_read_outputs(tmp_path):
    _write_outputs(tmp_path)
    outputs = read_outputs(tmp_path, "ct")
    assert outputs.labels_path == tmp_path / "ct_seg.nii.gz" and outputs.click_path is None
    assert outputs.detections == [Detection("cyst", 0.8, (0, 1, 2, 3, 4, 5))]
    assert outputs.detections[0].name == "cyst 0.80"
    assert outputs.class_probabilities == {"cyst": 0.8, "tumor": 0.1}
    with pytest.raises(ValueError, match="no label volume"):
        read_outputs(tmp_path, "other")
    with pytest.raises(ValueError, match="does not exist"):
        read_outputs(tmp_path / "missing", "ct")


def test_read_outputs_refuses_non_ras_boxes(tmp_path):
    _write_outputs(tmp_path, coordinates="LPS voxels")
    with pytest.raises(ValueError, match="RAS"):
        read_outputs(tmp_path, "ct")


def test_label_entries_come_from_the_label_map():
    label_map = LabelMap.default()
    entries = label_entries()
    assert [(e.value, e.name) for e in entries] == [(i, n) for i, n in label_map.mask_classes.items() if i > 0]
    assert all(e.color == tuple(c / 255 for c in label_map.color(e.name)) for e in entries)


# -- MONAI Label -------------------------------------------------------------------------------------------
class FakeClient:
    """Records the call and answers like MONAILabelClient.infer: (label file, result params)."""

    def __init__(self, label_file, result):
        self.label_file, self.result, self.calls = label_file, result, []

    def infer(self, model, image_in, params, label_in=None, file=None, session_id=None):
        self.calls.append((model, image_in, params, file))
        return str(self.label_file), self.result


def test_remote_infer_stores_the_answer_like_the_cli(tmp_path):
    label = tmp_path / "server" / "result.nrrd"
    label.parent.mkdir()
    label.write_bytes(b"nrrd")
    result = {
        "detections": [{"label": "tumor", "score": 0.6, "box": [0, 0, 0, 1, 1, 1]}],
        "probabilities": {"tumor": 0.6},
    }
    client = FakeClient(label, json.dumps(result))
    request = InferenceRequest(tmp_path / "in.nrrd", tmp_path / "out", classes=["tumor"], device="cpu")
    outputs = remote_infer(request, "ct", client=client)
    model, _, params, file = client.calls[0]
    assert model == "unimed" and file == str(tmp_path / "in.nrrd") and params["classes"] == ["tumor"]
    assert outputs.labels_path == tmp_path / "out" / "ct_seg.nrrd"
    assert outputs.detections[0].label == "tumor" and outputs.class_probabilities == {"tumor": 0.6}


def test_remote_prompt_params_and_bad_url():
    from UniMedLib.remote import make_client

    params = request_params(InferenceRequest("in.nrrd", "out", positive_points=[(1, 2, 3)]))
    assert params["foreground"] == [[1.0, 2.0, 3.0]] and params["background"] == []
    assert params["coordinates"] == "RAS mm"
    with pytest.raises(ValueError, match="http"):
        make_client("localhost:8000")


# -- dependencies ------------------------------------------------------------------------------------------
def test_dependencies():
    assert missing_modules({"json": None, "surely_not_a_module_xyz": None}) == ["surely_not_a_module_xyz"]
    assert pip_arguments([]) == ""
    assert pip_arguments(["monai", "unimed_core"], source="/opt/unimed") == "monai /opt/unimed"


# -- box prompts and warnings --------------------------------------------------------------------------------
def test_box_request_builds_the_box_option_and_refuses_bad_boxes():
    request = InferenceRequest("in.nrrd", "out", box=(-10, -20.5, 3, 10, 0, 30))
    assert request.prompted and request.prompt_kind == "box"
    cmd = build_command(request)
    assert "--box=-10.0,-20.5,3.0,10.0,0.0,30.0" in cmd and not any(c.startswith("--click") for c in cmd)
    from unimed_core.cli.infer import parse_box

    assert parse_box(cmd[-1].split("=", 1)[1]) == [-10.0, -20.5, 3.0, 10.0, 0.0, 30.0]  # what the CLI will read
    for box, message in (((0, 0, 0, 1, 1), "box must be"), ((0, 0, 0, 1, 0, 1), "box must be")):
        with pytest.raises(ValueError, match=message):
            InferenceRequest("in.nrrd", "out", box=box)
    with pytest.raises(ValueError, match="either a box or click points"):
        InferenceRequest("in.nrrd", "out", box=(0, 0, 0, 1, 1, 1), positive_points=[(0, 0, 0)])
    assert InferenceRequest("in.nrrd", "out").prompt_kind == ""


def test_read_outputs_finds_the_box_mask_and_the_warnings(tmp_path):
    (tmp_path / "input_box.nii.gz").write_bytes(b"")
    warning = {"signal": "region", "score": 9.1, "limit": 3.0, "message": "field of view along S 100 mm"}
    rows = [{"input": "/x/other.nrrd", "warnings": []}, {"input": "/x/input.nrrd", "warnings": [warning]}]
    (tmp_path / "summary.json").write_text(json.dumps(rows))
    outputs = read_outputs(tmp_path, "input")
    assert outputs.prompt_path == outputs.box_path == tmp_path / "input_box.nii.gz"
    assert outputs.warnings == [warning]


def test_warnings_are_the_first_rows_of_the_findings_table():
    warning = {"signal": "intensity", "message": "intensities unlike the training scans"}
    rows = findings_rows([Detection("cyst", 0.5, (0, 0, 0, 1, 1, 1))], {"tumor": 0.2}, warnings=[warning])
    assert [r.kind for r in rows] == ["warning", "class", "detection"]
    assert rows[0].cells()[:3] == ("warning", "intensity: intensities unlike the training scans", "")


def test_remote_box_prompt_and_warnings(tmp_path):
    label = tmp_path / "server" / "result.nii.gz"
    label.parent.mkdir()
    label.write_bytes(b"nii")
    warning = {"signal": "region", "message": "field of view"}
    client = FakeClient(label, json.dumps({"warnings": [warning]}))
    request = InferenceRequest(tmp_path / "in.nrrd", tmp_path / "out", box=(1, 2, 3, 4, 5, 6))
    outputs = remote_infer(request, "input", client=client)
    params = client.calls[0][2]
    assert params["roi"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and params["coordinates"] == "RAS mm"
    assert "foreground" not in params
    assert outputs.box_path == tmp_path / "out" / "input_box.nii.gz" and outputs.warnings == [warning]
