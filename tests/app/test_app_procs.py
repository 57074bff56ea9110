"""`mqlite run` with worker processes: SIGTERM (no duplicates), SIGKILL (nothing lost),
exactly-once under SIGKILL, health.  Synchronised on the output topic (blocking polls),
never on sleeps; outcomes only."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from _polling import wait_until
from _values import value

import mqlite
from mqlite import TopicPartition

TIMEOUT = 120.0


class Outputs:
    """Reads a topic from the beginning in this (test) process."""

    def __init__(self, broker: mqlite.Broker, topic: str) -> None:
        self.c = broker.consumer(None)
        tps = [TopicPartition(topic, p) for p in range(broker.partitions_for(topic))]
        self.c.assign(tps)
        self.c.seek_to_beginning(*tps)
        self.values: list[dict[str, Any]] = []

    def until(self, cond: Any, what: str, timeout: float = TIMEOUT) -> None:
        end = time.monotonic() + timeout
        while not cond(self.values):
            left = end - time.monotonic()
            assert left > 0, f"timed out waiting for {what}: {len(self.values)} outputs"
            for m in self.c.poll(max_records=1000, timeout=min(left, 1.0)):
                self.values.append(msgspec.json.decode(value(m)))

    def drain(self) -> None:
        """Read what is left (the writers have exited): until a poll comes back empty."""
        while True:
            msgs = self.c.poll(max_records=1000, timeout=0.2)
            if not msgs:
                return
            self.values += [msgspec.json.decode(value(m)) for m in msgs]

    def close(self) -> None:
        self.c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


def _ready(port: int) -> tuple[int, dict[str, Any]] | None:
    h = _health(port)
    return h if h[0] == 200 else None


def _setup(d: Any, n: int, partitions: int, outs: tuple[str, ...] = ("out",)) -> mqlite.Broker:
    b = mqlite.open(d, durability="none")
    b.create_topic("in", partitions=partitions)
    for t in outs:
        b.create_topic(t, partitions=partitions)
    for start in range(0, n, 500):
        ids = range(start, min(n, start + 500))
        b.send_batch("in", [msgspec.json.encode({"id": i}) for i in ids],
                     keys=[str(i).encode() for i in ids])
    return b


def _stop(proc: Any) -> int:
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(TIMEOUT)
    return int(rc)


def test_workers_share_the_group_and_sigterm_leaves_no_duplicates(app_procs: Any) -> None:
    n = 3000
    b = _setup(app_procs.dir, n, 6)
    out = Outputs(b, "out")
    port = _free_port()
    try:
        p1 = app_procs.run("_app_procs:workers_app", "--workers", "3", "--health-port",
                           str(port))
        out.until(lambda v: len(v) >= 300, "first outputs")
        _, body = wait_until(lambda: _ready(port),
                                  TIMEOUT, "health 200")
        assert body["ready"] is True and len(body["workers"]) == 3
        # every worker polled once (ready): all three are members of the one group
        assert len(b.describe_group("workers").members) == 3
        assert _stop(p1) == 0, p1.stdout.read().decode()[-3000:]
        port2 = _free_port()
        p2 = app_procs.run("_app_procs:workers_app", "--workers", "2", "--health-port",
                           str(port2))
        out.until(lambda v: len({x["id"] for x in v}) == n, "every input handled")
        # p1 may have handled every input already: stop p2 only once it is up (its signal
        # handlers installed), not while it is still importing
        wait_until(lambda: _ready(port2), TIMEOUT, "second run's health 200")
        assert _stop(p2) == 0, p2.stdout.read().decode()[-3000:]
        out.drain()
        counts = Counter(v["id"] for v in out.values)
        assert set(counts) == set(range(n))
        dups = {i: c for i, c in counts.items() if c > 1}
        assert not dups, f"duplicates after SIGTERM: {list(dups.items())[:10]}"
        assert b.committed_offsets("workers", "in") == {
            p.partition: p.end_offset for p in b.describe_topic("in").partitions}
    finally:
        out.close()
        b.close()


def test_sigkill_of_a_worker_loses_nothing_and_it_is_restarted(app_procs: Any) -> None:
    n = 3000
    b = _setup(app_procs.dir, n, 6)
    out = Outputs(b, "out")
    port = _free_port()
    try:
        p = app_procs.run("_app_procs:workers_app", "--workers", "3", "--health-port",
                          str(port))
        _, body = wait_until(lambda: _ready(port),
                             TIMEOUT, "health 200")
        out.until(lambda v: len(v) >= 200, "first outputs")
        victim = int(min(body["workers"]))
        os.kill(victim, signal.SIGKILL)
        out.until(lambda v: len({x["id"] for x in v}) == n, "every input after SIGKILL")
        _, body2 = wait_until(lambda: _ready(port),
                              TIMEOUT, "restarted worker ready")
        assert str(victim) not in body2["workers"] and len(body2["workers"]) == 3
        assert _stop(p) == 0
    finally:
        out.close()
        b.close()


def test_publish_before_run_with_workers_runs_them(app_procs: Any) -> None:
    """A publish before ``app.run(workers=2)`` opened the App's broker in the parent;
    run() closes it and forks (it used to refuse with a RuntimeError, D81)."""
    n = 200
    b = _setup(app_procs.dir, n, 6)
    out = Outputs(b, "out")
    port = _free_port()
    try:
        p = app_procs.python(f"import _app_procs; _app_procs.publish_then_run({port})")

        def done(v: list[dict[str, Any]]) -> bool:
            assert p.poll() is None, p.stdout.read().decode() if p.stdout else p.returncode
            return len({x["id"] for x in v}) == n + 1

        out.until(done, "every input, and the one published before run()")
        _, body = wait_until(lambda: _ready(port), TIMEOUT, "health 200")
        assert len(body["workers"]) == 2
        assert _stop(p) == 0
        out.drain()
        assert sorted(Counter(x["id"] for x in out.values).values()) == [1] * (n + 1)
    finally:
        out.close()
        b.close()


@pytest.mark.parametrize(("workers", "flag"), [("1", "--health-port"), ("3", "--health-port"),
                                                ("1", "--metrics-port"), ("3", "--metrics-port")])
def test_a_busy_port_is_a_clear_error_and_leaves_no_worker(app_procs: Any, workers: str,
                                                            flag: str) -> None:
    """A taken --health-port / --metrics-port: exit 2 with a message naming the port, and
    no process of the run left behind (a worker forked before the metrics server failed
    used to be orphaned, still consuming; D81)."""
    _setup(app_procs.dir, 10, 6).close()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        p = app_procs.run("_app_procs:workers_app", "--workers", workers, flag, port)
        rc = p.wait(TIMEOUT)
    try:
        os.killpg(p.pid, 0)  # a process of the run's group is still there: an orphan
    except ProcessLookupError:
        left = False
    else:
        left = True
        os.killpg(p.pid, signal.SIGKILL)  # (it holds the output pipe open)
    out = p.stdout.read().decode() if p.stdout else ""
    assert not left, f"a worker outlived its supervisor:\n{out}"
    assert rc == 2, out
    assert f"127.0.0.1:{port}" in out and f"pick another {flag}" in out, out
    assert "Traceback" not in out, out


def _listening_inode(port: int) -> str:
    """The socket inode of the TCP listener on 127.0.0.1:``port`` (/proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[1] == f"0100007F:{port:04X}" and cols[3] == "0A":
                return cols[9]
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def test_workers_do_not_hold_the_supervisors_ports(app_procs: Any) -> None:
    """The health and metrics servers belong to the supervisor: a forked worker closes
    their listening sockets (else a worker outliving it would keep the ports bound)."""
    _setup(app_procs.dir, 10, 6).close()
    hport, mport = _free_port(), _free_port()
    p = app_procs.run("_app_procs:workers_app", "--workers", "2", "--health-port",
                      str(hport), "--metrics-port", str(mport))
    _, body = wait_until(lambda: _ready(hport), TIMEOUT, "health 200")
    inodes = {f"socket:[{_listening_inode(hport)}]", f"socket:[{_listening_inode(mport)}]"}
    for pid in body["workers"]:
        held = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except FileNotFoundError:  # closed meanwhile
                pass
        assert not inodes & held, f"worker {pid} holds {inodes & held}"
    assert _stop(p) == 0


def test_exactly_once_under_sigkill_gives_one_output_per_input(app_procs: Any) -> None:
    n = 1500
    b = _setup(app_procs.dir, n, 3, outs=("out", "out2"))
    out = Outputs(b, "out")
    try:
        for _ in range(3):
            p = app_procs.run("_app_procs:eos_app")
            seen = len(out.values)
            out.until(lambda v, seen=seen: len(v) >= min(n, seen + 150), "progress")
            os.killpg(p.pid, signal.SIGKILL)  # anywhere: mid-handler, mid-commit
            p.wait(TIMEOUT)
        port = _free_port()
        p = app_procs.run("_app_procs:eos_app", "--health-port", str(port))
        out.until(lambda v: len(v) >= n, "all outputs")
        # The killed runs may have produced every output already: stop this run only once
        # it is up (its signal handlers installed), not while it is still importing (a
        # SIGTERM then ends it with -15)
        wait_until(lambda: _ready(port), TIMEOUT, "last run's health 200")
        assert _stop(p) == 0, p.stdout.read().decode()[-3000:]
        out.drain()
        counts = Counter(v["id"] for v in out.values)
        assert set(counts) == set(range(n)) and set(counts.values()) == {1}
        out2 = Outputs(b, "out2")
        out2.until(lambda v: len(v) >= n, "out2")
        assert Counter(v["id"] for v in out2.values) == counts
        out2.close()
    finally:
        out.close()
        b.close()


def test_second_signal_stops_at_once_and_nothing_is_committed(app_procs: Any) -> None:
    b = _setup(app_procs.dir, 1, 1)
    try:
        port = _free_port()
        p = app_procs.run("_app_procs:stuck_app", "--health-port", str(port))
        entered = app_procs.dir / "entered"
        wait_until(entered.exists, TIMEOUT, "the handler to start")
        wait_until(lambda: _ready(port), TIMEOUT, "health 200")
        p.send_signal(signal.SIGTERM)  # graceful: would wait up to 600 s for the handler
        # the stop has begun (not ready any more) before the second signal is sent, so
        # the kernel cannot merge the two signals into one
        wait_until(lambda: _health(port)[0] == 503, TIMEOUT, "health 503 while stopping")
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)  # second signal: at once
        assert p.wait(TIMEOUT) == 128 + signal.SIGTERM
        assert b.committed_offsets("stuck", "in") == {}  # redelivered to the next owner
    finally:
        b.close()


