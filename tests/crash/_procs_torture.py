"""Child-process entry points for the crash suites (torture, stale readers, disk full).

Children are started through a ``forkserver`` that preloads ``mqlite`` and
this module (``FORKSERVER_PRELOAD`` in ``tests/conftest.py``), so a restart costs a fork, not
an interpreter start.

Every child appends lines to its own log file with ``O_APPEND``, one
``write`` per event group: a SIGKILLed process loses nothing it wrote (the
page cache survives it) and never leaves half a group behind (a torn last
line is ignored by the reader anyway).  Timestamps are ``CLOCK_MONOTONIC``
nanoseconds, one clock for every process of the machine.

Torture log lines
-----------------
``T <ns> <id> <crc>``                 producer: about to send message ``id``
                                      (payload CRC-32 ``crc``), written *before* send
``S <ns> <id> <partition> <offset>``  producer: the send of ``id`` returned
``D <ns> <p> <o> <id> <crc> <count> <start>``
                                      consumer: delivered (count 0 in stream mode) by
                                      the poll/receive that began at ``<start>``
``C <ns> <p> <next_offset>``          stream member: commit returned
``A <ns> <p> <o>``                    queue member: ack returned for this delivery
``N <ns> <p> <o>``                    queue member: nack returned
``K <ns> <point>``                    about to SIGKILL itself at a named point
``E <ns> <text>``                     unexpected exception (the test fails)

Named kill points
-----------------
A child started with ``kill_at=(point, n)`` SIGKILLs itself the ``n``-th time
it reaches ``point``:

* ``after_send``       producer: send returned, before ``S`` is written
* ``after_poll``       stream: poll returned, before ``D`` is written
* ``before_commit``    stream: between delivery (``D`` written) and commit
* ``after_commit``     stream: commit returned, before ``C`` is written
* ``after_receive``    queue: receive returned, before ``D`` is written
* ``before_ack``       queue: delivered (``D`` written), not yet acked
* ``in_ack``           queue: a timer thread kills the process 0-2 ms into ``ack``
* ``after_ack``        queue: ack returned, before ``A`` is written
* ``txn_before_commit`` any role: inside mqlite, just before an LMDB write commit
* ``txn_after_commit`` any role: inside mqlite, the LMDB commit done, before return
* ``comb_before_commit`` producer leading the commit ring: slots applied and
                       recorded, before the LMDB commit
* ``comb_after_commit`` producer leading the commit ring: committed, no slot DONE yet
* ``comb_mid_done``    producer leading the commit ring: the first slot marked
                       DONE and woken, the others not
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import resource
import signal
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from typing import Any

import mqlite
from mqlite import TopicPartition
from mqlite import _engine as _engmod
from mqlite._storage import env as _envmod

now_ns = time.monotonic_ns

STREAM_POINTS = ("after_poll", "before_commit", "after_commit",
                 "txn_before_commit", "txn_after_commit")
QUEUE_POINTS = ("after_receive", "before_ack", "in_ack", "after_ack",
                "txn_before_commit", "txn_after_commit")
COMBINER_POINTS = ("comb_before_commit", "comb_after_commit", "comb_mid_done")
PRODUCER_POINTS = ("after_send", "txn_before_commit", "txn_after_commit", *COMBINER_POINTS)


class Log:
    """Append-only event log (one ``os.write`` per call)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def write(self, lines: list[str]) -> None:
        if lines:
            os.write(self.fd, ("\n".join(lines) + "\n").encode())


