"""I/O errors: an LD_PRELOAD shim fails the Nth write or sync of ``data.mdb``.

``_iofault_shim.c`` (compiled with gcc into a tmp dir; the module is skipped
without gcc) interposes libc's ``pwrite``/``pwritev``/``write``/``writev``/
``fdatasync``/``fsync``.  LMDB 0.9 without ``writemap`` writes data pages with
``pwrite`` (or ``lseek`` + ``writev``), syncs them with ``fdatasync`` and then
writes the meta page with ``pwrite`` (through an ``O_DSYNC`` descriptor under
``durability="sync"``); py-lmdb links LMDB statically but calls libc, so
every one of those calls goes through the shim.  The shim classifies each
call on ``data.mdb`` as ``write`` (data pages), ``meta`` (a write inside the
first two pages) or ``fsync``, and fails the Nth call of the chosen kinds
with the chosen errno (optionally every later one too: a dead disk; or
after doing it for real: the data reached the page cache but the device
reported an error).

A child (``_procs_iofault.py``, under the shim) sends one message at a time
and reports each send only after it returned, then stops at the first
exception.  The checks:

* the failure is a typed mqlite error (:class:`mqlite.StorageError`) naming
  the I/O error, never a raw ``lmdb`` exception, a crash or a signal;
* the failed send returned no metadata and left no record behind;
* reopened without the shim, ``verify`` passes, every send that returned is
  readable with its payload, offsets are dense, and writes work again;
* a queue ack whose commit failed leaves the message pending: it is
  redelivered, while the acks that returned stay acked.

N is drawn from the session seed (printed; rerun with MQLITE_TEST_SEED).
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from _values import value

import mqlite
from mqlite.verify import verify_in_child

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_procs_iofault.py"
ERRNOS = (errno.EIO, errno.ENOSPC)
CHILD_TIMEOUT = 60


class Result:
    """The parsed output of one child run."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.returncode = proc.returncode
        self.acked: dict[tuple[int, int], int] = {}  # (partition, offset) -> crc
        self.received: list[tuple[int, int]] = []
        self.ack_done: list[tuple[int, int]] = []
        self.ack_tried: list[tuple[int, int]] = []
        self.error: list[str] | None = None
        self.after_error: list[str] = []  # kinds of lines printed after ERR
        self.again: dict[str, Any] | None = None
        self.reopen: dict[str, Any] | None = None
        self.seen: list[int] = []
        self.failed: list[int] = []
        self.done = False
        for line in proc.stdout.splitlines():
            tag, _, rest = line.partition(" ")
            if self.error is not None:
                self.after_error.append(tag)
            if tag == "OK":
                p, o, crc = map(int, rest.split())
                self.acked[(p, o)] = crc
            elif tag == "RECV":
                self.received.append(tuple(map(int, rest.split())))  # type: ignore[arg-type]
            elif tag == "TRY":
                self.ack_tried.append(tuple(map(int, rest.split())))  # type: ignore[arg-type]
            elif tag == "ACKED":
                self.ack_done.append(tuple(map(int, rest.split())))  # type: ignore[arg-type]
            elif tag == "ERR":
                self.error = json.loads(rest)
            elif tag == "AGAIN":
                self.again = json.loads(rest)
            elif tag == "REOPEN":
                self.reopen = json.loads(rest)
            elif tag == "STATS":
                v = list(map(int, rest.split()))
                self.seen, self.failed = v[:3], v[3:]
            elif tag == "DONE":
                self.done = True

    def describe(self) -> str:
        return (f"exit code {self.returncode}\n--- stdout (tail)\n"
                + "\n".join(self.stdout.splitlines()[-15:])
                + f"\n--- stderr (tail)\n{self.stderr[-3000:]}")


