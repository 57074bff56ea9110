"""Lifecycles: broker.close() closes its children in order; wakeup()/close() end blocked waits.

Threads synchronise on the consumer's own bookkeeping (a poll has entered)
or on events, never on sleeps.  Latencies are asserted with generous bounds
(a 30 s wait must end in well under a second); the measured figures are in
``benchmarks/wakeup_latency.py``.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import mqlite

# seconds: a 30 s wait that a wake-up ends must return well within this; not tighter, as
# a loaded machine schedules the waking thread late (it measures the wake-up, not the box)
PROMPT = 5.0


def _when_inside(obj: Any, fn: Callable[[], Any]) -> threading.Thread:
    """Run ``fn`` in a thread as soon as some thread is inside a call of ``obj``."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while not obj._life._users:  # the guard's record of callers: no sleep needed
            if time.monotonic() > deadline:
                raise AssertionError("the call never started")
            time.sleep(0)  # yield the GIL to the polling thread
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


# -- broker.close() closes what it created ------------------------------------------------

def test_close_with_open_producer_stores_every_send_100_runs(run_python, tmp_path):
    # The loop runs in a child with a watchdog: a hang fails the test (with
    # every thread's stack on stderr) instead of hanging CI.
    code = textwrap.dedent("""
        import faulthandler, json, sys, tempfile, mqlite
        faulthandler.dump_traceback_later(100, exit=True)
        stored = []
        for i in range(int(sys.argv[1])):
            d = tempfile.mkdtemp(dir=sys.argv[2])
            b = mqlite.open(d)
            b.create_topic("t")
            p = b.producer()
            for k in range(5000):
                p.send("t", b"%d" % k)   # fire-and-forget: no flush, no result()
            b.close()
            with mqlite.open(d) as b2:
                stored.append(b2.describe_topic("t").partitions[0].end_offset)
        print(json.dumps(stored))
    """)
    tmp_path.chmod(0o700)
    proc = run_python(code, "100", str(tmp_path), timeout=110)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [5000] * 100


def test_close_closes_children_in_order_and_is_idempotent(open_broker):
    b = open_broker(durability="none")
    b.create_topic("t", partitions=2)
    p = b.producer(linger_ms=60_000)  # nothing commits until something flushes
    futs = [p.send("t", b"%d" % i) for i in range(100)]
    c = b.consumer("t", group="g")
    q = b.queue("t", "qg", visibility_timeout=300)
    b.close()
    assert all(f.done() and f.exception() is None for f in futs)
    assert p.closed and c.closed and q.closed and b.closed
    b.close()  # idempotent
    with pytest.raises(mqlite.ClosedError):
        b.producer()
    with pytest.raises(mqlite.ClosedError):
        p.send("t", b"late")
    b2 = open_broker(durability="none")
    assert sum(x.end_offset for x in b2.describe_topic("t").partitions) == 100
    assert b2.describe_group("g").members == []


def test_leaving_with_block_releases_queue_holds(open_broker, tmp_broker_dir):
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        b.send_batch("t", [b"a", b"b"])
        q = b.queue("t", "g", visibility_timeout=300)
        assert len(q.receive(10, timeout=0)) == 2  # held for 300 s unless released
    b2 = open_broker(durability="none")
    q2 = b2.queue("t", "g")
    got = q2.receive(10, timeout=0)
    assert [d.delivery_count for d in got] == [2, 2]


def test_queue_whose_broker_closes_while_it_starts_leaves_no_lock_file(open_broker,
                                                                       tmp_broker_dir,
                                                                       monkeypatch):
    """The broker closes between the queue's join and its adoption: the queue closes itself
    with the engine already closed, and still removes its lock file."""
    b = open_broker(durability="none")
    b.create_topic("t")
    engine_type = type(b._engine)
    adopt = engine_type.adopt

    def close_then_adopt(self: Any, child: Any) -> None:
        b.close()
        adopt(self, child)  # raises ClosedError: the handle is closed

    monkeypatch.setattr(engine_type, "adopt", close_then_adopt)
    with pytest.raises(mqlite.ClosedError):
        b.queue("t", "g")
    assert b._engine.closed
    assert os.listdir(tmp_broker_dir / "members") == []


def test_close_ends_a_poll_blocked_in_another_thread(broker):
    broker.create_topic("t")
    c = broker.consumer("t", group="g")
    t = _when_inside(c, broker.close)
    out, took = _timed(lambda: c.poll(timeout=30))
    t.join(30)
    assert out == [] and took < PROMPT
    assert c.closed and broker.closed


# -- wakeup() --------------------------------------------------------------------------------