class KillPoints:
    """Self-SIGKILL at the ``n``-th arrival at a named point."""

    def __init__(self, log: Log, kill_at: tuple[str, int] | None) -> None:
        self.log = log
        self.point, self.left = kill_at if kill_at else ("", 0)
        if self.point.startswith("txn_"):
            self._patch_commit()
        elif self.point.startswith("comb_"):
            patch_combiner(self.hit)

    def hit(self, point: str) -> None:
        if point != self.point:
            return
        self.left -= 1
        if self.left <= 0:
            self.die()

    def die(self) -> None:
        self.log.write([f"K {now_ns()} {self.point}"])
        os.kill(os.getpid(), signal.SIGKILL)

    def _patch_commit(self) -> None:
        orig = _envmod.Env.commit
        hit = self.hit

        def commit(env: Any, txn: Any, wake: str | None = None, **kw: Any) -> None:
            hit("txn_before_commit")
            orig(env, txn, wake, **kw)
            hit("txn_after_commit")

        _envmod.Env.commit = commit  # type: ignore[method-assign, assignment]  # the fault points
        # The single-send fast path (D36) commits in C, past Env.commit: send through
        # the Python path here so these points see every send's commit.
        _engmod._core.SendPath = _NoSendPath  # type: ignore[misc,assignment]

    def arm_timer(self, point: str, rng: random.Random) -> threading.Timer | None:
        """For ``in_ack``: a thread that kills the process a moment from now."""
        if point != self.point:
            return None
        self.left -= 1
        if self.left > 0:
            return None
        t = threading.Timer(rng.uniform(0.0, 0.002), self.die)
        t.daemon = True
        t.start()
        return t


class _NoSendPath:
    """Stands in for ``_core.SendPath``: never takes a send (the general path does)."""

    def __init__(self, *args: Any) -> None:
        pass

    def send(self, *args: Any) -> None:
        return None


def patch_combiner(hit: Callable[[str], None]) -> None:
    """Call ``hit(point)`` at the steps of a commit-ring leader (``COMBINER_POINTS``)."""
    eng = _engmod.Engine
    commit = eng._ring_commit

    def ring_commit(self: Any, txn: Any) -> None:
        hit("comb_before_commit")
        commit(self, txn)

    def ring_done(comb: Any, taken: list[tuple[int, int]]) -> None:
        hit("comb_after_commit")
        for k, (i, ticket) in enumerate(taken):
            comb.done(i, ticket)
            comb.wake(i)
            if k == 0:
                hit("comb_mid_done")

    eng._ring_commit = ring_commit  # type: ignore[method-assign]
    eng._ring_done = staticmethod(ring_done)  # type: ignore[method-assign]  # the fault points


def lead_and_die(path: str, mode: str, topic: str, value: bytes, point: str,
                 log_path: str) -> None:
    """Send ``value`` (leading the commit ring) and SIGKILL at ``point`` of the lead."""

    def body(log: Log) -> None:
        kp = KillPoints(log, (point, 1))
        broker = mqlite.open(path, durability=mode)
        broker.send(topic, value)
        kp.log.write([f"E {now_ns()} the send returned: {point} was never reached"])

    _guard(log_path, body)


def _guard(log_path: str, body: Callable[[Log], None]) -> None:
    log = Log(log_path)
    # SIGUSR1 dumps every thread's stack next to the log (the test asks live children
    # for it before its final kills, to show where a stalled process waits).
    faulthandler.register(signal.SIGUSR1, file=open(log_path + ".stack", "w"),  # noqa: SIM115
                          all_threads=True)
    try:
        body(log)
    except BaseException:  # noqa: BLE001 - reported to the parent through the log
        log.write([f"E {now_ns()} " + traceback.format_exc().replace("\n", " | ")])
        os._exit(3)


def payload_of(msg_id: str, rng: random.Random) -> bytes:
    return msg_id.encode() + b"|" + rng.randbytes(rng.randrange(0, 300))


def parse_payload(value: bytes | None) -> tuple[str, int]:
    """(message id, CRC-32 of the whole payload); id ``?`` when unparsable."""
    v = value or b""
    head = v.split(b"|", 1)[0]
    try:
        mid = head.decode("ascii")
    except UnicodeDecodeError:
        mid = "?"
    return mid or "?", zlib.crc32(v)


# -- torture roles ----------------------------------------------------------------------------

