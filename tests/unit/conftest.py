"""Fixtures for the unit tests of the broker API, producer and consumer.

``broker`` is an open broker on a fresh directory (closed after the test, and
checked to have released its environment), with the topics the test module
lists in ``BROKER_TOPICS``; ``open_broker`` opens more brokers that are closed
at teardown; ``run_python`` runs a snippet in a fresh interpreter (for umask
and other process-wide state a test must not change in the pytest process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import mqlite
from mqlite._storage import env as _env_mod

SRC_DIR = str(Path(mqlite.__file__).resolve().parent.parent)


@pytest.fixture
def open_broker(tmp_broker_dir: Path) -> Iterator[Callable[..., mqlite.Broker]]:
    """``open_broker(path=tmp_broker_dir, **kw)``: open a broker closed at teardown."""
    opened: list[mqlite.Broker] = []

    def _open(path: str | os.PathLike[str] | None = None, **kw: Any) -> mqlite.Broker:
        b = mqlite.open(tmp_broker_dir if path is None else path, **kw)
        opened.append(b)
        return b

    yield _open
    for b in opened:
        b.close()
    # Every handle was closed, so no environment of these directories stays open.
    paths = {os.path.abspath(b.path) for b in opened}
    leaked = [e.path for e in _env_mod._registry.values() if e.path in paths]
    assert not leaked, f"environments still open after closing every broker: {leaked}"


@pytest.fixture
def broker(open_broker: Callable[..., mqlite.Broker],
           request: pytest.FixtureRequest) -> mqlite.Broker:
    """A broker on a fresh directory (``tmp_broker_dir``), ``durability="none"`` (unit
    tests need no fsync), with the topics the test module lists in ``BROKER_TOPICS``
    (name -> partitions), if it has that attribute."""
    b = open_broker(durability="none")
    for name, partitions in getattr(request.module, "BROKER_TOPICS", {}).items():
        b.create_topic(name, partitions=partitions)
    return b


def _run_python(code: str, *args: str, timeout: float = 60.0,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = SRC_DIR + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, check=False)


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_python(code, *argv)``: run ``code`` in a fresh interpreter; returns the result."""
    return _run_python
