"""Bodies of the producer and consumer threads/processes of the multi-worker rows.

Kept in one small module that the forkserver preloads (with ``mqlite`` and
``redis``), so a worker process starts in milliseconds and shares nothing
with the runner but its arguments.  Every worker loop is bounded by a
message count and a deadline; results go back through a queue.

Workers synchronise on a barrier before their timed loop, so process start-up
is never timed.  Each reports ``(messages, t_start_ns, t_end_ns)`` (or its
latency list), and the runner divides by the union of the windows.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any, cast

import redis

import mqlite
from benchmarks._common import make_value, now_ns, read_stamp, stamp_value
from benchmarks._redis import XReadReply

__all__ = [
    "group_consumer",
    "latency_consumer",
    "latency_producer",
    "make_sender",
    "sender_process",
    "timed_sender",
]

BARRIER_TIMEOUT = 60.0
MAX_OVERRUN = 10.0  # seconds a latency producer may run past its schedule


def make_sender(system: str, target: dict[str, Any]) -> tuple[Callable[[bytes], Any], Callable[[], None]]:
    """A ``send(value)`` that returns once the message is acknowledged, and a closer.

    ``target`` for mqlite: ``path``, ``durability``, ``topic``; for redis:
    ``port``, ``key``.
    """
    if system == "mqlite":
        broker = mqlite.open(target["path"], durability=target["durability"])
        topic = target["topic"]

        def send_mq(v: bytes) -> Any:
            return broker.send(topic, v)

        return send_mq, broker.close
    r = redis.Redis(host="127.0.0.1", port=target["port"])
    key = target["key"]

    def send_redis(v: bytes) -> Any:
        return r.xadd(key, {"v": v})

    return send_redis, r.close


def timed_sender(send: Callable[[bytes], Any], size: int, seconds: float, max_messages: int,
                 barrier: Any) -> tuple[int, int, int]:
    """Warm up, wait at ``barrier``, then send until the count or the deadline."""
    value = make_value(size)
    send(value)  # connection set-up and first-touch costs stay out of the window
    barrier.wait(BARRIER_TIMEOUT)
    t0 = now_ns()
    deadline = time.monotonic() + seconds
    n = 0
    mono = time.monotonic
    while n < max_messages:
        send(value)
        n += 1
        if mono() >= deadline:
            break
    return n, t0, now_ns()


def sender_process(system: str, target: dict[str, Any], size: int, seconds: float,
                   max_messages: int, barrier: Any, out: Any) -> None:
    """Process body: one sender (own broker handle or own Redis connection)."""
    try:
        send, close = make_sender(system, target)
        try:
            out.put(("ok", timed_sender(send, size, seconds, max_messages, barrier)))
        finally:
            close()
    except BaseException:  # noqa: BLE001 - reported to the runner, which fails the row
        barrier.abort()
        out.put(("error", traceback.format_exc()))


def latency_producer(system: str, target: dict[str, Any], size: int, rate: float, count: int,
                     sent: Any, barrier: Any, out: Any) -> None:
    """Send up to ``count`` stamped messages at ``rate`` per second, then publish how many.

    The schedule is fixed (a late message goes out at once, the next keeps its
    slot).  When sends are slower than the rate (a slow disk under fsync) the
    producer stops at ``count / rate + MAX_OVERRUN`` seconds, so the loop is
    bounded; the achieved rate is reported.
    """
    try:
        send, close = make_sender(system, target)
        pad = make_value(size)
        n = 0
        try:
            barrier.wait(BARRIER_TIMEOUT)
            t0 = time.monotonic()
            stop = t0 + count / rate + MAX_OVERRUN
            interval = 1.0 / rate
            for i in range(count):
                now = time.monotonic()
                if now >= stop:
                    break
                delay = t0 + i * interval - now
                if delay > 0:
                    time.sleep(delay)
                send(stamp_value(size, pad))
                n += 1
            elapsed = time.monotonic() - t0
        finally:
            sent.value = n
            close()
        out.put(("ok", ("producer", n, elapsed)))
    except BaseException:  # noqa: BLE001
        sent.value = 0
        barrier.abort()
        out.put(("error", traceback.format_exc()))


def latency_consumer(system: str, target: dict[str, Any], count: int, seconds: float,
                     sent: Any, barrier: Any, out: Any) -> None:
    """Block in poll()/XREADGROUP BLOCK; record receive time - send stamp per message (µs).

    Stops when it has every message the producer sent (``sent`` is -1 until
    the producer is done) or at a hard deadline.
    """
    try:
        lat: list[float] = []
        deadline_pad = MAX_OVERRUN + 5.0

        def more() -> bool:
            total = sent.value
            return len(lat) < (count if total < 0 else total)
        if system == "mqlite":
            broker = mqlite.open(target["path"], durability=target["durability"])
            consumer = broker.consumer(target["topic"], group="latency")
            consumer.poll(1000, timeout=0.01)  # join the group before the clock starts
            try:
                barrier.wait(BARRIER_TIMEOUT)
                deadline = time.monotonic() + seconds + deadline_pad
                while more() and time.monotonic() < deadline:
                    msgs = consumer.poll(1000, timeout=0.2)
                    t = now_ns()
                    for m in msgs:
                        assert m.value is not None  # every record here carries a stamp
                        lat.append((t - read_stamp(m.value)) / 1000.0)
                consumer.commit()
            finally:
                consumer.close()
                broker.close()
        else:
            r = redis.Redis(host="127.0.0.1", port=target["port"])
            key, group = target["key"], "latency"
            try:
                barrier.wait(BARRIER_TIMEOUT)
                deadline = time.monotonic() + seconds + deadline_pad
                while more() and time.monotonic() < deadline:
                    resp = cast(XReadReply, r.xreadgroup(group, "c1", {key: ">"}, count=1000,
                                                         block=200))
                    t = now_ns()
                    if not resp:
                        continue
                    entries = resp[0][1]
                    for _id, fields in entries:
                        lat.append((t - read_stamp(fields[b"v"])) / 1000.0)
                    r.xack(key, group, *[e[0] for e in entries])
            finally:
                r.close()
        out.put(("ok", ("consumer", lat)))
    except BaseException:  # noqa: BLE001
        barrier.abort()
        out.put(("error", traceback.format_exc()))


def group_consumer(system: str, target: dict[str, Any], group: str, name: str, stop: Any,
                   barrier: Any, out: Any) -> None:
    """A group member that polls 100 and commits what it got, until ``stop`` is set.

    mqlite: ``consumer.poll(100)`` then ``commit()`` when it got messages; Redis:
    ``XREADGROUP COUNT 100 BLOCK`` then ``XACK`` of what it read.  Reports
    ``(polls, messages)``.  The "beside consumers" rows run the producer next to
    four of these (3 in one group, 1 in another).
    """
    try:
        polls = got = 0
        if system == "mqlite":
            broker = mqlite.open(target["path"], durability=target["durability"])
            consumer = broker.consumer(target["topic"], group=group, commit="manual")
            consumer.poll(100, timeout=0.01)  # join before the clock starts
            try:
                barrier.wait(BARRIER_TIMEOUT)
                while not stop.is_set():
                    msgs = consumer.poll(100, timeout=0.05)
                    polls += 1
                    if msgs:
                        got += len(msgs)
                        consumer.commit()
            finally:
                consumer.close()
                broker.close()
        else:
            r = redis.Redis(host="127.0.0.1", port=target["port"])
            key = target["key"]
            try:
                barrier.wait(BARRIER_TIMEOUT)
                while not stop.is_set():
                    resp = cast(XReadReply, r.xreadgroup(group, name, {key: ">"}, count=100,
                                                         block=50))
                    polls += 1
                    if resp:
                        ids = [e[0] for e in resp[0][1]]
                        got += len(ids)
                        r.xack(key, group, *ids)
            finally:
                r.close()
        out.put(("ok", (polls, got)))
    except BaseException:  # noqa: BLE001 - reported to the runner, which fails the row
        barrier.abort()
        out.put(("error", traceback.format_exc()))
