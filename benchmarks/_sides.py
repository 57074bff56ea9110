"""The two sides of every row: mqlite, Redis Streams (redis-py), embedded peers.

Each class is a :class:`~benchmarks._common.Side`: ``setup`` prepares what
every repetition shares (a broker directory, a pre-filled topic or stream),
``rep(i)`` runs one bounded, timed repetition, ``close`` cleans up.  Only the
loop between the two clock reads is timed; pre-filling, topic creation and
deletion, group joins and process start-up are not.

Both sides do the same work per message and use each library the way its
documentation shows: ``broker.send`` vs ``r.xadd``, ``send_batch`` vs a
non-transactional pipeline of XADD, ``poll`` (group, commit after) vs
XREADGROUP + XACK, queue ``receive`` + ``ack`` vs XREADGROUP + XACK.
"""

from __future__ import annotations

import os
import queue as _stdqueue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import _workers
from benchmarks._common import Budget, Sample, Side, make_value, now_ns, percentile

__all__ = ["SIDES", "Ctx"]

PREFILL_CHUNK = 1000
PROC_TIMEOUT = 120.0


@dataclass
class Ctx:
    """What a side needs from the runner for one durability phase."""

    tmp: str
    durability: str
    mp: Any  # a multiprocessing context (forkserver)
    redis_port: int | None = None


# -- helpers -------------------------------------------------------------------------------

def _loop(call: Callable[[], int], budget: Budget) -> Sample:
    """Time ``call`` (returns messages moved) until the count or time budget is spent."""
    n = calls = 0
    mono = time.monotonic
    t0 = now_ns()
    deadline = mono() + budget.seconds
    while n < budget.messages:
        moved = call()
        if moved == 0:
            break
        n += moved
        calls += 1
        if mono() >= deadline:
            break
    return Sample(n, (now_ns() - t0) / 1e9, calls)


