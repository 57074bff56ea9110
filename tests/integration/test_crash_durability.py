"""A send that returned survives SIGKILL of the sender, in every durability mode.

The sender is a separate process that prints ``sent`` the moment ``send``
returns; the test SIGKILLs it as soon as it reads that line (no clean
close, no atexit, nothing flushed by Python), and a *new* process then opens
the broker and must read the message.  A process crash keeps the page cache,
so this holds even for ``durability="none"`` (DESIGN.md section 4).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

import mqlite

if TYPE_CHECKING:
    from _integration_fixtures import CoreProcs

MODES = ["sync", "lazy", "none"]


def _readline(p: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output from child within {timeout} s")
    line = p.stdout.readline()
    if not line:
        err = p.stderr.read() if p.stderr else ""
        raise AssertionError(f"child exited (rc={p.wait()}) without output; stderr:\n{err}")
    return line


def _read_in_new_process(core_proc: CoreProcs, path: str, topic: str) -> dict[tuple[int, int],
                                                                                  bytes]:
    res = core_proc.run("read", path, topic)
    assert res.returncode == 0, res.stderr
    return {(p, o): bytes.fromhex(v) for p, o, v in json.loads(res.stdout)}


@pytest.mark.parametrize("mode", MODES)
def test_returned_send_survives_sigkill(core_proc: CoreProcs, broker_path: str, mode: str,
                                        seed: int) -> None:
    with mqlite.open(broker_path, durability=mode) as b:
        b.create_topic("t", partitions=3)
    expected: dict[tuple[int, int], bytes] = {}
    for api in ("send", "batch", "producer"):
        payload = b"survivor-%s-%s-%d-" % (mode.encode(), api.encode(), seed) + os.urandom(64)
        child = core_proc.start("send", broker_path, mode, "t", api, payload.hex())
        line = _readline(child)
        os.kill(child.pid, signal.SIGKILL)  # at once: the send has just returned
        assert child.wait(timeout=30) == -signal.SIGKILL
        word, part, off = line.split()
        assert word == "sent", line
        expected[(int(part), int(off))] = payload
    stored = _read_in_new_process(core_proc, broker_path, "t")
    assert stored == expected


def _kill_sender_loop(core_proc: CoreProcs, path: str, mode: str, rng: random.Random,
                      ) -> dict[tuple[int, int], bytes]:
    child = core_proc.start("send-loop", path, mode, "t", str(rng.randrange(10**9)))
    _readline(child, timeout=30)  # running
    time.sleep(rng.uniform(0.05, 0.4))
    os.kill(child.pid, signal.SIGKILL)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    acked: dict[tuple[int, int], bytes] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "sent":
            acked[(int(parts[1]), int(parts[2]))] = bytes.fromhex(parts[3])
    return acked


def _check_after_kills(core_proc: CoreProcs, path: str,
                       acked: dict[tuple[int, int], bytes]) -> None:
    stored = _read_in_new_process(core_proc, path, "t")
    missing = [k for k in acked if k not in stored]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    for k, v in acked.items():
        assert stored[k] == v, f"payload of {k} differs"
    for part in {p for p, _ in stored}:
        offs = sorted(o for p, o in stored if p == part)
        assert offs == list(range(len(offs))), f"offsets of partition {part} not dense"


@pytest.mark.parametrize("mode", MODES)
def test_sender_killed_at_random_times_loses_nothing(core_proc: CoreProcs, broker_path: str,
                                                     mode: str, rng: random.Random) -> None:
    with mqlite.open(broker_path, durability=mode) as b:
        b.create_topic("t", partitions=2)
    acked: dict[tuple[int, int], bytes] = {}
    for _ in range(2):
        acked.update(_kill_sender_loop(core_proc, broker_path, mode, rng))
    assert acked, "the sender never acknowledged anything"
    _check_after_kills(core_proc, broker_path, acked)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_sender_killed_at_random_times_loses_nothing_long(core_proc: CoreProcs,
                                                          broker_path: str, mode: str,
                                                          rng: random.Random) -> None:
    with mqlite.open(broker_path, durability=mode) as b:
        b.create_topic("t", partitions=2)
    acked: dict[tuple[int, int], bytes] = {}
    for _ in range(50):
        acked.update(_kill_sender_loop(core_proc, broker_path, mode, rng))
    _check_after_kills(core_proc, broker_path, acked)


def test_writes_resume_after_sender_killed(core_proc: CoreProcs, broker_path: str,
                                           rng: random.Random) -> None:
    """A killed writer leaves no lock behind: this process writes at once afterwards."""
    with mqlite.open(broker_path) as b:
        b.create_topic("t", partitions=2)
    _kill_sender_loop(core_proc, broker_path, "sync", rng)
    with mqlite.open(broker_path) as b:
        t0 = time.monotonic()
        md = b.send("t", b"after", partition=0)
        assert time.monotonic() - t0 < 5.0  # no stuck lock (room for a loaded disk's fsync)
        assert b.read("t", 0, md.offset)[0].value == b"after"
