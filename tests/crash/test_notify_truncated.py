"""Regression: truncating ``notify.shm`` under a live process does not kill it.

Issue 10, defect 12: the next bump, load or wait touched a page past the new
end of the file and the process died of SIGBUS.  The SIGBUS guard
(csrc/guard.h) grows the file back and retries the access.  The victim runs
in a child process (a bus error fails the test instead of killing pytest);
parent and child synchronise over its stdin/stdout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_NOTIFIER = """
import sys
from mqlite import _core
n = _core.Notifier(sys.argv[1], 4096)
n.bump(4095)
print("ready", flush=True)
sys.stdin.readline()                      # the parent truncated the file
n.bump(0)
n.bump(4095)
seq = n.load(4095)
assert n.wait(4095, seq, 0.001) is False  # nothing bumped it since
assert n.wait(4095, seq - 1, 0.001) is True
print("alive", _core.guard_faults(), flush=True)
"""

_BROKER = """
import sys, mqlite
b = mqlite.open(sys.argv[1], durability="none")
b.create_topic("t")
b.send("t", b"before")
c = b.consumer("t", group="g")
assert [m.value for m in c.poll(timeout=1)] == [b"before"]
print("ready", flush=True)
sys.stdin.readline()                      # the parent truncated notify.shm
b.send("t", b"after")
assert [m.value for m in c.poll(timeout=1)] == [b"after"]
assert c.poll(timeout=0.01) == []          # waits on the (regrown) wake-up word
c.close()
b.close()
print("alive", flush=True)
"""


def _run_and_truncate(code: str, arg: str, victim: Path, cut: int) -> str:
    p = subprocess.Popen([sys.executable, "-c", code, arg], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
        os.truncate(victim, cut)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, f"child died (signal {-p.returncode}): {err[-2000:]}"
    return out


@pytest.mark.parametrize("cut", [0, 4096, 32767])
def test_truncated_notify_file_is_grown_back_not_a_sigbus(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "notify.shm"
    out = _run_and_truncate(_NOTIFIER, str(path), path, cut)
    assert out.startswith("alive")
    if cut < 4096 * 7:  # slot 4095 lies on page 7: a page past the end faults
        assert int(out.split()[1]) >= 1
        assert os.path.getsize(path) == 4096 * 8


def test_broker_survives_notify_shm_truncated_under_it(tmp_broker_dir: Path) -> None:
    out = _run_and_truncate(_BROKER, str(tmp_broker_dir), tmp_broker_dir / "notify.shm", 0)
    assert out.strip() == "alive"