class _Lines:
    """Every line a child writes to stdout, read by a thread (the tests wait on log lines)."""

    def __init__(self, proc: Any) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._t.start()

    def _read(self, f: Any) -> None:
        for raw in f:
            self.lines.append(raw.decode("utf-8", "replace"))

    def count(self, text: str) -> int:
        return sum(text in ln for ln in list(self.lines))

    def text(self) -> str:
        return "".join(self.lines)


@dataclass(frozen=True)
class _Gone:
    """One subscriber mode of the deleted-topic tests: the App of ``_app_procs`` that reads
    ``topic``, its health entry ``sub``, and the numbers its test uses."""

    target: str  # the ``mqlite run`` target
    topic: str
    sub: str  # the handler's name: its health entry
    partitions: int  # of the topic at the start
    new_partitions: int  # at its re-creation under 2 workers
    health_partitions: int  # at its re-creation in the health test
    first: int  # messages handled before the deletion
    group: str | None = None  # a stream group: its committed offsets are checked too
    keyed: bool = False  # send with keys (a stream topic spreads them over its partitions)

    def send(self, b: mqlite.Broker, ids: range) -> None:
        b.send_batch(self.topic, [msgspec.json.encode({"id": i}) for i in ids],
                     keys=[str(i).encode() for i in ids] if self.keyed else None)

    def committed(self, b: mqlite.Broker) -> int | None:
        """The sum of the group's committed offsets; None for a queue subscriber."""
        if self.group is None:
            return None
        return sum(b.committed_offsets(self.group, self.topic).values())


