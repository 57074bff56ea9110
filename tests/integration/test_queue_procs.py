"""Queue mode across real processes: sharing, SIGKILL redelivery, DLQ, delays.

Children are ``python _procs_queue.py <role> <json>``; they record what
they acked in files the parent reads.  Every child is killed and reaped at
teardown, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _values import value

import mqlite
from mqlite import _liveness

CHILD = str(Path(__file__).with_name("_procs_queue.py"))


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, role: str, **args: object) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, CHILD, role, json.dumps(args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def wait_line(self, p: subprocess.Popen[str], expect: str, timeout: float = 30.0) -> str:
        """Read stdout lines until one starts with ``expect`` (the child blocks on writes
        only if the pipe fills, which these few lines never do)."""
        deadline = time.monotonic() + timeout
        assert p.stdout is not None and p.stderr is not None
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if line.startswith(expect):
                return line
            if not line and p.poll() is not None:
                raise AssertionError(f"child exited {p.returncode}: {p.stderr.read()}")
        raise AssertionError(f"child did not print {expect!r} in {timeout} s")

    def join(self, p: subprocess.Popen[str], timeout: float = 60.0) -> None:
        p.wait(timeout)
        err = p.stderr.read() if p.stderr else ""
        assert p.returncode == 0, f"child failed ({p.returncode}): {err}"

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait(10)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()


@pytest.fixture
def procs():
    ps = Procs()
    try:
        yield ps
    finally:
        ps.kill_all()


def _records(path: Path) -> list[tuple[str, str, int, float]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            kind, value, count, t = line.split()
            out.append((kind, value, int(count), float(t)))
    return out


def _wait_lag_zero(q: mqlite.Queue, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while q.lag() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert q.lag() == 0, f"{q.lag()} messages still unacknowledged after {timeout} s"


def test_four_processes_share_20000_messages_each_acked_once(tmp_broker_dir, tmp_path, procs,
                                                             seed):
    n = 20_000
    with mqlite.open(tmp_broker_dir, durability="none") as broker:
        broker.create_topic("jobs", partitions=1)
        for start in range(0, n, 1000):
            broker.send_batch("jobs", [str(i).encode() for i in range(start, start + 1000)])
        observer = broker.queue("jobs", group="workers")  # only for lag(); never receives
        stop = tmp_path / "stop"
        go = tmp_path / "go"
        outs = [tmp_path / f"acks-{i}.txt" for i in range(4)]
        # the start barrier and a 1 ms pause per batch of 50 (the "work") keep one
        # child from draining all 20,000 before the others have started
        children = [procs.start("consume", dir=str(tmp_broker_dir), topic="jobs",
                                group="workers", out=str(out), stop=str(stop), go=str(go),
                                batch=50, work_s=0.001, nack_rate=0.01, seed=seed + i)
                    for i, out in enumerate(outs)]
        for c in children:
            procs.wait_line(c, "ready")
        go.touch()
        _wait_lag_zero(observer, 60)
        stop.touch()
        for c in children:
            procs.join(c)
        observer.close()
    acked = [[r[1] for r in _records(out) if r[0] == "ack"] for out in outs]
    flat = [v for a in acked for v in a]
    dups = [v for v, c in Counter(flat).items() if c > 1]
    assert not dups, f"acked more than once: {dups[:10]}"
    assert set(flat) == {str(i) for i in range(n)}
    assert len(flat) == n
    assert sum(1 for a in acked if a) >= 2, "the work was not shared between processes"


def test_consumer_started_after_a_crash_gets_the_dead_ones_messages_at_once(
        tmp_broker_dir, tmp_path, procs):
    """No live consumer watched the crash: the next one to start reaps it when created."""
    with mqlite.open(tmp_broker_dir, durability="none") as broker:
        broker.create_topic("jobs", partitions=1)
        broker.send_batch("jobs", [str(i).encode() for i in range(10)])
    holder = procs.start("hold", dir=str(tmp_broker_dir), topic="jobs", group="workers",
                         n=10, out=str(tmp_path / "held.json"))
    procs.wait_line(holder, "holding")
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    with mqlite.open(tmp_broker_dir, durability="none") as broker:
        q = broker.queue("jobs", group="workers", visibility_timeout=600)
        got = q.receive(100, timeout=0)  # no wait: reaped in the constructor
        assert sorted(int(value(d)) for d in got) == list(range(10))
        assert all(d.delivery_count == 2 for d in got)
        q.ack(got)
        q.close()


HOLDER_VISIBILITY_S = 60.0  # _procs_queue.hold's visibility timeout


def _kill_the_holder(broker_dir: Path, tmp_path: Path, procs) -> float:
    """One trial: a holder takes 40 of 300 messages and is SIGKILLed while three survivors
    are blocked in ``receive``; they must get the 40.  Returns the time from the kill to
    the last redelivered message's ack, after checking what it must prove: every held
    message redelivered once, as a redelivery, after the kill and long before the holder's
    visibility deadline (so by its death, not by the timeout), and everything acked once."""
    n = 300
    tmp_path.mkdir()
    with mqlite.open(broker_dir, durability="none") as broker:
        broker.create_topic("jobs", partitions=1)
        broker.send_batch("jobs", [str(i).encode() for i in range(n)])
        observer = broker.queue("jobs", group="workers")
        started = time.time()  # the holder's receive, hence its deadline, comes later
        holder = procs.start("hold", dir=str(broker_dir), topic="jobs", group="workers",
                             n=40, out=str(tmp_path / "held.json"))
        procs.wait_line(holder, "holding")
        held = json.loads((tmp_path / "held.json").read_text())
        assert len(held) == 40 and all(c == 1 for _, c in held)
        stop = tmp_path / "stop"
        outs = [tmp_path / f"acks-{i}.txt" for i in range(3)]
        survivors = [procs.start("consume", dir=str(broker_dir), topic="jobs",
                                 group="workers", out=str(out), stop=str(stop), batch=20)
                     for out in outs]
        for s in survivors:
            procs.wait_line(s, "ready")
        # Survivors drain everything else and then block in receive().
        deadline = time.monotonic() + 30
        while observer.lag() > 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert observer.lag() == 40
        time.sleep(0.2)
        killed_at = time.time()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        _wait_lag_zero(observer, 30)
        stop.touch()
        for s in survivors:
            procs.join(s)
        observer.close()
    recs = [r for out in outs for r in _records(out)]
    held_ids = {v for v, _ in held}
    redelivered = [r for r in recs if r[1] in held_ids]
    assert {r[1] for r in redelivered} == held_ids
    assert all(r[2] == 2 for r in redelivered), redelivered
    assert all(r[3] >= killed_at for r in redelivered)  # taken only once the holder died
    last = max(r[3] for r in redelivered)
    assert last < started + HOLDER_VISIBILITY_S / 2, (
        f"held messages redelivered {last - killed_at:.3f} s after SIGKILL: by the "
        "visibility timeout, not by the holder's death")
    acked = [r[1] for r in recs if r[0] == "ack"]
    assert sorted(acked, key=int) == [str(i) for i in range(n)]
    return last - killed_at


def test_sigkilled_holder_messages_redelivered_within_1s(tmp_path, procs):
    """The dead holder's messages reach the blocked survivors within 1 s of the SIGKILL.

    Each trial checks causality with generous bounds (after the kill, long before the
    holder's visibility deadline); the 1 s figure (docs/queue.md) is judged on the best
    of up to three trials, so a machine stalled for a second in one trial does not fail
    it, while a slow path (every trial over 1 s) does."""
    tmp_path.chmod(0o700)
    latencies: list[float] = []
    for trial in range(3):
        latencies.append(_kill_the_holder(tmp_path / f"broker{trial}", tmp_path / f"t{trial}",
                                          procs))
        if latencies[-1] < 1.0:
            break
    print("redelivery latency after SIGKILL: " + ", ".join(f"{x:.3f} s" for x in latencies))
    assert min(latencies) < 1.0, f"held messages redelivered {latencies} s after SIGKILL"


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux)")
def test_sigkilled_holder_is_noticed_through_its_pidfd(tmp_broker_dir, tmp_path, procs,
                                                       monkeypatch):
    """The periodic probe is pushed out to an hour, so only the holder's pidfd can wake the
    survivor's watcher: the survivor still gets the dead one's messages, and the dead one's
    lock file is removed."""
    monkeypatch.setattr(_liveness, "PROBE_INTERVAL", 3600.0)
    members = tmp_broker_dir / "members"
    with mqlite.open(tmp_broker_dir, durability="none") as broker:
        broker.create_topic("jobs", partitions=1)
        broker.send_batch("jobs", [str(i).encode() for i in range(10)])
        holder = procs.start("hold", dir=str(tmp_broker_dir), topic="jobs", group="workers",
                             n=10, out=str(tmp_path / "held.json"))
        procs.wait_line(holder, "holding")
        (dead_lock,) = os.listdir(members)
        assert dead_lock.startswith("q-") and f"-{holder.pid}-" in dead_lock
        # Its constructor's reap finds the holder alive and arms the holder's pidfd.
        q = broker.queue("jobs", group="workers", visibility_timeout=600)
        assert q.receive(10, timeout=0) == []  # held for 60 s by the holder
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        got: list[mqlite.Delivery] = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            got += q.receive(10 - len(got), timeout=max(0.0, deadline - time.monotonic()))
        assert sorted(int(value(d)) for d in got) == list(range(10))
        assert all(d.delivery_count == 2 for d in got)
        q.ack(got)
        q.close()  # waits for a reap in progress: its unlink is over
    assert not (members / dead_lock).exists()


def test_poison_message_dead_lettered_across_processes_then_redriven(tmp_broker_dir, tmp_path,
                                                                     procs):
    with mqlite.open(tmp_broker_dir, durability="none") as broker:
        broker.create_topic("jobs", partitions=1)
        broker.send("jobs", b"ok-1")
        broker.send("jobs", b"poison-1", key=b"pk", headers=[("trace", b"abc")])
        broker.send("jobs", b"ok-2")
        observer = broker.queue("jobs", group="workers", max_deliveries=4,
                                dead_letter_topic="jobs.dlq")
        stop = tmp_path / "stop"
        outs = [tmp_path / f"recs-{i}.txt" for i in range(2)]
        children = [procs.start("consume", dir=str(tmp_broker_dir), topic="jobs",
                                group="workers", out=str(out), stop=str(stop), batch=10,
                                max_deliveries=4, dlq="jobs.dlq", poison_prefix="poison")
                    for out in outs]
        for c in children:
            procs.wait_line(c, "ready")
        _wait_lag_zero(observer, 20)
        stop.touch()
        for c in children:
            procs.join(c)
        recs = [r for out in outs for r in _records(out)]
        nacks = sorted(r[2] for r in recs if r[0] == "nack")
        assert nacks == [1, 2, 3, 4], "poison must be delivered exactly max_deliveries times"
        letters = broker.dead_letters("jobs.dlq")
        assert len(letters) == 1
        dl = letters[0]
        assert dl.message.value == b"poison-1" and dl.message.key == b"pk"
        h = dict(dl.message.headers)
        assert h["trace"] == b"abc"
        assert h["x-original-topic"] == b"jobs"
        assert h["x-original-partition"] == b"0"
        assert h["x-original-offset"] == b"1"
        assert h["x-delivery-count"] == b"4"
        assert h["x-last-error"].startswith(b"poison seen by pid ")
        assert int(h["x-first-delivery-ms"]) <= int(h["x-last-delivery-ms"])
        assert dl.original_offset == 1 and dl.delivery_count == 4
        # The DLQ is a normal topic: a stream consumer reads it too.
        reader = broker.consumer("jobs.dlq")
        assert [m.value for m in reader.poll(timeout=1.0)] == [b"poison-1"]
        reader.close()
        # Redrive moves it back to the original topic; this group gets it again.
        assert broker.redrive("jobs.dlq") == 1
        assert broker.dead_letters("jobs.dlq") == []
        ds = observer.receive(10, timeout=2.0)
        assert [d.value for d in ds] == [b"poison-1"]
        assert ds[0].delivery_count == 1
        assert ("trace", b"abc") in ds[0].headers
        assert not any(k.startswith("x-") for k, _ in ds[0].headers)
        observer.ack(ds)
        observer.close()


def test_delayed_message_from_another_process(tmp_broker_dir, procs):
    with mqlite.open(tmp_broker_dir, durability="none") as broker:
        broker.create_topic("later", partitions=1)
        q = broker.queue("later", group="g")
        sender = procs.start("send_delayed", dir=str(tmp_broker_dir), topic="later",
                             value="hello", delay=2.0)
        sent_at = json.loads(procs.wait_line(sender, "{"))["sent_at"]
        procs.join(sender)
        early = q.receive(10, timeout=max(0.0, sent_at + 1.9 - time.time()))
        assert early == [], "a delay=2 message was received before 2 s"
        ds = q.receive(10, timeout=3.0)
        got_at = time.time()
        assert [d.value for d in ds] == [b"hello"]
        assert got_at - sent_at >= 2.0 - 0.01
        assert got_at - sent_at <= 2.0 + 0.1, f"received {got_at - sent_at - 2:.3f} s late"
        q.ack(ds)
        q.close()


def test_scheduled_messages_survive_a_crash(tmp_broker_dir, procs):
    with mqlite.open(tmp_broker_dir, durability="sync") as broker:
        broker.create_topic("later", partitions=1)
    # Due well after the child has started (a loaded box took over 0.8 s to start it).
    due = time.time() + 3.0
    p = procs.start("schedule_and_die", dir=str(tmp_broker_dir), topic="later", n=5,
                    deliver_at=due, durability="sync")
    procs.wait_line(p, "scheduled")
    p.wait(10)
    assert p.returncode == -signal.SIGKILL
    with mqlite.open(tmp_broker_dir, durability="sync") as broker:
        q = broker.queue("later", group="g")
        early = due - time.time() - 0.1
        if early > 0:  # not delivered before it is due
            assert q.receive(10, timeout=min(early, 0.5)) == []
        got: list[bytes | None] = []
        deadline = time.monotonic() + 60
        while len(got) < 5 and time.monotonic() < deadline:
            ds = q.receive(10, timeout=1.0)
            got += [d.value for d in ds]
            q.ack(ds)
        assert got == [b"late-%d" % i for i in range(5)]
        assert time.time() >= due
        q.close()
