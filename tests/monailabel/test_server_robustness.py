"""The MONAI Label server under load, bad requests, path traversal and an interrupted training run.

A server of its own (the module fixture of ``conftest.py``), driven over HTTP with ``requests`` and MONAI
Label's client. Tests run in file order: concurrency first (on the initial weights), training last.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import requests
from monailabel_helpers import NOISE, STUDIES

from unimed_core.paths import REPO_ROOT

IMAGES = (*STUDIES, NOISE)


def _family(server) -> list[psutil.Process]:
    return [psutil.Process(server.process.pid), *server.descendants()]


def _rss_mb(server) -> float:
    total = 0
    for proc in _family(server):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class _PeakRss:
    """Samples the server's resident memory (all its processes) every 0.1 s while the block runs."""

    def __init__(self, server) -> None:
        self.server, self.peak, self._stop = server, 0.0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb(self.server))
            time.sleep(0.1)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _segment(server, image: str, tmp: Path) -> np.ndarray:
    """One ``unimed`` inference through MONAI Label's client (a client per call: no shared session)."""
    from monailabel.client import MONAILabelClient

    tmp.mkdir(parents=True, exist_ok=True)
    path, _ = MONAILabelClient(server.url, tmpdir=str(tmp)).infer("unimed", image, {})
    return np.asarray(nib.load(path).dataobj)


def _alive(server) -> None:
    assert server.process.poll() is None, server.log.read_text()[-3000:]
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200


