"""Run a command in a subprocess with its output streamed, progress parsed and cancel honoured.

Like SlicerMONAIAuto3DSeg's ``process.py``, but free of ``slicer`` and ``qt``: the caller polls through
``should_cancel`` (which a GUI uses to process its events) and receives lines and progress through callbacks.
Cancelling kills the whole process tree, since a launcher (``PythonSlicer``) may sit between us and Python.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["InferenceCancelled", "InferenceFailed", "ProcessResult", "parse_progress", "run_command"]

# tqdm's bar ("UniMed:  40%|####      | 2/5 [...]"): the percentage is the progress.
_TQDM = re.compile(r"(\d{1,3})%\|")


class InferenceCancelled(RuntimeError):
    """The user cancelled the run; the subprocess was killed."""


class InferenceFailed(RuntimeError):
    """The subprocess exited with a non-zero status; the message ends with its last output lines."""

    def __init__(self, returncode: int, lines: Sequence[str]) -> None:
        tail = "\n".join(lines[-15:])
        super().__init__(f"inference failed with exit status {returncode}:\n{tail}")
        self.returncode = returncode
        self.lines = list(lines)


@dataclass
class ProcessResult:
    """Exit status and every output line of a finished command."""

    returncode: int
    lines: list[str]


def parse_progress(line: str) -> float | None:
    """Fraction in [0, 1] announced by a progress-bar line, or None."""
    found = _TQDM.findall(line)
    return min(int(found[-1]), 100) / 100.0 if found else None


def _read_lines(stream, out: queue.Queue) -> None:
    """Split on both newlines and carriage returns: tqdm redraws its bar with ``\\r``."""
    buffer = b""
    for chunk in iter(lambda: stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096), b""):
        buffer += chunk
        parts = re.split(rb"[\r\n]", buffer)
        buffer = parts.pop()
        for part in parts:
            if part.strip():
                out.put(part.decode("utf-8", errors="replace").rstrip())
    if buffer.strip():
        out.put(buffer.decode("utf-8", errors="replace").rstrip())
    out.put(None)


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        import psutil  # optional: kills grandchildren on every platform

        try:
            parent = psutil.Process(proc.pid)
            for child in parent.children(recursive=True):
                child.kill()
        except psutil.NoSuchProcess:
            pass
    except ImportError:
        if os.name == "posix":
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own session (start_new_session)
            except (ProcessLookupError, PermissionError):
                pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def run_command(
    cmd: Sequence[str],
    progress_callback: Callable[[float, str], None] | None = None,
    log_callback: Callable[[str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    env: Mapping[str, str] | None = None,
    poll_seconds: float = 0.1,
) -> ProcessResult:
    """Run ``cmd`` to the end (or until cancelled), streaming its output.

    Args:
        cmd: argument list (no shell).
        progress_callback: ``(fraction, line)`` for each progress-bar update.
        log_callback: every output line (stdout and stderr merged).
        should_cancel: polled every ``poll_seconds``; True kills the process tree.
        env: environment for the child; default: this process's, with unbuffered Python output.
        poll_seconds: polling interval.

    Raises:
        InferenceCancelled: when ``should_cancel`` said so.
        InferenceFailed: non-zero exit status.
    """
    if not cmd:
        raise ValueError("cmd is empty")
    if poll_seconds <= 0:
        raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONUNBUFFERED"] = "1"
    kwargs = {"start_new_session": True} if os.name == "posix" else {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW  # no console window popping up over Slicer
    proc = subprocess.Popen(
        [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env, **kwargs
    )
    lines: list[str] = []
    out: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, out), daemon=True)
    reader.start()
    try:
        while True:
            if should_cancel is not None and should_cancel():
                _kill_tree(proc)
                raise InferenceCancelled("cancelled by the user")
            try:
                line = out.get(timeout=poll_seconds)
            except queue.Empty:
                continue
            if line is None:  # the reader reached the end of the output
                break
            lines.append(line)
            if log_callback is not None:
                log_callback(line)
            fraction = parse_progress(line)
            if fraction is not None and progress_callback is not None:
                progress_callback(fraction, line)
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
        reader.join(timeout=5)
        proc.stdout.close()
    if returncode != 0:
        raise InferenceFailed(returncode, lines)
    return ProcessResult(returncode, lines)
