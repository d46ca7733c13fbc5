"""No user-supplied text can become code: the shipped sources call no ``eval``/``exec``, unpickle nothing
unsafely, load YAML safely and start no shell.

Read from the syntax tree (not by grepping), so comments and strings mentioning these names do not count.
MONAI bundle configs do evaluate ``$`` expressions, but only of config files the operator runs; no request,
file name or image header reaches ``ConfigParser`` (``monailabel_app`` and the CLI load fixed config paths).
"""

from __future__ import annotations

import ast
from pathlib import Path

from unimed_core.paths import REPO_ROOT

PACKAGES = ("unimed_core", "monailabel_app", "slicer_extension", "benchmarks")
SOURCES = sorted(p for pkg in PACKAGES for p in (REPO_ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _problems(path: Path) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name, where = _name(node.func), f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
        if name in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
            problems.append(f"{where}: {name}()")
        elif name.split(".")[-1] in ("load", "loads") and name.split(".")[0] in (
            "pickle",
            "cPickle",
            "dill",
            "marshal",
        ):
            problems.append(f"{where}: {name}() unpickles arbitrary objects")
        elif name == "torch.load":
            flag = _keyword(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{where}: torch.load without weights_only=True")
        elif name == "yaml.load" and not isinstance(_keyword(node, "Loader"), ast.Attribute | ast.Name):
            problems.append(f"{where}: yaml.load without an explicit (safe) Loader")
        elif name.startswith("subprocess.") or name == "os.system":
            shell = _keyword(node, "shell")
            if name == "os.system" or (isinstance(shell, ast.Constant) and shell.value):
                problems.append(f"{where}: {name} through a shell")
    return problems


def test_sources_were_found():
    assert len(SOURCES) > 50 and any(p.name == "weights.py" for p in SOURCES)


def test_no_eval_unsafe_unpickling_or_shell():
    assert [problem for path in SOURCES for problem in _problems(path)] == []


def test_the_checker_catches_what_it_looks_for(monkeypatch):
    bad = REPO_ROOT / "unimed_core" / "__bad_example_for_test.py"
    code = (
        "import torch, pickle, subprocess, yaml\n"
        "eval(x)\nexec(y)\ntorch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\n"
        "subprocess.run(c, shell=True)\nyaml.load(s)\n"
    )
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: code)
    assert len(_problems(bad)) == 7
