"""Fixtures for the App's multi-process tests: children that never outlive a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mqlite

HERE = Path(__file__).resolve().parent
SRC_DIR = str(Path(mqlite.__file__).resolve().parent.parent)


class AppProcs:
    """Starts ``python -m mqlite run _app_procs:...`` children; kills leftovers at teardown."""

    def __init__(self, broker_dir: Path) -> None:
        self.dir = broker_dir
        self.children: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), SRC_DIR, env.get("PYTHONPATH", "")])
        env["MQLITE_TEST_DIR"] = str(self.dir)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run(self, target: str, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "mqlite", "run", target, *args],
                             cwd=str(HERE), env=self.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(p)
        return p

    def python(self, code: str) -> subprocess.Popen[bytes]:
        """``python -c code`` beside ``_app_procs`` (an App run by a script, not the CLI)."""
        p = subprocess.Popen([sys.executable, "-c", code], cwd=str(HERE), env=self.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.children.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.children:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(30)
            if p.stdout is not None:
                p.stdout.close()


@pytest.fixture
def app_procs(tmp_broker_dir: Path) -> Iterator[AppProcs]:
    procs = AppProcs(tmp_broker_dir)
    try:
        yield procs
    finally:
        procs.cleanup()