def test_server_listens_on_loopback_only(server):
    listening = [
        c.laddr for proc in _family(server) for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "the server listens nowhere"
    assert {addr.ip for addr in listening} == {"127.0.0.1"}, listening


def test_make_label_server_binds_loopback():
    """What annotators run (README, docs/monailabel.md): MONAI Label's own default host is 0.0.0.0."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlabel-server:", 1)[1].split("\n\n", 1)[0]
    assert "start_server" in recipe and "--host 127.0.0.1" in recipe, recipe


def test_eight_concurrent_inferences_twice_are_correct_with_bounded_memory(server, tmp_path):
    reference = {image: _segment(server, image, tmp_path / "ref") for image in IMAGES}
    requested = [IMAGES[i % len(IMAGES)] for i in range(8)]
    peaks, seconds = [], []
    for round_ in range(2):
        start = time.monotonic()
        with _PeakRss(server) as rss, ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(_segment, server, image, tmp_path / f"r{round_}_{i}") for i, image in
                       enumerate(requested)]  # fmt: skip
            results = [f.result(timeout=300) for f in futures]
        seconds.append(time.monotonic() - start)
        peaks.append(rss.peak)
        for image, labels in zip(requested, results):
            np.testing.assert_array_equal(labels, reference[image], err_msg=f"round {round_}, {image}")
    print(f"8 concurrent inferences: {seconds[0]:.1f} s and {seconds[1]:.1f} s, peak RSS {peaks} MB")
    # bounded: the second round needs no more memory than the first (nothing accumulates per request)
    assert peaks[1] <= peaks[0] * 1.05 + 100, peaks
    assert max(peaks) < 4096, peaks
    _alive(server)


def test_bad_requests_are_refused_and_the_server_stays_up(server, tmp_path):
    url = server.url
    unknown_model = requests.post(f"{url}/infer/no_such_model?image=case_a", timeout=60)
    unknown_image = requests.post(f"{url}/infer/unimed?image=no_such_image", timeout=60)
    garbage_params = requests.post(f"{url}/infer/unimed?image=case_a", data={"params": "{not json"}, timeout=60)
    not_a_dict = requests.post(f"{url}/infer/unimed?image=case_a", data={"params": "[1, 2]"}, timeout=60)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08 not really gzip" * 10)
    with open(corrupt, "rb") as f:
        corrupt_upload = requests.post(f"{url}/infer/unimed", files={"file": ("corrupt.nii.gz", f)}, timeout=60)
    garbage_label = requests.put(
        f"{url}/datastore/label?image=case_d", files={"label": ("x.nii.gz", b"garbage")}, timeout=60
    )
    for name, response in {
        "unknown model": unknown_model,
        "unknown image": unknown_image,
        "garbage params": garbage_params,
        "params not an object": not_a_dict,
        "corrupt upload": corrupt_upload,
        "garbage label": garbage_label,
    }.items():
        assert 400 <= response.status_code < 600, f"{name}: {response.status_code} {response.text[:300]}"
        _alive(server)
    assert unknown_image.status_code == 400 and "not in the datastore" in unknown_image.text
    assert corrupt_upload.status_code == 400 and "corrupt or truncated NIfTI" in corrupt_upload.text
    assert not server.client().datastore()["objects"]["case_d"]["labels"]  # the garbage label was not kept
    # and it still answers a good request correctly
    assert _segment(server, "case_a", tmp_path / "after").shape == nib.load(server.studies / "case_a.nii.gz").shape


def _files_outside(server) -> set[Path]:
    """Every file under the fixture's root folder except the studies, the sessions and the server's log."""
    root = server.studies.parent
    skip = (server.studies, root / "sessions", root / "app")
    return {p for p in root.rglob("*") if p.is_file() and not any(s in p.parents for s in skip) and p != server.log}


def test_path_traversal_in_image_ids_and_label_names_is_refused(server, tmp_path):
    url = server.url
    before = _files_outside(server)
    outside_volume = server.truth / "case_a_label.nii.gz"  # a real volume the server could read
    label = (server.truth / "case_a_label.nii.gz").read_bytes()
    volume = (server.studies / "case_a.nii.gz").read_bytes()
    attempts = {
        "relative id": requests.post(f"{url}/infer/unimed?image=../truth/case_a_label", timeout=60),
        "absolute path": requests.post(f"{url}/infer/unimed", params={"image": str(outside_volume)}, timeout=60),
        "path in params": requests.post(
            f"{url}/infer/unimed?image=case_a", data={"params": json.dumps({"image": str(outside_volume)})}, timeout=60
        ),
        "upload id": requests.put(
            f"{url}/datastore/?image=../../escaped", files={"file": ("x.nii.gz", volume)}, timeout=60
        ),
        "upload file name": requests.put(f"{url}/datastore/", files={"file": ("..escaped.nii.gz", volume)}, timeout=60),
        "label tag": requests.put(
            f"{url}/datastore/label?image=case_d&tag=../../../escaped", files={"label": ("l.nii.gz", label)}, timeout=60
        ),
        "label image id": requests.put(
            f"{url}/datastore/label?image=../case_d", files={"label": ("l.nii.gz", label)}, timeout=60
        ),
    }
    for name, response in attempts.items():
        assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
    for name in ("relative id", "absolute path", "path in params", "upload id", "label tag"):
        assert attempts[name].status_code == 400, name
    assert "not in the datastore" in attempts["relative id"].text
    assert "not a path" in attempts["absolute path"].text and "not a path" in attempts["path in params"].text
    assert "path separators" in attempts["upload id"].text and "path separators" in attempts["label tag"].text
    assert _files_outside(server) == before  # nothing was written outside the studies folder
    assert not list(server.studies.parent.parent.glob("escaped*"))
    # an upload the server names itself is still fine: a plain file upload infers
    with open(server.studies / "case_b.nii.gz", "rb") as f:
        ok = requests.post(f"{url}/infer/unimed_classification", files={"file": ("scan.nii.gz", f)}, timeout=120)
    assert ok.status_code == 200, ok.text[:300]
    _alive(server)


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_session_archives_cannot_write_outside_their_folder(server):
    escape = Path(tempfile.gettempdir()) / f"unimed_tar_escape_{uuid.uuid4().hex}.txt"
    evil = _tar({"ok.txt": b"x", f"../{escape.name}": b"escaped"})  # unpacked into a folder of the temp dir
    refused = requests.put(f"{server.url}/session/?uncompress=true", files={"files": ("evil.tar", evil)}, timeout=60)
    assert refused.status_code == 400 and "refused" in refused.text, refused.text[:300]
    assert not escape.exists()
    volume = (server.studies / "case_a.nii.gz").read_bytes()
    good = _tar({"case_a.nii.gz": volume})
    accepted = requests.put(f"{server.url}/session/?uncompress=true", files={"files": ("ok.tar", good)}, timeout=60)
    assert accepted.status_code == 200, accepted.text[:300]
    _alive(server)


def test_interrupted_training_leaves_the_served_model_intact(server, tmp_path):
    client = server.client()
    client.save_label("case_a", str(server.truth / "case_a_label.nii.gz"))
    before = json.loads(client.infer("unimed_classification", "case_a", {})[1])["weights_sha256"]
    served = server.model_dir / "unimed.pt"
    assert not served.exists()  # still the initial weights
    trainers_before = {p.pid for p in server.descendants()}
    client.train_start("unimed", {"max_steps": 10000, "batch_size": 1, "val_split": 0.0})
    deadline = time.monotonic() + 120
    while not ({p.pid for p in server.descendants()} - trainers_before) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(5.0)  # into the training loop
    assert client.train_status().get("status") == "RUNNING"
    client.train_stop()  # MONAI Label kills the training process (SIGKILL)
    deadline = time.monotonic() + 60
    while client.train_status().get("status") == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.train_status().get("status") != "DONE"
    assert not served.exists() and not served.with_name("unimed.pt.sha256").exists()
    after = json.loads(client.infer("unimed_classification", "case_a", {})[1])["weights_sha256"]
    assert after == before
    _alive(server)