def producer(path: str, mode: str, topic: str, name: str, log_path: str, seed: int,
             kill_at: tuple[str, int] | None = None) -> None:
    """Send forever, mixing send, send_batch and the batching producer."""

    def body(log: Log) -> None:
        kp = KillPoints(log, kill_at)
        rng = random.Random(seed)
        broker = mqlite.open(path, durability=mode)
        prod = broker.producer(linger_ms=1)
        prefix = f"{name}.{os.getpid()}."
        seq = 0
        while True:
            n = rng.choice((1, 1, rng.randrange(1, 20)))
            ids = [prefix + str(seq + i) for i in range(n)]
            seq += n
            values = [payload_of(i, rng) for i in ids]
            t = now_ns()
            log.write([f"T {t} {i} {zlib.crc32(v)}" for i, v in zip(ids, values)])
            api = rng.random()
            if n == 1 and api < 0.5:
                mds = [broker.send(topic, values[0])]
            elif api < 0.8:
                bmd = broker.send_batch(topic, values)
                mds = [bmd[i] for i in range(n)]
            else:
                futs = [prod.send(topic, v) for v in values]
                prod.flush()
                mds = [f.result() for f in futs]
            kp.hit("after_send")
            t = now_ns()
            log.write([f"S {t} {i} {md.partition} {md.offset}" for i, md in zip(ids, mds)])
            time.sleep(rng.uniform(0.0, 0.012))

    _guard(log_path, body)


def stream_member(path: str, mode: str, topic: str, group: str, log_path: str, seed: int,
                  kill_at: tuple[str, int] | None = None) -> None:
    """A group member (``commit="after"``) that also commits explicitly most of the time."""

    def body(log: Log) -> None:
        kp = KillPoints(log, kill_at)
        rng = random.Random(seed)
        broker = mqlite.open(path, durability=mode)
        consumer = broker.consumer(topic, group=group, commit="after")
        while True:
            t0 = now_ns()
            msgs = consumer.poll(max_records=rng.randrange(1, 100), timeout=0.2)
            if not msgs:
                continue
            kp.hit("after_poll")
            t = now_ns()
            lines = []
            upto: dict[int, int] = {}
            for m in msgs:
                mid, crc = parse_payload(m.value)
                lines.append(f"D {t} {m.partition} {m.offset} {mid} {crc} 0 {t0}")
                upto[m.partition] = m.offset + 1
            log.write(lines)
            kp.hit("before_commit")
            if rng.random() < 0.7:
                try:
                    consumer.commit({TopicPartition(topic, p): o for p, o in upto.items()})
                except mqlite.CommitFailedError:
                    continue  # lost the partition in a rebalance: its new owner redelivers
                kp.hit("after_commit")
                t = now_ns()
                log.write([f"C {t} {p} {o}" for p, o in upto.items()])

    _guard(log_path, body)


def queue_member(path: str, mode: str, topic: str, group: str, log_path: str, seed: int,
                 kill_at: tuple[str, int] | None = None) -> None:
    """A competing consumer: ack most deliveries, nack a few (at most twice each)."""

    def body(log: Log) -> None:
        kp = KillPoints(log, kill_at)
        rng = random.Random(seed)
        broker = mqlite.open(path, durability=mode)
        q = broker.queue(topic, group, visibility_timeout=60.0)
        while True:
            t0 = now_ns()
            ds = q.receive(max_messages=rng.randrange(1, 50), timeout=0.2)
            if not ds:
                continue
            kp.hit("after_receive")
            t = now_ns()
            lines = []
            for d in ds:
                mid, crc = parse_payload(d.value)
                lines.append(f"D {t} {d.partition} {d.offset} {mid} {crc} {d.delivery_count} "
                             f"{t0}")
            log.write(lines)
            kp.hit("before_ack")
            nack = [d for d in ds if d.delivery_count < 3 and rng.random() < 0.05]
            ack = [d for d in ds if d not in nack]
            if nack:
                q.nack(nack, delay=0.0)
                log.write([f"N {now_ns()} {d.partition} {d.offset}" for d in nack])
            if ack:
                timer = kp.arm_timer("in_ack", rng)
                try:
                    q.ack(ack)
                    done = ack
                except mqlite.StaleDeliveryError as exc:
                    stale = {id(d) for d in exc.stale}
                    done = [d for d in ack if id(d) not in stale]
                if timer is not None:
                    timer.join()  # the process dies here at the latest
                kp.hit("after_ack")
                t = now_ns()
                log.write([f"A {t} {d.partition} {d.offset}" for d in done])

    _guard(log_path, body)