# A queue subscriber (D84) and a stream subscriber (one group, 4 partitions shared by the
# workers, D89): the stream group also reads the new topic from its start, not from the
# offsets it committed on the old one.
GONE = [_Gone("_app_procs:queue_app", "jobs", "queue_job", partitions=1, new_partitions=3,
              health_partitions=1, first=100),
        _Gone("_app_procs:stream_app", "events", "stream_event", partitions=4,
              new_partitions=4, health_partitions=2, first=200, group="sa.events",
              keyed=True)]
GONE_IDS = ["queue", "stream"]
AFTER = 300  # messages sent after the re-creation


@pytest.mark.parametrize("g", GONE, ids=GONE_IDS)
def test_workers_wait_for_their_deleted_topic_and_resume_without_restarting(
        app_procs: Any, g: _Gone) -> None:
    """``mqlite run --workers 2``: the topic of a queue (D84) or a stream (D89) subscriber
    is deleted under both workers, then created again by someone else.  Each worker waits
    (logs it once), no worker exits or is restarted (a restart would create the topic at
    start), and every message sent after the re-creation is handled exactly once (a stream
    group commits the new topic to its end: it read it from its start)."""
    b = mqlite.open(app_procs.dir, durability="none")
    b.create_topic(g.topic, partitions=g.partitions)
    b.create_topic("done")
    out = Outputs(b, "done")
    port = _free_port()
    end = g.first + AFTER
    waiting = f"'{g.topic}' was deleted; waiting"
    try:
        p = app_procs.run(g.target, "--workers", "2", "--health-port", str(port))
        lines = _Lines(p)
        _, body = wait_until(lambda: _ready(port), TIMEOUT, "health 200")
        pids = set(body["workers"])
        g.send(b, range(g.first))
        out.until(lambda v: {x["id"] for x in v} >= set(range(g.first)),
                  f"the first {g.first}")
        if g.group is not None:
            wait_until(lambda: g.committed(b) == g.first, TIMEOUT,
                       f"the first {g.first} committed")
        b.delete_topic(g.topic)
        wait_until(lambda: lines.count(waiting) >= 2, TIMEOUT,
                   f"both workers waiting:\n{lines.text()}")
        assert g.topic not in b.topics()  # no worker created it again
        b.create_topic(g.topic, partitions=g.new_partitions)
        g.send(b, range(g.first, end))
        out.until(lambda v: {x["id"] for x in v} >= set(range(g.first, end)),
                  "every message sent after the re-creation")
        if g.group is not None:
            wait_until(lambda: g.committed(b) == AFTER, TIMEOUT,
                       "the new topic committed to its end")
        code, body2 = _health(port)
        assert code == 200 and set(body2["workers"]) == pids, (body2, lines.text())
        assert _stop(p) == 0, lines.text()[-3000:]
        out.drain()
        after = Counter(x["id"] for x in out.values if x["id"] >= g.first)
        assert set(after) == set(range(g.first, end)) and set(after.values()) == {1}
        assert {x["pid"] for x in out.values if x["id"] >= g.first} <= {int(q) for q in pids}
        text = lines.text()
        assert "exited with" not in text and "Traceback" not in text, text[-3000:]
        assert lines.count(waiting) == 2, text[-3000:]
    finally:
        out.close()
        b.close()


