"""Fixtures for the crash suites: child processes that never outlive a test.

Children come from a ``forkserver`` preloading ``mqlite`` and
``_procs_torture`` (the entry points; the list of every suite is
FORKSERVER_PRELOAD in tests/conftest.py), so starting or restarting one is a
fork.  :class:`Children` SIGKILLs and joins every child still running at
teardown.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _polling import wait_until

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

CTX = multiprocessing.get_context("forkserver")
# preloads: FORKSERVER_PRELOAD in tests/conftest.py (one list for every suite)


class Children:
    """Starts forkserver children by name; kills and joins them all at teardown."""

    def __init__(self) -> None:
        self.procs: dict[str, Any] = {}
        self.all: list[Any] = []

    def start(self, name: str, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        p = CTX.Process(target=target, args=args, kwargs=kwargs, name=name, daemon=True)
        p.start()
        self.procs[name] = p
        self.all.append(p)
        return p

    def kill(self, name: str) -> int:
        """SIGKILL ``name`` and reap it; return the time just before the signal."""
        p = self.procs[name]
        t = time.monotonic_ns()
        if p.exitcode is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.join(30)
        return t

    wait_until = staticmethod(wait_until)

    def cleanup(self) -> None:
        for p in self.all:
            if p.exitcode is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.all:
            p.join(30)
            p.close()


@pytest.fixture
def children() -> Iterator[Children]:
    ch = Children()
    try:
        yield ch
    finally:
        ch.cleanup()


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``_iofault_shim.c`` compiled once per session; skip without gcc or off Linux."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: the I/O shim (tests/crash/_iofault_shim.c) "
                    "is compiled at test time; install gcc to run these tests")
    if not sys.platform.startswith("linux"):
        pytest.skip("the I/O shim needs Linux (LD_PRELOAD, /proc/self/fd)")
    out = tmp_path_factory.mktemp("iofault") / "shim.so"
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(out),
                           str(HERE / "_iofault_shim.c"), "-ldl", "-lpthread"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"compiling the shim failed:\n{proc.stderr}"
    return out

