"""Child-process entry points for tests/integration/test_groups.py.

Children are started through a ``forkserver`` that preloads ``mqlite`` and
this module, so starting one costs a fork, not an interpreter start.

Each member appends lines to its own log file with ``O_APPEND`` (one
``write`` per event; a killed process loses nothing it wrote, the page cache
survives it).  Timestamps are ``CLOCK_MONOTONIC`` nanoseconds, one clock for
every process of the machine:

``S <ns> <pid>``                     started
``A <ns> <t/p,t/p,...>``             ``on_assign`` (runs after the acquiring commit)
``R <ns> <t/p,...>``                 ``on_revoke`` (runs before the releasing commit)
``M <ns> <partition> <offset>``      one delivered message (topic is the test's)
``X <ns>``                           clean exit after ``close()``
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import mqlite

now_ns = time.monotonic_ns


def _open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


def _fmt(tps: list[Any]) -> str:
    return ",".join(f"{tp.topic}/{tp.partition}" for tp in tps) or "-"


def member(path: str, group: str, topic: str, log_path: str, *, durability: str = "none",
           max_records: int = 50, work_s: float = 0.0, poll_timeout: float = 0.05,
           **options: Any) -> None:
    """A group member: poll until SIGTERM, then close (commit, revoke, leave)."""
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    fd = _open_log(log_path)

    def w(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    w(f"S {now_ns()} {os.getpid()}")
    broker = mqlite.open(path, durability=durability)
    consumer = broker.consumer(
        topic, group=group,
        on_assign=lambda tps: w(f"A {now_ns()} {_fmt(tps)}"),
        on_revoke=lambda tps: w(f"R {now_ns()} {_fmt(tps)}"),
        **options)
    while not stop:
        msgs = consumer.poll(max_records, timeout=poll_timeout)
        if msgs:
            t = now_ns()
            w("\n".join(f"M {t} {m.partition} {m.offset}" for m in msgs))
            if work_s:
                time.sleep(work_s)
    consumer.close()
    broker.close()
    w(f"X {now_ns()}")
    os.close(fd)


def fork_parent(path: str, group: str, topic: str, out_path: str) -> None:
    """Join a group, then fork a child that outlives this process.

    The child reports (to ``out_path``) its pid and what using the
    inherited consumer does, then sleeps; the test SIGKILLs this process
    and checks the group notices although the child still runs.
    """
    broker = mqlite.open(path, durability="none")
    consumer = broker.consumer(topic, group=group)
    consumer.poll(timeout=0.2)
    pid = os.fork()
    if pid == 0:
        try:
            fd = _open_log(out_path)
            try:
                consumer.poll(timeout=0.01)
                outcome = "poll-worked"
            except mqlite.GroupError:
                outcome = "GroupError"
            except BaseException as exc:  # noqa: BLE001 - report anything else to the test
                outcome = f"other:{type(exc).__name__}"
            os.write(fd, f"child {os.getpid()} {outcome}\n".encode())
            time.sleep(5.0)
        finally:
            os._exit(0)
    fd = _open_log(out_path)
    os.write(fd, f"parent {os.getpid()} ready\n".encode())
    while True:
        consumer.poll(timeout=0.1)