@pytest.mark.parametrize("g", GONE, ids=GONE_IDS)
def test_health_of_one_worker_shows_the_wait(app_procs: Any, g: _Gone) -> None:
    """``mqlite run --health-port``: 503 naming the wait while the topic of a queue or a
    stream subscriber is gone, 200 and handling again once it exists (it used to stop the
    run with exit 1)."""
    b = mqlite.open(app_procs.dir, durability="none")
    b.create_topic(g.topic, partitions=g.partitions)
    b.create_topic("done")
    out = Outputs(b, "done")
    port = _free_port()
    try:
        p = app_procs.run(g.target, "--health-port", str(port))
        wait_until(lambda: _ready(port), TIMEOUT, "health 200")
        b.delete_topic(g.topic)

        def waiting() -> dict[str, Any] | None:
            assert p.poll() is None, "the run ended"
            code, body = _health(port)
            sub = body.get(g.sub) or {}
            return body if code == 503 and sub.get("waiting") else None

        body = wait_until(waiting, TIMEOUT, "health 503 with the wait")
        assert body["ready"] is False
        assert f"'{g.topic}' was deleted" in body[g.sub]["waiting"]
        assert body[g.sub]["error"] is None
        b.create_topic(g.topic, partitions=g.health_partitions)
        g.send(b, range(5))
        out.until(lambda v: {x["id"] for x in v} == set(range(5)), "handled after the wait")
        wait_until(lambda: _ready(port), TIMEOUT, "health 200 again")
        assert _stop(p) == 0
    finally:
        out.close()
        b.close()


