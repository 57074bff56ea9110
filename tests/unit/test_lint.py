"""Lint and types are part of the test run: ``ruff`` and ``mypy`` must pass (issue 9).

Both come with ``pip install -e '.[test]'`` (ruff pinned: a newer ruff adds rules).  mypy
checks the package, the tests, the benchmarks and the examples in one run (the ``files`` of
``[tool.mypy]`` in pyproject.toml, D61): one start-up, about 10 s on a cold cache.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(exe).exists():
        pytest.skip(f"{name} is not installed: pip install -e '.[test]'")
    return exe


def test_ruff_clean() -> None:
    proc = subprocess.run([_tool("ruff"), "check", "src", "tests", "benchmarks", "examples"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_mypy_clean() -> None:
    # No paths on the command line: pyproject's ``files`` (src/mqlite, tests, benchmarks,
    # examples) and ``mypy_path`` (how each folder's modules import each other) apply.
    proc = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert set(_mypy_files()) == {"src/mqlite", "tests", "benchmarks", "examples"}


def _mypy_files() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["tool"]["mypy"]["files"])


@pytest.mark.parametrize("folder", ["app", "crash", "integration"])
def test_conftests_left_out_of_mypy_only_re_export(folder: str) -> None:
    """mypy skips these conftest.py files (a second ``conftest`` module in its run): code
    there would go unchecked, so it belongs in ``_<folder>_fixtures.py``."""
    tree = ast.parse((ROOT / "tests" / folder / "conftest.py").read_text())
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    assert all(isinstance(n, ast.ImportFrom) and n.module == f"_{folder}_fixtures"
               or isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__all__"
               for n in body), f"tests/{folder}/conftest.py: move code to _{folder}_fixtures.py"