def run_processes(mp: Any, jobs: list[tuple[Callable[..., None], tuple[Any, ...]]],
                  parties: int, timeout: float = PROC_TIMEOUT) -> list[Any]:
    """Start one process per job (each gets ``barrier, out`` appended); collect their results.

    Children that have not reported by ``timeout`` are terminated; any child
    error fails the whole call with the child's traceback.
    """
    out = mp.Queue()
    barrier = mp.Barrier(parties)
    procs = [mp.Process(target=fn, args=(*args, barrier, out), daemon=True) for fn, args in jobs]
    results: list[Any] = []
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        while len(results) < len(procs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{len(procs) - len(results)} worker process(es) timed out")
            try:
                status, payload = out.get(timeout=min(left, 1.0))
            except _stdqueue.Empty:
                if not any(p.is_alive() for p in procs) and out.empty():
                    raise RuntimeError("worker processes exited without reporting") from None
                continue
            if status != "ok":
                raise RuntimeError(f"worker process failed:\n{payload}")
            results.append(payload)
        return results
    finally:
        for p in procs:
            p.join(timeout=5.0)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
        out.close()


def _windows(results: list[tuple[int, int, int]], workers: int) -> Sample:
    n = sum(r[0] for r in results)
    secs = (max(r[2] for r in results) - min(r[1] for r in results)) / 1e9
    return Sample(n, secs, n, workers=workers)


def run_threads(body: Callable[[Any], tuple[int, int, int]], n: int) -> Sample:
    """Run ``body(barrier)`` in ``n`` threads; aggregate their (count, t0, t1) windows."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(body(barrier))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=target, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PROC_TIMEOUT)
    if errors:
        raise RuntimeError(f"worker thread failed: {errors[0]!r}") from errors[0]
    if len(results) != n:
        raise RuntimeError("worker threads timed out")
    return _windows(results, n)


def _latency_sample(results: list[Any]) -> Sample:
    lat: list[float] = []
    sent, secs = 0, 0.0
    for kind, *rest in results:
        if kind == "consumer":
            lat = sorted(rest[0])
        else:
            sent, secs = rest
    if not sent or len(lat) < sent:
        raise RuntimeError(f"latency consumer received {len(lat)} of {sent} messages")
    return Sample(len(lat), secs, len(lat), p50_us=percentile(lat, 50),
                  p99_us=percentile(lat, 99), p999_us=percentile(lat, 99.9),
                  extra={"max_us": lat[-1]})


def run_latency(mp: Any, system: str, target: dict[str, Any], size: int, rate: float,
                seconds: float) -> Sample:
    """One producer process at ``rate`` for ``seconds`` and one blocked consumer process."""
    count = max(1, int(rate * seconds))
    sent = mp.Value("q", -1, lock=False)
    res = run_processes(mp, [
        (_workers.latency_consumer, (system, target, count, seconds, sent)),
        (_workers.latency_producer, (system, target, size, rate, count, sent)),
    ], parties=2)
    return _latency_sample(res)


def run_beside(mp: Any, system: str, target: dict[str, Any], send: Callable[[], Any],
               budget: Budget) -> Sample:
    """One producer (this process) sending one message at a time beside four group
    consumer processes: 3 members of ``payments`` and 1 of ``analytics``, each polling
    100 and committing/acking what it got.  The sample is the producer's rate; the
    consumers' polls and messages go to ``extra``.
    """
    stop = mp.Event()
    out = mp.Queue()
    barrier = mp.Barrier(5)
    members = [("payments", "p1"), ("payments", "p2"), ("payments", "p3"),
               ("analytics", "a1")]
    procs = [mp.Process(target=_workers.group_consumer,
                        args=(system, target, g, name, stop, barrier, out), daemon=True)
             for g, name in members]
    results: list[Any] = []
    try:
        for p in procs:
            p.start()
        barrier.wait(PROC_TIMEOUT)
        sample = _loop(lambda: (send(), 1)[1], budget)
        stop.set()
        while len(results) < len(procs):
            status, payload = out.get(timeout=PROC_TIMEOUT)
            if status != "ok":
                raise RuntimeError(f"consumer process failed:\n{payload}")
            results.append(payload)
        sample.extra["consumer_polls"] = sum(r[0] for r in results)
        sample.extra["consumer_messages"] = sum(r[1] for r in results)
        return sample
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
        out.close()


# -- mqlite --------------------------------------------------------------------------------

class _Mq(Side):
    """A private broker directory under the run's temp dir, in the phase's durability."""

    label = "mqlite"

    def __init__(self, ctx: Ctx, size: int, budget: Budget, **opts: Any) -> None:
        self.ctx, self.size, self.budget, self.opts = ctx, size, budget, opts
        self.value = make_value(size)
        self.dir = ""
        self.broker: Any = None

    def setup(self) -> None:
        import mqlite

        self.dir = tempfile.mkdtemp(prefix="mqbench-mq-", dir=self.ctx.tmp)
        self.broker = mqlite.open(os.path.join(self.dir, "broker"),
                                  durability=self.ctx.durability)

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()
            self.broker = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def fresh_topic(self, i: int) -> str:
        name = f"t{i}-{uuid.uuid4().hex[:6]}"
        self.broker.create_topic(name)
        return name

    def prefill(self, topic: str, count: int) -> None:
        vals = [self.value] * PREFILL_CHUNK
        for _ in range(0, count, PREFILL_CHUNK):
            self.broker.send_batch(topic, vals)


class MqSend(_Mq):
    label = "mqlite send()"

    def rep(self, i: int) -> Sample:
        topic = self.fresh_topic(i)
        send, v = self.broker.send, self.value
        send(topic, v)

        def one() -> int:
            send(topic, v)
            return 1

        try:
            return _loop(one, self.budget)
        finally:
            self.broker.delete_topic(topic)


class MqSendBatch(_Mq):
    @property
    def label(self) -> str:  # type: ignore[override]
        return f"mqlite send_batch({self.opts['batch']})"

    def rep(self, i: int) -> Sample:
        topic = self.fresh_topic(i)
        vals = [self.value] * self.opts["batch"]
        send_batch = self.broker.send_batch
        send_batch(topic, vals[:1])

        def one() -> int:
            send_batch(topic, vals)
            return len(vals)

        try:
            return _loop(one, self.budget)
        finally:
            self.broker.delete_topic(topic)


class MqConsume(_Mq):
    """Stream-mode group consumer: poll(1000), commit="after", final commit timed."""

    label = "mqlite poll(1000) group"

    def setup(self) -> None:
        super().setup()
        self.topic = self.fresh_topic(0)
        self.prefill(self.topic, self.budget.messages + PREFILL_CHUNK)

    def rep(self, i: int) -> Sample:
        c = self.broker.consumer(self.topic, group=f"g{i}")
        try:
            c.poll(1, timeout=1.0)  # join + first fetch outside the window
            s = _loop(lambda: len(c.poll(1000, timeout=0.5)), self.budget)
            t0 = now_ns()
            c.commit()
            s.seconds += (now_ns() - t0) / 1e9
            return s
        finally:
            c.close()


class MqQueue(_Mq):
    """Queue mode: receive(1000) + queue.ack(deliveries)."""

    label = "mqlite queue receive(1000)+ack"

    def setup(self) -> None:
        super().setup()
        self.topic = self.fresh_topic(0)
        self.prefill(self.topic, self.budget.messages + PREFILL_CHUNK)

    def rep(self, i: int) -> Sample:
        q = self.broker.queue(self.topic, f"q{i}")
        batch = self.opts.get("batch", 1000)
        try:
            q.ack(q.receive(1, timeout=1.0))

            def one() -> int:
                ds = q.receive(batch, timeout=0.5)
                if ds:
                    q.ack(ds)
                return len(ds)

            return _loop(one, self.budget)
        finally:
            q.close()


class MqQueueOne(MqQueue):
    """Peer-comparable queue use: receive(1) + ack per message."""

    label = "mqlite queue receive(1)+ack"

    def __init__(self, ctx: Ctx, size: int, budget: Budget, **opts: Any) -> None:
        super().__init__(ctx, size, budget, batch=1, **opts)


class MqBeside(_Mq):
    """``broker.send()`` per call beside 3 ``payments`` + 1 ``analytics`` group consumers."""

    label = "mqlite send() beside 4 group consumers"

    def rep(self, i: int) -> Sample:
        topic = f"t{i}-{uuid.uuid4().hex[:6]}"
        self.broker.create_topic(topic, partitions=3)
        send, v = self.broker.send, self.value
        send(topic, v)
        target = {"path": self.broker.path, "durability": self.ctx.durability, "topic": topic}
        try:
            return run_beside(self.ctx.mp, "mqlite", target, lambda: send(topic, v),
                              self.budget)
        finally:
            self.broker.delete_topic(topic)


class MqThreads(_Mq):
    """N threads share one broker.producer(linger_ms=0); each waits on its own future."""

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"mqlite producer x{self.opts['n']} threads"

    def rep(self, i: int) -> Sample:
        topic = self.fresh_topic(i)
        n = self.opts["n"]
        producer = self.broker.producer(linger_ms=self.opts.get("linger_ms", 0))
        try:
            def send(v: bytes) -> Any:
                return producer.send(topic, v).result()

            return run_threads(lambda b: _workers.timed_sender(
                send, self.size, self.budget.seconds, self.budget.messages // n, b), n)
        finally:
            producer.close()
            self.broker.delete_topic(topic)


class MqProcesses(_Mq):
    """N processes, each with its own broker handle, each calling broker.send()."""

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"mqlite send() x{self.opts['n']} processes"

    def rep(self, i: int) -> Sample:
        topic = self.fresh_topic(i)
        n = self.opts["n"]
        target = {"path": self.broker.path, "durability": self.ctx.durability, "topic": topic}
        env = self.broker._engine.env
        try:
            txn0 = env.lmdb.info()["last_txnid"]
            res = run_processes(self.ctx.mp, [(_workers.sender_process, (
                "mqlite", target, self.size, self.budget.seconds, self.budget.messages // n))
                for _ in range(n)], parties=n)
            commits = env.lmdb.info()["last_txnid"] - txn0
            sample = _windows(res, n)
            # every LMDB commit of the repetition (the n warm-up sends included)
            sample.extra["msgs_per_commit"] = round((sample.messages + n) / max(commits, 1), 2)
            return sample
        finally:
            self.broker.delete_topic(topic)


class MqLatency(_Mq):
    """Producer process send() at a fixed rate; consumer process blocked in poll()."""

    label = "mqlite send() -> poll() (2 processes)"

    def rep(self, i: int) -> Sample:
        topic = self.fresh_topic(i)
        target = {"path": self.broker.path, "durability": self.ctx.durability, "topic": topic}
        try:
            return run_latency(self.ctx.mp, "mqlite", target, self.size, self.opts["rate"],
                               self.budget.seconds)
        finally:
            self.broker.delete_topic(topic)


# -- Redis Streams -------------------------------------------------------------------------

class _Redis(Side):
    label = "Redis"

    def __init__(self, ctx: Ctx, size: int, budget: Budget, **opts: Any) -> None:
        self.ctx, self.size, self.budget, self.opts = ctx, size, budget, opts
        self.value = make_value(size)
        self.r: Any = None
        self._keys: list[str] = []

    def setup(self) -> None:
        import redis

        if self.ctx.redis_port is None:
            raise RuntimeError("no redis-server in this phase")
        self.r = redis.Redis(host="127.0.0.1", port=self.ctx.redis_port)
        self.r.ping()

    def fresh_key(self, i: int) -> str:
        key = f"s{i}-{uuid.uuid4().hex[:6]}"
        self._keys.append(key)
        return key

    def drop(self, key: str) -> None:
        self.r.delete(key)

    def prefill(self, key: str, count: int) -> None:
        for _ in range(0, count, PREFILL_CHUNK):
            p = self.r.pipeline(transaction=False)
            for _ in range(PREFILL_CHUNK):
                p.execute_command("XADD", key, "*", "v", self.value)
            p.execute()

    def close(self) -> None:
        if self.r is not None:
            try:
                if self._keys:
                    self.r.delete(*self._keys)
            finally:
                self.r.close()
                self.r = None


class RedisSend(_Redis):
    label = "Redis XADD"

    def rep(self, i: int) -> Sample:
        key = self.fresh_key(i)
        xadd, v = self.r.xadd, self.value
        xadd(key, {"v": v})

        def one() -> int:
            xadd(key, {"v": v})
            return 1

        try:
            return _loop(one, self.budget)
        finally:
            self.drop(key)


class RedisPipeline(_Redis):
    @property
    def label(self) -> str:  # type: ignore[override]
        return f"Redis pipelined XADD x{self.opts['batch']}"

    def rep(self, i: int) -> Sample:
        key = self.fresh_key(i)
        batch, v, r = self.opts["batch"], self.value, self.r
        r.xadd(key, {"v": v})

        def one() -> int:
            p = r.pipeline(transaction=False)
            for _ in range(batch):
                p.xadd(key, {"v": v})
            p.execute()
            return batch

        try:
            return _loop(one, self.budget)
        finally:
            self.drop(key)


class RedisGroupRead(_Redis):
    """XREADGROUP COUNT n + XACK of the ids read, on a pre-filled stream, new group per rep."""

    label = "Redis XREADGROUP(1000)+XACK"

    def setup(self) -> None:
        super().setup()
        self.key = self.fresh_key(0)
        self.prefill(self.key, self.budget.messages + PREFILL_CHUNK)

    def rep(self, i: int) -> Sample:
        r, key, group = self.r, self.key, f"g{i}"
        batch = self.opts.get("batch", 1000)
        r.xgroup_create(key, group, id="0")
        try:
            first = r.xreadgroup(group, "c1", {key: ">"}, count=1)
            r.xack(key, group, first[0][1][0][0])

            def one() -> int:
                resp = r.xreadgroup(group, "c1", {key: ">"}, count=batch)
                if not resp or not resp[0][1]:
                    return 0
                entries = resp[0][1]
                r.xack(key, group, *[e[0] for e in entries])
                return len(entries)

            return _loop(one, self.budget)
        finally:
            r.xgroup_destroy(key, group)


class RedisThreads(_Redis):
    """N threads, each with its own connection, each XADD and wait for the reply."""

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"Redis XADD x{self.opts['n']} threads"

    def rep(self, i: int) -> Sample:
        import redis

        key = self.fresh_key(i)
        n = self.opts["n"]
        port = self.ctx.redis_port
        assert port is not None  # setup() refused a phase without redis-server

        def body(barrier: Any) -> tuple[int, int, int]:
            c = redis.Redis(host="127.0.0.1", port=port)
            try:
                return _workers.timed_sender(lambda v: c.xadd(key, {"v": v}), self.size,
                                             self.budget.seconds, self.budget.messages // n,
                                             barrier)
            finally:
                c.close()

        try:
            return run_threads(body, n)
        finally:
            self.drop(key)


class RedisProcesses(_Redis):
    @property
    def label(self) -> str:  # type: ignore[override]
        return f"Redis XADD x{self.opts['n']} processes"

    def rep(self, i: int) -> Sample:
        key = self.fresh_key(i)
        n = self.opts["n"]
        target = {"port": self.ctx.redis_port, "key": key}
        try:
            res = run_processes(self.ctx.mp, [(_workers.sender_process, (
                "redis", target, self.size, self.budget.seconds, self.budget.messages // n))
                for _ in range(n)], parties=n)
            return _windows(res, n)
        finally:
            self.drop(key)


class RedisBeside(_Redis):
    label = "Redis XADD beside 4 XREADGROUP+XACK consumers"

    def rep(self, i: int) -> Sample:
        key = self.fresh_key(i)
        for g in ("payments", "analytics"):
            self.r.xgroup_create(key, g, id="$", mkstream=True)
        xadd, v = self.r.xadd, self.value
        target = {"port": self.ctx.redis_port, "key": key}
        try:
            return run_beside(self.ctx.mp, "redis", target, lambda: xadd(key, {"v": v}),
                              self.budget)
        finally:
            self.drop(key)


class RedisLatency(_Redis):
    label = "Redis XADD -> XREADGROUP BLOCK (2 processes)"

    def rep(self, i: int) -> Sample:
        key = self.fresh_key(i)
        self.r.xgroup_create(key, "latency", id="$", mkstream=True)
        target = {"port": self.ctx.redis_port, "key": key}
        try:
            return run_latency(self.ctx.mp, "redis", target, self.size, self.opts["rate"],
                               self.budget.seconds)
        finally:
            self.drop(key)


# -- embedded peers ------------------------------------------------------------------------

class _Peer(Side):
    """A peer queue in a private temp directory; ``get`` rows keep it topped up (untimed)."""

    module = ""

    def __init__(self, ctx: Ctx, size: int, budget: Budget, **opts: Any) -> None:
        self.ctx, self.size, self.budget, self.opts = ctx, size, budget, opts
        self.value = make_value(size)
        self.dir = ""
        self.q: Any = None
        self.queued = 0

    def setup(self) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"mqbench-{self.module}-", dir=self.ctx.tmp)
        self.q = self.open()

    def open(self) -> Any:
        raise NotImplementedError

    def put(self) -> None:
        raise NotImplementedError

    def get_ack(self) -> int:
        raise NotImplementedError

    def top_up(self) -> None:
        while self.queued < self.budget.messages:
            self.put()
            self.queued += 1

    def rep(self, i: int) -> Sample:
        if self.opts["op"] == "put":
            def one() -> int:
                self.put()
                return 1

            return _loop(one, self.budget)
        self.top_up()
        s = _loop(self.get_ack, self.budget)
        self.queued -= s.messages
        return s

    def close(self) -> None:
        q, self.q = self.q, None
        if q is not None and hasattr(q, "close"):
            try:
                q.close()
            except Exception:  # noqa: BLE001, S110 - best effort; the directory goes anyway
                pass
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class PersistQueueSide(_Peer):
    """persist-queue SQLiteAckQueue (SQLite WAL, synchronous=FULL by default)."""

    module = "persistqueue"

    @property
    def label(self) -> str:  # type: ignore[override]
        return "persist-queue SQLiteAckQueue " + ("put" if self.opts["op"] == "put" else
                                                  "get+ack")

    def open(self) -> Any:
        from persistqueue import SQLiteAckQueue

        return SQLiteAckQueue(os.path.join(self.dir, "q"), auto_commit=True)

    def put(self) -> None:
        self.q.put(self.value)

    def get_ack(self) -> int:
        from persistqueue import Empty

        try:
            item = self.q.get(block=False)
        except Empty:
            return 0
        self.q.ack(item)
        return 1


class LiteQueueSide(_Peer):
    """litequeue LiteQueue (SQLite WAL, synchronous=NORMAL); values are str (TEXT column)."""

    module = "litequeue"

    @property
    def label(self) -> str:  # type: ignore[override]
        return "litequeue " + ("put" if self.opts["op"] == "put" else "pop+done")

    def open(self) -> Any:
        from litequeue import LiteQueue

        self.text = "x" * self.size
        return LiteQueue(os.path.join(self.dir, "q.sqlite3"))

    def put(self) -> None:
        self.q.put(self.text)

    def get_ack(self) -> int:
        msg = self.q.pop()
        if msg is None:
            return 0
        self.q.done(msg.message_id)
        return 1


#: Every side is built as ``cls(ctx, size, budget, **opts)`` (the base class takes no arguments).
SIDES: dict[str, Callable[..., Side]] = {
    "mq_send": MqSend, "mq_send_batch": MqSendBatch, "mq_consume": MqConsume,
    "mq_queue": MqQueue, "mq_queue_one": MqQueueOne, "mq_threads": MqThreads,
    "mq_procs": MqProcesses, "mq_latency": MqLatency, "mq_beside": MqBeside,
    "redis_send": RedisSend, "redis_pipeline": RedisPipeline, "redis_group": RedisGroupRead,
    "redis_threads": RedisThreads, "redis_procs": RedisProcesses, "redis_latency": RedisLatency,
    "redis_beside": RedisBeside,
    "persistqueue": PersistQueueSide, "litequeue": LiteQueueSide,
}
