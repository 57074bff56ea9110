"""Stable transactional ids: slot claims by flock (mqlite.kafka.txid, D39)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka")

from mqlite.kafka.txid import claim_transactional_id, lock_dir

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_live_claims_never_share_an_id_and_a_released_slot_comes_back() -> None:
    scope = f"s-{uuid.uuid4().hex[:8]}"
    a = claim_transactional_id("base", scope, "h:1", 0, host="host")
    b = claim_transactional_id("base", scope, "h:1", 0, host="host")
    try:
        assert a.transactional_id == f"base.{scope}.host.0"
        assert b.transactional_id == f"base.{scope}.host.1"  # slot 0 is held
        c = claim_transactional_id("base", scope, "h:2", 0, host="host")  # another cluster
        assert c.slot == 0
        c.release()
        a.release()
        a.release()  # idempotent
        again = claim_transactional_id("base", scope, "h:1", 0, host="host")
        assert again.slot == 0
        again.release()
        assert claim_transactional_id("base", scope, "h:1", 5, host="host").slot == 5
    finally:
        a.release()
        b.release()


def test_a_killed_holders_slot_is_free_at_once() -> None:
    scope = f"s-{uuid.uuid4().hex[:8]}"
    code = ("import sys, time\n"
            "from mqlite.kafka.txid import claim_transactional_id\n"
            f"c = claim_transactional_id('base', {scope!r}, 'h:1', 0, host='host')\n"
            "print(c.transactional_id, flush=True)\n"
            "time.sleep(3600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=SRC))
    try:
        assert p.stdout is not None
        held = p.stdout.readline().strip()
        assert held == f"base.{scope}.host.0"
        assert claim_transactional_id("base", scope, "h:1", 0, host="host").slot == 1
    finally:
        p.kill()
        p.wait(30)
        if p.stdout is not None:
            p.stdout.close()
    back = claim_transactional_id("base", scope, "h:1", 0, host="host")
    assert back.transactional_id == held  # the restart gets the dead holder's id
    back.release()


def test_lock_files_are_private() -> None:
    c = claim_transactional_id("base", f"s-{uuid.uuid4().hex[:8]}", "h:1", 0)
    try:
        d = lock_dir()
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        modes = {stat.S_IMODE(f.stat().st_mode) for f in d.iterdir()}
        assert modes <= {0o600}
    finally:
        c.release()


@pytest.mark.parametrize(("args", "exc"), [
    (("", "s", "h:1", 0), ValueError),
    (("b", 1, "h:1", 0), TypeError),
    (("b", "s", "h:1", -1), ValueError),
    (("b", "s", "h:1", 4096), ValueError),
    (("b", "s", "h:1", True), TypeError),
])
def test_bad_arguments_are_refused(args: tuple, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        claim_transactional_id(*args)


def test_worker_index_comes_from_mqlite_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from mqlite.app.kafka_backend import worker_index

    monkeypatch.delenv("MQLITE_WORKER", raising=False)
    assert worker_index() == 0
    monkeypatch.setenv("MQLITE_WORKER", "3")
    assert worker_index() == 3
    for bad in ("x", "-1", "4096"):
        monkeypatch.setenv("MQLITE_WORKER", bad)
        with pytest.raises(ValueError, match="MQLITE_WORKER"):
            worker_index()