def run_child(shim: Path, cfg: dict[str, Any], cwd: Path) -> Result:
    env = dict(os.environ)
    env["LD_PRELOAD"] = str(shim)
    # These cases are about LMDB's write(2)/fsync(2) path.  Under "none" LMDB writes
    # through its map (writemap, D47): nothing to intercept; its full-disk path is
    # test_writemap.py's.  Off here, "none" takes the write(2) path again.
    env["MQLITE_WRITEMAP"] = "0"
    for k in ("MQLITE_FAULT_OPS", "MQLITE_FAULT_AFTER", "MQLITE_FAULT_STICKY",
              "MQLITE_FAULT_LATE", "MQLITE_FAULT_ERRNO"):
        env.pop(k, None)  # the child arms the shim itself, once the broker is open
    print(f"child config: {json.dumps(cfg)}")
    # subprocess.run kills the child on timeout; it never outlives the test.
    proc = subprocess.run([sys.executable, str(CHILD), json.dumps(cfg)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False)
    res = Result(proc)
    assert proc.returncode == 0 and res.done, f"the child crashed or failed:\n{res.describe()}"
    assert res.seen and res.seen[0] + res.seen[1] > 0, (
        "the shim intercepted no write of data.mdb: LD_PRELOAD interposition does not work "
        f"with this py-lmdb build\n{res.describe()}")
    return res


def assert_typed_io_error(err: list[str] | None, err_no: int, res: Result) -> None:
    assert err is not None, f"the injected fault never surfaced as an error\n{res.describe()}"
    module, name, text = err
    assert module.startswith("mqlite"), f"raw exception escaped: {module}.{name}: {text}"
    cls = getattr(mqlite, name, None)
    assert isinstance(cls, type) and issubclass(cls, mqlite.StorageError), (name, text)
    assert os.strerror(err_no) in text, f"the error does not name the I/O error: {text}"
    assert "disk" in text.lower(), f"the error gives no hint: {text}"


def seed_broker(path: Path, durability: str, n: int = 5) -> dict[tuple[int, int], bytes]:
    """Create topic ``t`` with ``n`` messages sent before any fault; return them."""
    with mqlite.open(path, durability=durability) as b:
        b.create_topic("t")
        return {(md.partition, md.offset): v for v in (b"before|%d" % i for i in range(n))
                for md in [b.send("t", v)]}


def check_on_disk(path: Path, before: dict[tuple[int, int], bytes],
                  acked: dict[tuple[int, int], int], durability: str) -> None:
    """Reopen without the shim: verify passes, nothing acknowledged is lost, writes work."""
    rep = verify_in_child(str(path), timeout=60)
    assert rep.ok, rep.problems
    with mqlite.open(path, durability=durability) as b:
        msgs = b.read("t", 0, 0, max_records=100_000)
        stored = {(m.partition, m.offset): value(m) for m in msgs}
        assert [m.offset for m in msgs] == list(range(len(msgs))), "offsets not dense"
        for k, v in before.items():
            assert stored.get(k) == v, f"message {k} written before the fault differs or is lost"
        for k, crc in acked.items():
            assert k in stored, f"acknowledged message {k} lost"
            assert zlib.crc32(stored[k]) == crc, f"payload of acknowledged message {k} differs"
        extra = sorted(set(stored) - set(acked) - set(before))
        assert not extra, f"records stored whose send failed: {extra[:5]}"
        md = b.send("t", b"after")
        assert b.read("t", 0, md.offset)[0].value == b"after"


def fault(ops: str, after: int, err_no: int, *, sticky: bool = False,
          late: bool = False) -> dict[str, Any]:
    return {"ops": ops, "after": after, "errno": err_no, "sticky": sticky, "late": late}


# Per kind: the range N is drawn from.  A send is ~2-3 data-page writes, one
# fdatasync (sync mode only) and one meta-page write.
N_RANGE = {"write": (1, 40), "meta": (1, 15), "fsync": (1, 15)}


def test_shim_sees_lmdb_io(shim: Path, tmp_broker_dir: Path, tmp_path: Path) -> None:
    """Sanity: no fault armed, the shim counts LMDB's writes; "none" never syncs."""
    before = seed_broker(tmp_broker_dir, "sync")
    acked: dict[tuple[int, int], int] = {}
    for durability, want_fsync in (("sync", True), ("none", False)):
        res = run_child(shim, {"path": str(tmp_broker_dir), "durability": durability,
                               "api": "send", "limit": 5, "fault": fault("", 0, 5)}, tmp_path)
        assert res.error is None, res.describe()
        assert len(res.acked) == 5
        w, m, f = res.seen
        assert w >= 5 and m >= 5, res.seen
        assert (f >= 5) if want_fsync else (f == 0), (durability, res.seen)
        assert res.failed == [0, 0, 0]
        acked.update(res.acked)
    check_on_disk(tmp_broker_dir, before, acked, "sync")


CASES = [
    # (kind, durability, sticky, late)
    pytest.param("write", "sync", False, False, id="write-sync"),
    pytest.param("write", "none", False, False, id="write-none"),
    pytest.param("write", "sync", True, False, id="write-sync-deaddisk"),
    pytest.param("fsync", "sync", False, False, id="fsync-sync"),
    pytest.param("fsync", "sync", True, False, id="fsync-sync-deaddisk"),
    pytest.param("meta", "sync", False, False, id="meta-sync"),
    pytest.param("meta", "none", False, False, id="meta-none"),
    pytest.param("meta", "sync", False, True, id="meta-sync-late"),
]


@pytest.mark.parametrize("draw", [0, 1])
@pytest.mark.parametrize(("kind", "durability", "sticky", "late"), CASES)
def test_send_io_fault(shim: Path, tmp_broker_dir: Path, tmp_path: Path, rng: random.Random,
                       kind: str, durability: str, sticky: bool, late: bool,
                       draw: int) -> None:
    lo, hi = N_RANGE[kind]
    n = rng.randint(lo, hi)
    err_no = rng.choice(ERRNOS)
    print(f"fault: kind={kind} N={n} errno={errno.errorcode[err_no]} sticky={sticky} late={late}")
    before = seed_broker(tmp_broker_dir, durability)
    res = run_child(shim, {"path": str(tmp_broker_dir), "durability": durability,
                           "api": "send", "limit": 200,
                           "fault": fault(kind, n, err_no, sticky=sticky, late=late)}, tmp_path)
    k = ("write", "meta", "fsync").index(kind)
    assert res.failed[k] >= 1, f"the shim never injected the fault\n{res.describe()}"
    assert_typed_io_error(res.error, err_no, res)
    assert "OK" not in res.after_error, "a send after the failed one reported success"
    acked = dict(res.acked)
    assert res.again is not None
    if "ok" in res.again:
        p, o, crc = res.again["ok"]
        acked[(p, o)] = crc
    else:
        a_mod, a_name, _ = res.again["error"]
        assert a_mod.startswith("mqlite"), f"raw exception on the next send: {res.again}"
        assert issubclass(getattr(mqlite, a_name), mqlite.MqliteError), res.again
    if sticky:
        assert "error" in res.again, f"a send on a dead disk succeeded: {res.again}"
    elif kind != "meta":
        # A failed page write or sync aborts just that transaction; the next one works.
        assert "ok" in res.again, f"the broker stayed broken after one I/O error: {res.again}"
    else:
        assert res.reopen is not None and "ok" in res.reopen, (
            f"close + reopen in the same process did not recover: {res.reopen}")
    if res.reopen is not None and "ok" in res.reopen:
        p, o, crc = res.reopen["ok"]
        acked[(p, o)] = crc
    check_on_disk(tmp_broker_dir, before, acked, durability)


def test_meta_fault_next_send_recovers(shim: Path, tmp_broker_dir: Path,
                                       tmp_path: Path) -> None:
    """After one transient meta-page failure LMDB declares the environment fatal
    (MDB_PANIC); mqlite reopens it, so the next send in the same process works.

    Regression: the panicked environment used to be kept, failing every later
    call in the process until every handle was closed.
    """
    before = seed_broker(tmp_broker_dir, "sync")
    res = run_child(shim, {"path": str(tmp_broker_dir), "durability": "sync", "api": "send",
                           "limit": 50, "fault": fault("meta", 3, errno.EIO)}, tmp_path)
    assert_typed_io_error(res.error, errno.EIO, res)
    assert res.again is not None and "ok" in res.again, (
        f"the send after a fatal LMDB error did not recover: {res.again}")
    acked = dict(res.acked)
    for extra in (res.again, res.reopen):
        if extra is not None and "ok" in extra:
            p, o, crc = extra["ok"]
            acked[(p, o)] = crc
    check_on_disk(tmp_broker_dir, before, acked, "sync")


@pytest.mark.parametrize(("kind", "durability"), [("write", "sync"), ("fsync", "sync"),
                                                  ("meta", "none")])
def test_send_batch_io_fault(shim: Path, tmp_broker_dir: Path, tmp_path: Path,
                             rng: random.Random, kind: str, durability: str) -> None:
    """A batch whose commit fails stores none of its messages; earlier batches are intact."""
    lo, hi = N_RANGE[kind]
    n = rng.randint(lo, hi)
    err_no = rng.choice(ERRNOS)
    print(f"fault: kind={kind} N={n} errno={errno.errorcode[err_no]}")
    before = seed_broker(tmp_broker_dir, durability)
    res = run_child(shim, {"path": str(tmp_broker_dir), "durability": durability,
                           "api": "batch", "limit": 200,
                           "fault": fault(kind, n, err_no)}, tmp_path)
    assert_typed_io_error(res.error, err_no, res)
    assert "OK" not in res.after_error
    acked = dict(res.acked)
    for extra in (res.again, res.reopen):
        if extra is not None and "ok" in extra:
            p, o, crc = extra["ok"]
            acked[(p, o)] = crc
    assert res.reopen is not None and "ok" in res.reopen, res.reopen
    check_on_disk(tmp_broker_dir, before, acked, durability)


@pytest.mark.parametrize("kind", ["write", "fsync", "meta"])
def test_queue_ack_io_fault(shim: Path, tmp_broker_dir: Path, tmp_path: Path,
                            rng: random.Random, kind: str) -> None:
    """A failed ack commit leaves the message pending (redelivered); returned acks hold."""
    n = rng.randint(1, 4)  # an ack commit: a few page writes, one sync, one meta write
    err_no = rng.choice(ERRNOS)
    print(f"fault: kind={kind} N={n} errno={errno.errorcode[err_no]}")
    before = seed_broker(tmp_broker_dir, "sync", n=8)
    res = run_child(shim, {"path": str(tmp_broker_dir), "durability": "sync", "api": "ack",
                           "fault": fault(kind, n, err_no)}, tmp_path)
    assert sorted(res.received) == sorted(before), res.describe()
    assert_typed_io_error(res.error, err_no, res)
    assert res.ack_tried, res.describe()
    failed_ack = res.ack_tried[-1]
    assert failed_ack not in res.ack_done
    assert "ACKED" not in res.after_error
    rep = verify_in_child(str(tmp_broker_dir), timeout=60)
    assert rep.ok, rep.problems
    expect = set(res.received) - set(res.ack_done)
    assert failed_ack in expect
    with mqlite.open(tmp_broker_dir, durability="sync") as b:
        q = b.queue("t", "g")
        got: dict[tuple[int, int], Any] = {}
        deadline = time.monotonic() + 10
        while set(got) != expect and time.monotonic() < deadline:
            for d in q.receive(max_messages=100, timeout=0.5):
                key = (d.partition, d.offset)
                assert key not in got, f"{key} delivered twice after reopening"
                got[key] = d
        assert set(got) == expect, (
            f"redelivered {sorted(got)}; expected the unacked {sorted(expect)} "
            f"(the failed ack was {failed_ack})")
        for key, d in got.items():
            assert d.value == before[key]
            assert d.delivery_count >= 2, f"redelivery of {key} not marked as such"
        # Writes work again: ack everything; nothing is left to deliver.
        assert q.ack(list(got.values())) == len(got)
        assert q.receive(max_messages=100, timeout=0.2) == []
        q.close()
