"""D67: a queue's receivers wait on the queue's own wake-up word and are woken one at a time.

Every append to the topic (and every change that makes a queue message receivable) wakes
one thread asleep in ``receive``; a receiver that leaves messages behind (it stopped at
``max_messages``) wakes the next.  So N idle workers cost one wake-up per message, not N,
and no message is left waiting while a worker sleeps.

"Woken" is judged against the receive's timeout (``WAIT_S``): within ``WOKEN_S``, a third
of it, as in tests/integration/test_wakeup.py.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mqlite

#: The topics the ``broker`` fixture creates (tests/unit/conftest.py).
BROKER_TOPICS = {"jobs": 2}
WAIT_S = 30.0
WOKEN_S = 10.0


def _workers(broker: Any, n: int, hold: threading.Barrier | None,
             got: list[tuple[int, bytes]], errors: list[BaseException]) -> list[threading.Thread]:
    """``n`` threads, each with its own queue consumer: receive one, (wait at ``hold``), ack."""
    ready = threading.Barrier(n + 1, timeout=WAIT_S)

    def work(i: int) -> None:
        try:
            q = broker.queue("jobs", "w")
            q.receive(1, timeout=0.01)  # joined, and the queue looked idle once
            ready.wait()
            t0 = time.monotonic()
            ds = q.receive(1, timeout=WAIT_S)
            took = time.monotonic() - t0
            if ds:
                got.append((i, ds[0].value))
                assert took < WOKEN_S, f"worker {i} woken after {took:.1f} s"
                if hold is not None:
                    hold.wait()  # every worker must hold one message at once
                ds[0].ack()
            q.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    ready.wait()
    return ts


def test_each_message_wakes_a_waiting_worker(broker: Any) -> None:
    got: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []
    ts = _workers(broker, 4, None, got, errors)
    for i in range(4):
        broker.send("jobs", b"m%d" % i)
    for t in ts:
        t.join(WAIT_S + 10)
    assert not errors, errors
    assert sorted(v for _, v in got) == [b"m0", b"m1", b"m2", b"m3"]
    assert len({i for i, _ in got}) == 4  # one each: nobody took two


def _busy_queue(broker: Any) -> Any:
    """A message in flight (held by another consumer) with the earliest visibility
    deadline: new deliveries do not move it, so they wake nobody on their own."""
    holder = broker.queue("jobs", "w", visibility_timeout=20.0)  # < the workers' 30 s
    broker.send("jobs", b"held")
    assert [d.value for d in holder.receive(1, timeout=WAIT_S)] == [b"held"]
    return holder


def test_a_worker_that_leaves_messages_behind_wakes_the_next(broker: Any) -> None:
    """Three messages in one commit wake one worker; each worker takes one and holds it
    until all three hold one: only the chain of wake-ups gets the other two going."""
    holder = _busy_queue(broker)
    got: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []
    hold = threading.Barrier(3, timeout=WOKEN_S)
    ts = _workers(broker, 3, hold, got, errors)
    broker.send_batch("jobs", [b"a", b"b", b"c"], partition=0)
    for t in ts:
        t.join(WAIT_S + 10)
    assert not errors, errors
    assert sorted(v for _, v in got) == [b"a", b"b", b"c"]
    holder.close()


def test_a_nacked_message_wakes_a_waiting_worker(broker: Any) -> None:
    q = broker.queue("jobs", "w")
    broker.send("jobs", b"retry-me")
    [d] = q.receive(1, timeout=WAIT_S)
    got: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []
    ts = _workers(broker, 1, None, got, errors)
    d.nack(delay=0)
    for t in ts:
        t.join(WAIT_S + 10)
    assert not errors, errors
    assert [v for _, v in got] == [b"retry-me"]
    q.close()


def test_deleting_the_topic_wakes_every_waiting_worker(broker: Any) -> None:
    outcomes: list[tuple[str, float]] = []
    ready = threading.Barrier(4, timeout=WAIT_S)

    def work() -> None:
        q = broker.queue("jobs", "w")
        q.receive(1, timeout=0.01)
        ready.wait()
        t0 = time.monotonic()
        try:
            q.receive(1, timeout=WAIT_S)
            outcomes.append(("returned", time.monotonic() - t0))
        except mqlite.MqliteError as exc:
            outcomes.append((type(exc).__name__, time.monotonic() - t0))

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    ready.wait()
    broker.delete_topic("jobs")
    for t in ts:
        t.join(WAIT_S + 10)
    assert len(outcomes) == 3
    assert all(took < WOKEN_S for _, took in outcomes), outcomes


def _process_worker(path: str, ready: Any, hold: Any, out: Any) -> None:
    with mqlite.open(path, durability="none") as b:
        q = b.queue("jobs", "w")
        q.receive(1, timeout=0.01)
        ready.wait(WAIT_S)
        t0 = time.monotonic()
        ds = q.receive(1, timeout=WAIT_S)
        took = time.monotonic() - t0
        held = False
        if ds:
            try:
                hold.wait(WOKEN_S)  # all three processes hold one message at once
                held = True
            except threading.BrokenBarrierError:
                pass
            ds[0].ack()
        out.put(([d.value for d in ds], took, held))
        q.close()


def test_workers_in_other_processes_wake_one_another(broker: Any,
                                                    tmp_broker_dir: Path) -> None:
    ctx = mp.get_context("spawn")
    holder = _busy_queue(broker)
    ready, hold, out = ctx.Barrier(4), ctx.Barrier(3), ctx.Queue()
    ps = [ctx.Process(target=_process_worker, args=(str(tmp_broker_dir), ready, hold, out))
          for _ in range(3)]
    for p in ps:
        p.start()
    try:
        ready.wait(60)
        broker.send_batch("jobs", [b"a", b"b", b"c"], partition=1)
        res = [out.get(timeout=WAIT_S + 30) for _ in ps]
    finally:
        for p in ps:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert sorted(v for r in res for v in r[0]) == [b"a", b"b", b"c"]
    assert all(r[2] for r in res), res  # each held one while the others did
    assert all(r[1] < WOKEN_S for r in res), res
    holder.close()


@pytest.mark.parametrize("durability", ["none", "sync"])
def test_an_ack_wakes_nobody(open_broker: Callable[..., Any], durability: str) -> None:
    """An ack makes nothing receivable (mqlite has no per-key ordering or in-flight
    limit that an ack would release), so it bumps neither word a queue receiver may
    wait on, the global word neither (D70's check of D69's remark); one delivery at a
    time (``Delivery.ack``) and several in one call, alone and (``sync``) through the
    commit ring."""
    b = open_broker(durability=durability)
    b.create_topic("jobs")
    q = b.queue("jobs", "w")
    env = b._engine.live_env()
    n = b.notifier
    words = (q._slot, env.topic_slot("jobs"), 0)
    b.send_batch("jobs", [b"a", b"b", b"c"])
    ds = q.receive(3, timeout=WAIT_S)
    assert len(ds) == 3
    before = [n.load(w) for w in words]
    ds[0].ack()
    assert q.ack(ds[1:]) == 2
    assert [n.load(w) for w in words] == before
    q.close()
