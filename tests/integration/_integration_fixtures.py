"""Fixtures for multi-process tests of the core engine.

``core_proc`` starts ``python -m _procs_core ...`` children (see that module)
and guarantees none outlives the test: every child still running at
teardown is SIGKILLed and reaped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


from _child_env import child_env


class CoreProcs:
    """Starts ``_procs_core`` children and cleans them up."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-m", "_procs_core", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=child_env(), cwd=str(HERE))
        self.children.append(p)
        return p

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        p = self.start(*args)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"child {args} timed out; stderr:\n{err}") from None
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    @staticmethod
    def kill(p: subprocess.Popen[str]) -> None:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()

    def cleanup(self) -> None:
        for p in self.children:
            self.kill(p)


@pytest.fixture
def core_proc() -> Iterator[CoreProcs]:
    procs = CoreProcs()
    try:
        yield procs
    finally:
        procs.cleanup()


@pytest.fixture
def broker_path(tmp_broker_dir: Path) -> str:
    return str(tmp_broker_dir)