def test_a_signal_to_the_process_group_stops_workers_gracefully(app_procs: Any) -> None:
    """Ctrl-C in a terminal or systemd's stop signals every process of the group: a
    worker gets the signal and then its supervisor's forward of it.  That used to count
    as a second signal (exit at once: the running job was killed, not finished, and no
    shutdown hook ran); now only the supervisor's own second signal escalates (D86)."""
    b = mqlite.open(app_procs.dir, durability="none")
    try:
        b.create_topic("jobs")
        b.send("jobs", b"1")
        port = _free_port()
        p = app_procs.run("_app_procs:held_app", "--workers", "2", "--health-port",
                          str(port))
        entered = app_procs.dir / "entered"
        wait_until(lambda: entered.exists() and entered.read_text(), TIMEOUT,
                   "the job to start")
        worker = int(entered.read_text())
        wait_until(lambda: _ready(port), TIMEOUT, "health 200")
        # the group's signal, in two steps so that the kernel cannot merge them
        os.kill(worker, signal.SIGTERM)
        wait_until((app_procs.dir / "stopping").exists, TIMEOUT, "the worker stopping")
        p.send_signal(signal.SIGTERM)  # the supervisor forwards it to the worker
        wait_until(lambda: _health(port)[0] != 200, TIMEOUT, "the supervisor stopping")
        (app_procs.dir / "release").write_text("1")
        assert p.wait(TIMEOUT) == 0, p.stdout.read().decode()[-3000:]
        assert (app_procs.dir / f"down-{worker}").exists()  # on_shutdown ran
        stats = b.queue_stats("jobs", "held")
        assert stats is not None
        assert (stats.consumed, stats.inflight, stats.ready) == (1, 0, 0)  # finished, acked
    finally:
        b.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_job_over_its_time_limit_is_retried_then_dead_lettered_and_workers_go_on(
        app_procs: Any, kind: str) -> None:
    """``mqlite run --workers 2``, a queue subscriber with ``time_limit=1``: a job that
    never returns fails at the limit on each of its 2 attempts (whichever worker takes
    it) and is dead-lettered with ``TimeLimitExceeded``; no worker exits or restarts, and
    both go on handling the next jobs (a sync worker on a new thread, D88)."""
    b = mqlite.open(app_procs.dir, durability="none")
    b.create_topic("tl.jobs")
    b.create_topic("tl.done")
    out = Outputs(b, "tl.done")
    port = _free_port()
    try:
        p = app_procs.run(f"_app_procs:tl_{kind}_app", "--workers", "2", "--health-port",
                          str(port))
        lines = _Lines(p)
        _, body = wait_until(lambda: _ready(port), TIMEOUT, "health 200")
        pids = set(body["workers"])
        b.send("tl.jobs", msgspec.json.encode({"id": 0, "hang": True}))
        dl = wait_until(lambda: b.dead_letters("tl.dlq") or None, TIMEOUT,
                        "the hung job dead-lettered")
        assert len(dl) == 1 and dl[0].delivery_count == 2
        assert dict(dl[0].message.headers)["x-error-type"] == b"TimeLimitExceeded"
        b.send_batch("tl.jobs", [msgspec.json.encode({"id": i}) for i in range(1, 101)])
        out.until(lambda v: {x["id"] for x in v} >= set(range(1, 101)), "the next jobs")
        code, body2 = _health(port)
        assert code == 200 and set(body2["workers"]) == pids, (body2, lines.text())
        assert _stop(p) == 0, lines.text()[-3000:]
        out.drain()
        assert sorted(x["id"] for x in out.values) == list(range(1, 101))  # once each
        text = lines.text()
        assert "exited with" not in text and "Traceback" not in text, text[-3000:]
        assert lines.count("ran longer than its time_limit of 1 s;") == 2, text[-3000:]
        assert len(b.dead_letters("tl.dlq")) == 1
    finally:
        out.close()
        b.close()