@pytest.mark.parametrize("group", [None, "g"])
def test_wakeup_from_another_thread_ends_a_blocked_poll(broker, group):
    broker.create_topic("t")
    broker.create_topic("u")
    c = broker.consumer(["t", "u"], group=group)
    for _ in range(50):  # each round races the wake-up against entering the wait
        t = _when_inside(c, c.wakeup)
        out, took = _timed(lambda: c.poll(timeout=30))
        t.join(30)
        assert out == [] and took < PROMPT
    broker.send("t", b"m")
    assert [m.value for m in c.poll(timeout=30)] == [b"m"]  # still usable afterwards


def test_wakeup_with_no_poll_running_makes_the_next_poll_return_once(broker):
    broker.create_topic("t")
    c = broker.consumer("t")
    c.wakeup()
    out, took = _timed(lambda: c.poll(timeout=30))
    assert out == [] and took < PROMPT
    out, took = _timed(lambda: c.poll(timeout=0.2))
    assert out == [] and took >= 0.15  # the next poll blocks normally


def test_wakeup_still_returns_available_messages(broker):
    broker.create_topic("t")
    broker.send("t", b"x")
    c = broker.consumer("t")
    c.wakeup()
    assert [m.value for m in c.poll(timeout=30)] == [b"x"]


def test_queue_wakeup_and_close_end_a_blocked_receive(broker):
    broker.create_topic("t")
    q = broker.queue("t", "g")
    for _ in range(20):
        t = _when_inside(q, q.wakeup)
        out, took = _timed(lambda: q.receive(timeout=30))
        t.join(30)
        assert out == [] and took < PROMPT
    q.wakeup()
    assert q.receive(timeout=30) == []
    broker.send("t", b"x")
    d = q.receive(timeout=30)
    assert [x.value for x in d] == [b"x"]
    d[0].ack()
    t = _when_inside(q, q.close)
    out, took = _timed(lambda: q.receive(timeout=30))
    t.join(30)
    assert out == [] and took < PROMPT and q.closed
    with pytest.raises(mqlite.ClosedError):
        q.receive(timeout=0)


# -- close() from a signal handler -----------------------------------------------------------

def _signal_close_rounds(make: Callable[[], Any], call: Callable[[Any], list[Any]],
                         rounds: int, seed: int) -> list[Any]:
    """Each round, a thread signals the main thread at a random point around ``call``;
    the handler closes the object: before the call (which then raises ClosedError),
    inside it (anywhere, including inside a write transaction) or after it."""
    import random

    rng = random.Random(seed)
    print("seed", seed)
    got: list[Any] = []
    main = threading.main_thread().ident
    assert main is not None and threading.current_thread() is threading.main_thread()
    target: list[Any] = []
    handled: list[bool] = []  # not an Event: Event.set() in a handler can race Event.wait()

    def handler(*_: object) -> None:
        target[0].close()
        handled.append(True)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        for _ in range(rounds):
            obj = make()
            target[:] = [obj]
            handled.clear()
            spins = rng.randrange(0, 40)

            def fire(spins: int = spins) -> None:
                for _ in range(spins):
                    time.sleep(0)  # jitter: hand the GIL to the main thread a few times
                signal.pthread_kill(main, signal.SIGUSR1)

            t = threading.Thread(target=fire, daemon=True)
            t.start()
            t0 = time.monotonic()
            try:
                out = call(obj)
            except mqlite.ClosedError:
                out = []  # the handler ran before the call started
            took = time.monotonic() - t0
            t.join(30)  # the signal is pending or handled once the sender finished
            deadline = time.monotonic() + 30
            while not handled and time.monotonic() < deadline:
                time.sleep(0)  # Python runs a pending handler at the next bytecode check
            assert handled
            assert took < PROMPT + 1
            got.extend(out)
            assert obj.closed
    finally:
        signal.signal(signal.SIGUSR1, old)
    return got


def test_close_from_a_signal_handler_during_poll_loses_nothing(broker):
    n = 400
    broker.create_topic("t")
    broker.send_batch("t", [b"%d" % i for i in range(n)])
    got = _signal_close_rounds(
        lambda: broker.consumer("t", group="g", max_poll_records=7),
        lambda c: c.poll(timeout=30), rounds=40, seed=int.from_bytes(os.urandom(4), "big"))
    # Every message some poll returned was committed by that consumer's close; a poll
    # that the close interrupted handed nothing out and committed nothing more.
    rest = broker.consumer("t", group="g").poll(max_records=n, timeout=0)
    values = sorted(int(m.value) for m in [*got, *rest])
    assert values == list(range(n))


