"""``mqlite.App("kafka://...")``: the same handlers on the Kafka backend."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import msgspec
import pytest
from _polling import wait_until
from _values import value

pytest.importorskip("confluent_kafka")

import mqlite
from mqlite import TopicPartition as TP

TIMEOUT = 120.0


def _read(b: Any, topic: str, n: int, timeout: float = TIMEOUT) -> list[mqlite.Message]:
    """Every message of ``topic`` once there are ``n`` (blocking polls, read_committed)."""
    c = b.consumer(None)
    c.assign([TP(topic, p) for p in range(b.partitions_for(topic))])
    out: list[mqlite.Message] = []
    end = time.monotonic() + timeout
    try:
        while len(out) < n:
            assert time.monotonic() < end, f"{topic}: {len(out)} of {n} messages"
            out += c.poll(1000, timeout=1.0)
    finally:
        c.close()
    return out


def test_handlers_run_unchanged_exactly_once_retries_dead_letters(kafka_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    orders, paid, dlq = f"orders-{tag}", f"paid-{tag}", f"orders-{tag}.dlq"
    app = mqlite.App(kafka_url, name="pay", partitions=3)
    attempts: Counter[int] = Counter()
    seen_by_analytics: list[int] = []

    @app.subscriber(orders, group=f"payments-{tag}", exactly_once=True,
                    idempotency_key=lambda o: str(o["id"]), retries=2,
                    backoff=mqlite.Backoff.exponential(base=0.01, cap=0.05),
                    dead_letter=dlq, concurrency=2)
    @app.publisher(paid)
    def pay(order: dict, ctx: mqlite.Context) -> dict:
        attempts[order["id"]] += 1
        if order["id"] % 10 == 3:
            raise mqlite.Reject("card declined")
        if order["id"] % 10 == 5 and ctx.attempt == 1:
            raise ConnectionError("card processor timed out")
        return {"id": order["id"], "attempt": ctx.attempt}

    @app.subscriber(orders, group=f"analytics-{tag}")
    def count(order: dict) -> None:
        seen_by_analytics.append(order["id"])

    n = 60
    with app:
        assert app.wait_ready(TIMEOUT)
        for i in range(n):
            app.publish(orders, {"id": i}, key=f"user-{i % 7}")
        with mqlite.open(kafka_url, client_options={"log_level": 3}) as b:
            out = [msgspec.json.decode(value(m)) for m in _read(b, paid, n - n // 10)]
            dead = _read(b, dlq, n // 10)
            wait_until(lambda: len(seen_by_analytics) >= n, TIMEOUT, "analytics saw every order")
    assert sorted(o["id"] for o in out) == [i for i in range(n) if i % 10 != 3]
    assert all(o["attempt"] == (2 if o["id"] % 10 == 5 else 1) for o in out)
    assert sorted(msgspec.json.decode(value(m))["id"] for m in dead) == list(range(3, n, 10))
    hs = dict(dead[0].headers)
    assert hs["x-dead-letter-reason"] == b"rejected: card declined"
    assert hs["x-delivery-count"] == b"1"
    assert hs["x-original-topic"] == orders.encode()
    assert sorted(seen_by_analytics) == list(range(n))
    with mqlite.open(kafka_url, client_options={"log_level": 3}) as b:
        ends = {p.partition: p.end_offset for p in b.describe_topic(orders).partitions}
        assert b.committed_offsets(f"payments-{tag}", orders) == {
            p: e for p, e in ends.items() if e}


def test_what_kafka_lacks_is_refused_with_the_alternative(kafka_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    app = mqlite.App(kafka_url)

    @app.subscriber(f"jobs-{tag}", group="w", mode="queue")
    def work(x: object) -> None:
        return None

    with app:
        assert not app.wait_ready(TIMEOUT)  # the queue subscriber failed, with the reason
        assert "stream subscriber" in str(app.health().subscribers["work"]["error"])
        with pytest.raises(mqlite.NotSupportedError, match="plain topic"):
            app.dead_letters(f"jobs-{tag}.dlq")



def test_retry_topics_are_refused_on_kafka(kafka_url: str) -> None:
    # Kafka has no delayed messages: a retry topic would retry at once, so the App's
    # delayed retry send is refused with NotSupportedError naming in-place retries.
    from mqlite.app.backend import open_backend
    from mqlite.app.context import Output

    tag = uuid.uuid4().hex[:6]
    be = open_backend(kafka_url, "none")
    try:
        be.ensure_topic(f"rt-{tag}.retry", 1)
        retry = Output(f"rt-{tag}.retry", b"{}", None, [("x-attempt", b"2")], None, delay=0.5)
        with pytest.raises(mqlite.NotSupportedError, match="in-place retries"):
            be.apply([retry], [], None, [])
        assert be.scheduled(f"rt-{tag}.retry") == 0
    finally:
        be.close()


def test_app_runs_on_an_open_kafka_broker_and_leaves_it_open(kafka_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    src, out = f"in-{tag}", f"out-{tag}"
    n = 20
    with mqlite.open(kafka_url, client_options={"log_level": 3}) as b:
        app = mqlite.App(b, name="onbroker", partitions=2)

        @app.subscriber(src, group=f"g-{tag}", exactly_once=True)
        @app.publisher(out)
        def double(x: dict) -> dict:
            return {"id": x["id"], "twice": 2 * x["id"]}

        with app:
            assert app.broker is b
            assert app.wait_ready(TIMEOUT)
            for i in range(n):
                app.publish(src, {"id": i}, key=str(i))
            got = [msgspec.json.decode(value(m)) for m in _read(b, out, n)]
        assert not b.closed  # the caller's broker: the App does not close it
        assert sorted(o["twice"] for o in got) == [2 * i for i in range(n)]
        assert b.topics()  # still usable
        with pytest.raises(TypeError, match="URL"):
            app.run(workers=2)  # a forked worker cannot use this process's client


def test_app_refuses_other_targets_naming_what_it_takes() -> None:
    with pytest.raises(TypeError, match="KafkaBroker"):
        mqlite.App(object())