# -- stale readers ----------------------------------------------------------------------------

def hold_reader(path: str, ready_path: str, mode: str = "none") -> None:
    """Open a read transaction, announce it, and sleep in it until killed."""
    broker = mqlite.open(path, durability=mode)
    txn = broker._engine.env.read_txn().txn
    txn.get(b"format", db=broker._engine.env.dbs["meta"])  # really use the snapshot
    with open(ready_path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(10)


def hold_write(path: str, ready_path: str, mode: str = "sync") -> None:
    """Begin a write transaction, announce it, and sleep in it until killed."""
    broker = mqlite.open(path, durability=mode)
    broker._engine.env.write_txn()
    with open(ready_path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(10)


def send_after_gate(path: str, topic: str, out_path: str, mode: str = "sync") -> None:
    """Send one message (waiting for the write gate) and write its offset to ``out_path``."""
    broker = mqlite.open(path, durability=mode)
    md = broker.send(topic, b"after")
    with open(out_path, "w") as f:
        f.write(str(md.offset))


def poll_reader(path: str, ready_path: str, topic: str, mode: str = "none") -> None:
    """A consumer without group reading in a tight loop (read txns open most of the time)."""
    broker = mqlite.open(path, durability=mode)
    c = broker.consumer(topic, auto_offset_reset="latest")
    with open(ready_path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        c.poll(max_records=1000, timeout=0.05)


# -- disk full ----------------------------------------------------------------------------------

def fill_under_fsize_limit(path: str, topic: str, limit: int, out_path: str, api: str) -> None:
    """Send 4 KiB values under ``RLIMIT_FSIZE=limit`` until a send fails; report as JSON.

    Writes ``{"acked": [[partition, offset, crc], ...], "error": [type, module, text],
    "again": <error of one more send, still limited>, "recovered": [partition, offset, crc]
    or an error, for one send after lifting the limit in the same process}``.  SIGXFSZ is
    ignored, so a write past the limit fails with EFBIG instead of killing the process.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    rng = random.Random(limit)
    acked: list[list[Any]] = []
    error: list[str] | None = None
    broker = mqlite.open(path, durability="sync")
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    prod = broker.producer(linger_ms=1) if api == "producer" else None

    def one(value: bytes) -> list[Any]:
        try:
            if prod is not None:
                md = prod.send(topic, value).result()
            else:
                md = broker.send(topic, value)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            return [type(exc).__name__, type(exc).__module__, str(exc)]
        return [md.partition, md.offset, zlib.crc32(value)]

    try:
        for i in range(100_000):
            values = [b"%d|" % (i * 10 + j) + rng.randbytes(4000) for j in range(
                1 if api != "batch" else 5)]
            if api == "send":
                mds = [broker.send(topic, values[0])]
            elif api == "batch":
                bmd = broker.send_batch(topic, values)
                mds = [bmd[j] for j in range(len(values))]
            else:
                assert prod is not None
                mds = [prod.send(topic, values[0]).result()]
            for md, v in zip(mds, values):
                acked.append([md.partition, md.offset, zlib.crc32(v)])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        error = [type(exc).__name__, type(exc).__module__, str(exc)]
    again = one(b"again|" + rng.randbytes(4000))
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    recovered = one(b"recovered|" + rng.randbytes(4000))
    with open(out_path, "w") as f:
        json.dump({"acked": acked, "error": error, "again": again, "recovered": recovered}, f)
    sys.stdout.flush()
    os._exit(0)  # no clean close: the parent checks what is on disk
