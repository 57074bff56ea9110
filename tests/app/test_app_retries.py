"""Retries, backoff and dead letters in both modes; redrive from the API and the CLI."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

import mqlite
from mqlite.app import TestApp
from mqlite.cli import main as cli_main


class Flaky(Exception):
    pass


@pytest.mark.parametrize("mode", ["stream", "queue"])
def test_transient_failures_retry_then_dead_letter_with_provenance(mode: str) -> None:
    app = mqlite.App("unused", name="svc")
    attempts: dict[int, list[int]] = {}
    lock = threading.Lock()

    @app.subscriber("orders", group="pay", mode=mode, retries=2, backoff=0.01,
                    dead_letter="orders.dlq")
    def pay(order: dict, ctx: mqlite.Context) -> None:
        with lock:
            attempts.setdefault(order["id"], []).append(ctx.attempt)
        if order["id"] == 1:
            raise Flaky("card service down")
        if order["id"] == 2 and ctx.attempt == 1:
            raise Flaky("blip")

    with TestApp(app) as t:
        for i in range(4):
            t.publish("orders", {"id": i}, key=f"user-{i}", headers={"trace": "abc"})
        t.wait_idle()
        assert attempts == {0: [1], 1: [1, 2, 3], 2: [1, 2], 3: [1]}
        (dl,) = t.dead_letters("orders.dlq")
        assert (dl.original_topic, dl.original_partition, dl.original_offset) == ("orders", 0, 1)
        assert dl.delivery_count == 3 and dl.original_group == "pay"
        assert dl.reason == "retries exhausted"
        assert dl.last_error == "Flaky: card service down"
        assert dl.dead_lettered_ms is not None and dl.dead_lettered_ms > 0
        headers = dict(dl.message.headers)
        assert headers["x-error-type"] == b"Flaky" and headers["trace"] == b"abc"
        assert dl.message.key == b"user-1" and dl.message.value == b'{"id":1}'
        statuses = [e.status for e in t.calls("pay") if e.payload == {"id": 1}]
        assert statuses == ["retry", "retry", "dead_letter"]


@pytest.mark.parametrize("mode", ["stream", "queue"])
def test_reject_and_permanent_types_skip_retries(mode: str) -> None:
    app = mqlite.App("unused")
    calls: list[int] = []

    @app.subscriber("t", mode=mode, retries=5, backoff=0, dead_letter="t.dlq",
                    permanent=(KeyError,))
    def h(x: int) -> None:
        calls.append(x)
        if x == 1:
            raise mqlite.Reject("invalid card")
        if x == 2:
            raise KeyError("no such customer")

    with TestApp(app) as t:
        for x in (1, 2, 3):
            t.publish("t", x)
        t.wait_idle()
        assert sorted(calls) == [1, 2, 3]  # one attempt each
        dls = {dl.original_offset: dl for dl in t.dead_letters("t.dlq")}
        assert dls[0].reason == "rejected: invalid card" and dls[0].delivery_count == 1
        assert dls[1].reason == "permanent error" and dls[1].last_error.startswith("KeyError")


@pytest.mark.parametrize("mode", ["stream", "queue"])
def test_retry_exception_delay_is_respected(mode: str) -> None:
    app = mqlite.App("unused")
    stamps: list[float] = []

    @app.subscriber("t", mode=mode, retries=3, backoff=60)  # the Retry delay overrides it
    def h(x: int) -> None:
        stamps.append(time.monotonic())
        if len(stamps) < 3:
            raise mqlite.Retry(delay=0.2)

    with TestApp(app) as t:
        t.publish("t", 1)
        t.wait_idle(timeout=30)
    assert len(stamps) == 3
    assert stamps[1] - stamps[0] >= 0.19 and stamps[2] - stamps[1] >= 0.19


def test_exponential_backoff_grows_and_is_capped() -> None:
    app = mqlite.App("unused")
    stamps: list[float] = []

    @app.subscriber("t", retries=3, backoff=mqlite.Backoff.exponential(base=0.05, cap=0.1,
                                                                        jitter=0.0))
    def h(x: int) -> None:
        stamps.append(time.monotonic())
        raise Flaky()

    with TestApp(app) as t:
        t.publish("t", 1)
        t.wait_idle(timeout=30)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 3
    assert gaps[0] >= 0.049 and gaps[1] >= 0.099 and gaps[2] >= 0.099


def test_stream_retry_in_place_keeps_partition_order() -> None:
    app = mqlite.App("unused")
    seen: list[tuple[str, int]] = []

    @app.subscriber("t", retries=2, backoff=0.01)
    def h(x: str, ctx: mqlite.Context) -> None:
        seen.append((x, ctx.attempt))
        if x == "a" and ctx.attempt < 3:
            raise Flaky()

    with TestApp(app) as t:
        for x in "abc":
            t.publish("t", x)
        t.wait_idle()
    assert seen == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1)]


def test_without_dead_letter_topic_a_failure_is_dropped_and_committed() -> None:
    app = mqlite.App("unused")

    @app.subscriber("t", group="g", retries=1, backoff=0)
    def h(x: int) -> None:
        if x == 1:
            raise Flaky()

    with TestApp(app) as t:
        t.publish("t", 1)
        t.publish("t", 2)
        t.wait_idle()
        assert app.broker.committed_offsets("g", "t") == {0: 2}
        assert [e.status for e in t.calls("h")] == ["retry", "error", "ok"]


@pytest.mark.parametrize("mode", ["stream", "queue"])
def test_redrive_from_api_and_cli_handles_the_message_again(mode: str) -> None:
    app = mqlite.App("unused")
    broken = threading.Event()
    broken.set()
    handled: list[dict] = []

    @app.subscriber("orders", mode=mode, retries=0, dead_letter="orders.dlq")
    def h(order: dict) -> None:
        if broken.is_set():
            raise Flaky("downstream down")
        handled.append(order)

    with TestApp(app) as t:
        t.publish("orders", {"id": 1}, key="k1")
        t.publish("orders", {"id": 2}, key="k2")
        t.wait_idle()
        assert len(t.dead_letters("orders.dlq")) == 2
        broken.clear()
        assert app.redrive("orders.dlq", where=lambda dl: dl.message.key == b"k1") == 1
        t.wait_idle()
        assert handled == [{"id": 1}]
        assert cli_main(["dlq", "redrive", str(app.target), "orders.dlq", "--durability", "none"]) == 0
        t.wait_idle()
        assert handled == [{"id": 1}, {"id": 2}]
        assert t.dead_letters("orders.dlq") == []
        # the redriven copies carry the original headers only
        last = t.messages("orders")[-1]
        assert not any(n.startswith("x-") for n, _ in last.headers)


def test_queue_poison_message_that_kills_the_worker_still_reaches_the_dlq(tmp_broker_dir
                                                                            ) -> None:
    # The queue policy is stored with the group: after retries+1 deliveries a
    # message whose handler never finished (the process died) is dead-lettered
    # at receive, so a poison message cannot crash-loop the workers.
    app = mqlite.App(tmp_broker_dir)

    @app.subscriber("jobs", group="w", mode="queue", retries=2, dead_letter="jobs.dlq")
    def h(x: object) -> None:
        return None

    with app:
        assert app.wait_ready()
        pol = app.broker.queue_policy("jobs", "w")
    assert pol is not None
    assert pol.max_deliveries == 3 and pol.dead_letter_topic == "jobs.dlq"


def test_retry_topic_keeps_the_partition_moving_then_dead_letters_with_the_origin() -> None:
    app = mqlite.App("unused")
    seen: list[tuple[int, int]] = []  # (id, attempt)

    @app.subscriber("orders", group="pay", retries=2, backoff=0.05, retry_topic=True,
                    dead_letter="orders.dlq")
    def pay(order: dict, ctx: mqlite.Context) -> None:
        seen.append((order["id"], ctx.attempt))
        if order["id"] == 0:
            raise RuntimeError("card declined")

    with TestApp(app) as t:
        for i in range(4):
            t.publish("orders", {"id": i}, key=b"same-key")
        t.wait_idle()
        # the failing message did not hold up the ones behind it (same key, same partition)
        ids = [i for i, _ in seen]
        assert ids.index(3) < len(ids) - 1
        assert [a for i, a in seen if i == 0] == [1, 2, 3]
        assert sorted(i for i, _ in seen if i != 0) == [1, 2, 3]
        (dl,) = t.dead_letters("orders.dlq")
        assert (dl.original_topic, dl.original_partition, dl.original_offset) == \
            ("orders", 0, 0)
        assert dl.delivery_count == 3 and dl.reason == "retries exhausted"
        assert dl.message.key == b"same-key"
        assert "orders.retry" in app.broker.topics()
        # retry messages carry no leftover retry headers into the dead letter
        assert not [n for n, _ in dl.message.headers if n.startswith("x-mqlite-retry-")]


def test_retry_topic_shared_by_two_groups_each_retries_only_its_own() -> None:
    app = mqlite.App("unused")
    calls = {"a": 0, "b": 0}

    @app.subscriber("t", group="a", retries=1, backoff=0, retry_topic="shared.retry")
    def a(x: int) -> None:
        calls["a"] += 1
        raise RuntimeError("a fails")

    @app.subscriber("t", group="b", retries=1, backoff=0, retry_topic="shared.retry")
    def b(x: int) -> None:
        calls["b"] += 1

    with TestApp(app) as t:
        t.publish("t", 1)
        t.wait_idle()
        assert calls == {"a": 2, "b": 1}


@pytest.mark.parametrize("kwargs", [
    {"mode": "queue"}, {"exactly_once": True}, {"retry_topic": "t"},
    {"retry_topic": 3}, {"topics": ["t", "u"]},
])
def test_retry_topic_bad_options(kwargs: dict) -> None:
    app = mqlite.App("unused")
    kwargs = {"retry_topic": True, **kwargs}
    topics = kwargs.pop("topics", "t")
    with pytest.raises((TypeError, ValueError)):
        app.subscriber(topics, **kwargs)(lambda x: None)
