"""The README's set-up commands match CI, and its Python examples run when pasted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


def test_setup_is_two_commands_and_ci_runs_them():
    setup = README.split("## Set-up", 1)[1]
    block = re.search(r"```bash\n(.*?)```", setup, re.DOTALL)
    assert block is not None
    commands = [c.strip() for c in block.group(1).strip().splitlines()]
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for c in commands:
        assert c in ci, f"README command {c!r} is not what .ci/run runs"


def test_python_examples_run(tmp_path):
    blocks = _blocks("python")
    assert len(blocks) >= 2
    for i, code in enumerate(blocks):
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"README python block {i} failed:\n{proc.stderr}"


def test_every_benchmark_script_is_listed_in_the_benchmarks_readme():
    """benchmarks/README.md is the index of the harness: a script it does not name is
    one nobody finds (stop 19 found eight unlisted)."""
    bench = ROOT / "benchmarks"
    index = (bench / "README.md").read_text()
    scripts = sorted(p.name for p in bench.glob("*.py")
                     if p.name.startswith(("bench_", "acceptance_")))
    assert scripts, "no benchmark scripts found"
    missing = [name for name in scripts if f"benchmarks/{name}" not in index]
    assert not missing, f"add a row for each to benchmarks/README.md: {missing}"
