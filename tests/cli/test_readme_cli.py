"""The README's command-line examples run, in the order given, on a new directory.

Issue 9, part 7: the examples used to start with ``mqlite topics data/``,
which refuses a directory that does not exist yet, and put ``--json`` where
argparse only accepted it before the command name.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cli_block() -> list[list[str]]:
    section = (ROOT / "README.md").read_text().split("### Command line", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None
    cmds = []
    for line in block.group(1).splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            assert argv[0] == "mqlite", line
            cmds.append(argv[1:])
    return cmds


def test_readme_cli_examples_run_in_order_in_a_new_directory(tmp_path: Path) -> None:
    cmds = _cli_block()
    assert len(cmds) >= 8
    for argv in cmds:
        proc = subprocess.run([sys.executable, "-m", "mqlite", *argv], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"mqlite {shlex.join(argv)} -> {proc.returncode}: " \
                                     f"{proc.stderr}"
        if "--json" in argv:
            json.loads(proc.stdout)


def test_json_and_durability_work_before_and_after_the_command(tmp_path: Path) -> None:
    path = str(tmp_path / "b")

    def run(*argv: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "mqlite", *argv], capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run("create", path, "t", "--durability", "none")
    want = [{"topic": "t", "partitions": 1, "messages": 0, "bytes": 0}]
    assert json.loads(run("--json", "topics", path)) == want
    assert json.loads(run("topics", path, "--json")) == want
    assert json.loads(run("topics", "--json", path)) == want
    assert json.loads(run("--durability", "lazy", "dlq", "list", path, "t", "--json")) == []
    assert not run("topics", path).startswith("[")  # no --json anywhere: a table
