"""The architecture is checked, not reviewed (DESIGN.md §1).

* import-linter's contracts in pyproject.toml: layers point down, only ``_storage``
  imports ``lmdb``, features never import the facade;
* no import cycle among ``src/mqlite`` modules (imports under ``TYPE_CHECKING`` do not
  count: they never run);
* no raw LMDB transaction call (``txn.get/put/delete/cursor``) outside ``_storage``.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "mqlite"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _runtime_imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_no_import_cycle_among_modules() -> None:
    mods = _modules()
    # compiled modules (Cython, no .py source: mqlite._core, mqlite.kafka._fast) are leaves
    compiled = {".".join(p.relative_to(PKG.parent).with_suffix("").parts)
                for p in PKG.rglob("*.pyx")}
    known = set(mods) | compiled
    graph = {m: _runtime_imports(m, p, known) for m, p in mods.items()}
    graph.update({m: set() for m in compiled})
    # The package root only re-exports: an import of ``mqlite`` from a module is the
    # ``from mqlite import _core`` idiom, not a dependency on the facade.
    graph = {m: {d for d in deps if d != "mqlite"} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_raw_transaction_calls_outside_storage() -> None:
    raw = re.compile(r"\btxn\.(get|put|delete|cursor|replace|pop)\(")
    offenders = []
    for p in sorted(PKG.rglob("*.py")):
        if "_storage" in p.parts:
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if raw.search(line):
                offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "raw LMDB calls outside _storage:\n" + "\n".join(offenders)


def test_import_contracts() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed: pip install -e '.[test]'")
    proc = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
