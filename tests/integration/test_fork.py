"""Fork safety: a forked child reopens the environment and works; the parent is unaffected.

LMDB forbids using an environment inherited across ``fork()``; mqlite
detects the pid change and reopens in the child.  The parent must keep
working afterwards (its reader slots and locks untouched by the child), and
``multiprocessing`` with both the fork and the spawn start methods works.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _procs_core
import pytest
from _values import value

import mqlite


@contextmanager
def _quiet_fork() -> Iterator[None]:
    # Python >= 3.12 warns about fork() in a process with threads; the test
    # knows (pytest may run helper threads), and the child does no threading.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _send_offset(broker: mqlite.Broker, v: bytes) -> int:
    return broker.send("t", v, partition=0).offset


def _fork_run(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run ``fn`` in an ``os.fork()`` child; return its JSON-able result (or raise)."""
    r, w = os.pipe()
    with _quiet_fork():
        pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            out = json.dumps({"ok": fn()}).encode()
        except BaseException:  # noqa: BLE001
            out = json.dumps({"error": traceback.format_exc()}).encode()
            code = 1
        try:
            os.write(w, out)
            os.close(w)
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            data = os.read(r, 65536)
            if not data:
                break
            chunks.append(data)
            if time.monotonic() > deadline:
                raise AssertionError("forked child timed out")
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child died with signal {os.WTERMSIG(status)}"
    res = json.loads(b"".join(chunks) or b"{}")
    assert "ok" in res, res.get("error", f"child exited {os.WEXITSTATUS(status)} silently")
    assert os.WEXITSTATUS(status) == 0
    return res["ok"]


@pytest.fixture
def broker(tmp_broker_dir: Path) -> Iterator[mqlite.Broker]:
    with mqlite.open(tmp_broker_dir) as b:
        b.create_topic("t", partitions=2)
        yield b


def test_os_fork_child_can_send_and_read(broker: mqlite.Broker) -> None:
    broker.send("t", b"before-fork", partition=0)

    def child() -> Any:
        md = broker.send("t", b"from-child", partition=0)
        with broker.producer(linger_ms=0) as p:
            md2 = p.send("t", b"from-child-producer", partition=1).result()
        return [md.offset, md2.offset, [value(m).decode() for m in broker.read("t", 0)],
                os.getpid() == broker._engine.env.pid]

    off, off2, values, same_pid = _fork_run(child)
    assert (off, off2) == (1, 0)
    assert values == ["before-fork", "from-child"]
    assert same_pid  # the child's env handle was reopened under the child's pid
    # The parent is unaffected: it reads and writes as before and sees the child's data.
    assert [m.value for m in broker.read("t", 0)] == [b"before-fork", b"from-child"]
    assert [m.value for m in broker.read("t", 1)] == [b"from-child-producer"]
    assert broker.send("t", b"parent-after", partition=0).offset == 2
    assert broker._engine.env.pid == os.getpid()


def test_fork_child_reads_with_consumer_made_by_parent(broker: mqlite.Broker) -> None:
    broker.send_batch("t", [b"a", b"b"], partition=0)
    reader = broker.consumer("t")
    assert len(reader.poll(max_records=1, timeout=0)) == 1  # parent read one

    def child() -> Any:
        broker.send("t", b"c", partition=1)
        got = []
        while batch := reader.poll(timeout=0):
            got += [value(m).decode() for m in batch]
        return got

    assert sorted(_fork_run(child)) == ["b", "c"]
    # The parent's reader keeps its own position.
    assert sorted(value(m) for m in reader.poll(timeout=0)) == [b"b", b"c"]


def test_fork_child_opening_the_path_again_shares_the_reopened_env(broker: mqlite.Broker,
                                                                   tmp_broker_dir: Path) -> None:
    def child() -> Any:
        with mqlite.open(tmp_broker_dir) as b2:
            b2.send("t", b"via-new-handle", partition=0)
            shared = b2._engine.env is broker._engine.env
        broker.send("t", b"via-old-handle", partition=0)
        return shared

    _fork_run(child)
    assert [m.value for m in broker.read("t", 0)] == [b"via-new-handle", b"via-old-handle"]


def test_fork_child_closing_does_not_close_parent(broker: mqlite.Broker) -> None:
    def child() -> Any:
        broker.send("t", b"x", partition=0)
        broker.close()
        return broker.closed

    assert _fork_run(child) is True
    assert not broker.closed
    assert broker.send("t", b"y", partition=0).offset == 1
    assert len(broker.read("t", 0)) == 2


def test_fork_child_killed_does_not_block_parent(broker: mqlite.Broker) -> None:
    """A child killed right after using the broker leaves no stuck lock or reader."""
    r, w = os.pipe()
    with _quiet_fork():
        pid = os.fork()
    if pid == 0:
        try:
            broker.send("t", b"child", partition=0)
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
    finally:
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    t0 = time.monotonic()
    assert broker.send("t", b"parent", partition=0).offset == 1
    assert time.monotonic() - t0 < 5.0  # no stuck lock (room for a loaded machine's fsync)
    assert [m.value for m in broker.read("t", 0)] == [b"child", b"parent"]


def test_many_forks_in_a_row(broker: mqlite.Broker) -> None:
    for i in range(5):
        _fork_run(functools.partial(_send_offset, broker, b"%d" % i))
        broker.send("t", b"p%d" % i, partition=1)
    assert [m.value for m in broker.read("t", 0)] == [b"%d" % i for i in range(5)]
    assert len(broker.read("t", 1)) == 5


def _mp_run(method: str, target: Callable[..., None], *args: Any) -> tuple[Any, ...]:
    ctx: Any = multiprocessing.get_context(method)  # typed BaseContext: no .Process
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    with _quiet_fork():
        proc = ctx.Process(target=target, args=(*args, child_conn))
        proc.start()
    child_conn.close()
    try:
        assert parent_conn.poll(60), "multiprocessing child did not answer"
        result = parent_conn.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent_conn.close()
    assert proc.exitcode == 0
    return result


def test_multiprocessing_fork_uses_inherited_broker(broker: mqlite.Broker) -> None:
    broker.send("t", b"parent", partition=0)
    status, offset, values = _mp_run("fork", _procs_core.mp_use_inherited_broker, broker, "t")
    assert status == "ok", offset
    assert values == [b"parent", b"from-mp-fork-child"]
    assert [m.value for m in broker.read("t", 0)] == [b"parent", b"from-mp-fork-child"]
    assert broker.send("t", b"parent-again", partition=0).offset == 2


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_child_opens_by_path(broker: mqlite.Broker, tmp_broker_dir: Path,
                                             method: str) -> None:
    broker.send("t", b"parent", partition=0)
    broker.create_topic("single")
    broker.send("single", b"parent")
    status, offset, values = _mp_run(method, _procs_core.mp_open_and_send, str(tmp_broker_dir),
                                     "single")
    assert status == "ok", offset
    assert (offset, values) == (1, [b"parent", b"from-mp-child"])
    assert [m.value for m in broker.read("single")] == [b"parent", b"from-mp-child"]
    assert broker.send("single", b"after").offset == 2