def test_close_from_a_signal_handler_during_receive(broker):
    n = 200
    broker.create_topic("t")
    broker.send_batch("t", [b"%d" % i for i in range(n)])
    got = _signal_close_rounds(
        lambda: broker.queue("t", "g", visibility_timeout=300),
        lambda q: q.receive(5, timeout=30), rounds=30,
        seed=int.from_bytes(os.urandom(4), "big"))
    # Nothing was acked and every closed queue consumer released what it held, so
    # every message is receivable again at once (despite the 300 s visibility timeout).
    q = broker.queue("t", "g")
    seen = sorted(int(d.value) for d in q.receive(n, timeout=0))
    assert seen == list(range(n))
    assert len(got) <= n


def test_broker_close_from_a_signal_handler_during_poll(broker):
    broker.create_topic("t")
    c = broker.consumer("t", group="g")
    main = threading.main_thread().ident
    assert main is not None
    old = signal.signal(signal.SIGUSR1, lambda *_: broker.close())
    try:
        t = _when_inside(c, lambda: signal.pthread_kill(main, signal.SIGUSR1))
        out, took = _timed(lambda: c.poll(timeout=30))
        t.join(30)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert out == [] and took < PROMPT
    assert c.closed and broker.closed


# -- threads ------------------------------------------------------------------------------

def test_a_second_thread_using_a_consumer_gets_concurrent_access_error(broker):
    broker.create_topic("t")
    c = broker.consumer("t")
    errors: list[BaseException] = []

    def intruder() -> None:
        try:
            c.poll(timeout=0)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)
        c.wakeup()

    t = _when_inside(c, intruder)
    assert c.poll(timeout=30) == []
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], mqlite.ConcurrentAccessError)
    assert "one consumer per thread" in str(errors[0])
    assert isinstance(errors[0], mqlite.MqliteError)


def test_a_consumer_shared_by_four_threads_never_duplicates(broker):
    n = 20_000
    broker.create_topic("t")
    broker.send_batch("t", [b"%d" % i for i in range(n)])
    c = broker.consumer("t", max_poll_records=100)
    got: list[list[bytes]] = [[] for _ in range(4)]
    refused = [0] * 4

    def work(i: int) -> None:
        while True:
            try:
                msgs = c.poll(timeout=0)
            except mqlite.ConcurrentAccessError:
                refused[i] += 1
                continue
            if not msgs:
                return
            got[i].extend(m.value for m in msgs)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    values = [v for g in got for v in g]
    assert len(values) == n and len(set(values)) == n


def test_callbacks_may_call_back_into_the_consumer_on_the_same_thread(broker):
    broker.create_topic("t")
    broker.send("t", b"x")
    seen: list[Any] = []
    c: mqlite.Consumer
    c = broker.consumer(None, group="g",
                        on_assign=lambda tps: seen.append(c.position(tps[0])))
    c.subscribe("t")
    assert [m.value for m in c.poll(timeout=30)] == [b"x"]
    assert seen == [0]


def test_leaving_the_with_block_ends_polls_and_receives_in_worker_threads(tmp_broker_dir):
    results: dict[str, Any] = {}
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        c = b.consumer("t", group="g")
        q = b.queue("t", "qg")

        def run(name: str, obj: Any, call: Callable[[], Any]) -> None:
            t0 = time.monotonic()
            try:
                results[name] = (call(), time.monotonic() - t0)
            except BaseException as exc:  # noqa: BLE001 - inspected below
                results[name] = (exc, time.monotonic() - t0)

        ts = [threading.Thread(target=run, args=("poll", c, lambda: c.poll(timeout=30))),
              threading.Thread(target=run, args=("receive", q, lambda: q.receive(timeout=30)))]
        for t in ts:
            t.start()
        for obj in (c, q):
            while not obj._life._users:  # both calls have started
                time.sleep(0)
    for t in ts:
        t.join(30)
    assert results["poll"][0] == [] and results["poll"][1] < PROMPT
    assert results["receive"][0] == [] and results["receive"][1] < PROMPT
    assert c.closed and q.closed


def test_signal_close_of_a_queue_also_ends_receives_in_other_threads(broker):
    broker.create_topic("t")
    q = broker.queue("t", "g")
    main = threading.main_thread().ident
    assert main is not None
    other: list[Any] = []

    def worker() -> None:
        other.append(_timed(lambda: q.receive(timeout=30)))

    w = threading.Thread(target=worker)
    w.start()
    while not q._life._users:
        time.sleep(0)
    old = signal.signal(signal.SIGUSR1, lambda *_: q.close())
    try:
        # fire once both receives are inside (the worker's and this thread's)
        def fire() -> None:
            while len(q._life._users) < 2:
                time.sleep(0)
            signal.pthread_kill(main, signal.SIGUSR1)

        t = threading.Thread(target=fire)
        t.start()
        out, took = _timed(lambda: q.receive(timeout=30))
        t.join(30)
        w.join(30)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert out == [] and took < PROMPT
    assert other and other[0][0] == [] and other[0][1] < PROMPT + took
    assert q.closed
