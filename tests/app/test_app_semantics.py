"""Concurrency with in-order commits, exactly-once, idempotency keys."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest

import mqlite
from mqlite import TopicPartition
from mqlite.app import TestApp


def test_concurrency_runs_partitions_in_parallel_sync() -> None:
    app = mqlite.App("unused", partitions=4)
    barrier = threading.Barrier(4, timeout=30)
    per_part: dict[int, list[int]] = {}

    @app.subscriber("t", concurrency=4)
    def h(x: dict, ctx: mqlite.Context) -> None:
        if x["seq"] < 4:
            barrier.wait()  # passes only when 4 handlers run at once
        per_part.setdefault(ctx.partition, []).append(x["seq"])

    with TestApp(app) as t:
        for seq in range(40):
            t.publish("t", {"seq": seq}, partition=seq % 4)
        t.wait_idle()
    assert {p: s for p, s in per_part.items()} == {p: list(range(p, 40, 4)) for p in range(4)}


def test_concurrency_runs_partitions_in_parallel_async() -> None:
    app = mqlite.App("unused", partitions=4)
    state = {"in": 0}
    all_in: list[asyncio.Event] = []

    @app.subscriber("t", concurrency=4)
    async def h(x: int) -> None:
        if not all_in:
            all_in.append(asyncio.Event())
        state["in"] += 1
        if state["in"] == 4:
            all_in[0].set()
        await asyncio.wait_for(all_in[0].wait(), 30)  # all four partitions at once

    with TestApp(app) as t:
        for p in range(4):
            t.publish("t", p, partition=p)
        t.wait_idle()
    assert state["in"] == 4


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_later_success_never_commits_past_an_earlier_failure(is_async: bool) -> None:
    # FastStream #2618: with concurrent handling, a later message's success
    # committed past an earlier failed one, which was then never redelivered.
    app = mqlite.App("unused", partitions=2)
    gate = threading.Event()
    retrying = threading.Event()
    done: list[tuple[int, int]] = []

    def body(ctx: mqlite.Context) -> None:
        if ctx.partition == 0 and ctx.offset == 0 and not gate.is_set():
            retrying.set()
            raise RuntimeError("downstream not ready")
        done.append((ctx.partition, ctx.offset))

    if is_async:
        @app.subscriber("t", group="g", concurrency=2, retries=1000, backoff=0.005)
        async def h_async(x: int, ctx: mqlite.Context) -> None:
            body(ctx)
    else:
        @app.subscriber("t", group="g", concurrency=2, retries=1000, backoff=0.005)
        def h(x: int, ctx: mqlite.Context) -> None:
            body(ctx)

    with TestApp(app) as t:
        for i in range(10):
            t.publish("t", i, partition=0)
            t.publish("t", i, partition=1)
        assert retrying.wait(30)
        # partition 1 finishes and commits; partition 0 must stay at 0
        b = app.broker
        with app._progress:
            assert app._progress.wait_for(
                lambda: b.committed_offsets("g", "t").get(1) == 10, timeout=60)
        assert b.committed_offsets("g", "t").get(0) in (None, 0)
        assert not any(p == 0 for p, _ in done)  # nothing after the failure ran either
        gate.set()
        t.wait_idle()
        assert b.committed_offsets("g", "t") == {0: 10, 1: 10}
    assert [o for p, o in done if p == 0] == list(range(10))
    assert [o for p, o in done if p == 1] == list(range(10))


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_exactly_once_outputs_and_commit_are_one_transaction(is_async: bool) -> None:
    app = mqlite.App("unused", partitions=2)
    commits: list[dict[int, int]] = []

    def body(x: int, ctx: mqlite.Context) -> dict:
        # the commit of the previous batch happened with its outputs: every
        # committed input has its output already
        outs = len(t.published("out"))
        committed = app.broker.committed_offsets("g", "in")
        commits.append(committed)
        assert sum(committed.values()) <= outs
        ctx.publish("audit", {"x": x})
        return {"x": x}

    if is_async:
        async def h(x: int, ctx: mqlite.Context) -> dict:
            return body(x, ctx)
    else:
        def h(x: int, ctx: mqlite.Context) -> dict:  # type: ignore[misc]
            return body(x, ctx)

    app.subscriber("in", group="g", exactly_once=True, batch=7, concurrency=2)(
        app.publisher("out")(h))
    with TestApp(app) as t:
        for i in range(100):
            t.publish("in", i, key=str(i))
        t.wait_idle()
        assert sorted(v["x"] for v in t.published("out")) == list(range(100))
        assert sorted(v["x"] for v in t.published("audit")) == list(range(100))
        ends = {p.partition: p.end_offset for p in app.broker.describe_topic("in").partitions}
        assert app.broker.committed_offsets("g", "in") == ends


def test_exactly_once_in_queue_mode_acks_with_outputs() -> None:
    app = mqlite.App("unused")

    @app.subscriber("jobs", mode="queue", exactly_once=True, concurrency=3)
    @app.publisher("results")
    def h(n: int) -> int:
        return n * n

    with TestApp(app) as t:
        for n in range(60):
            t.publish("jobs", n)
        t.wait_idle()
        assert sorted(t.published("results")) == sorted(n * n for n in range(60))


def test_idempotency_key_skips_duplicates_across_group_members(tmp_broker_dir) -> None:
    outputs_expected = 40
    apps = []
    for i in range(2):
        app = mqlite.App(tmp_broker_dir, name=f"w{i}", partitions=4, durability="none")

        @app.subscriber("events", group="billing", name="bill", concurrency=2,
                        idempotency_key=lambda ev: ev["id"])
        def bill(ev: dict, ctx: mqlite.Context) -> None:
            ctx.publish("invoices", {"id": ev["id"]})

        apps.append(app)
    for a in apps:
        a.start()
    try:
        assert all(a.wait_ready() for a in apps)
        for n in range(outputs_expected):
            for copy in range(3):  # three copies of each event, on different partitions
                apps[0].publish("events", {"id": f"ev-{n}", "copy": copy}, key=f"{n}-{copy}")
        for a in apps:
            a.wait_idle(60)
        ids: Counter[bytes | None] = Counter()
        b = apps[0].broker
        for p in range(b.partitions_for("invoices")):
            for m in b.read("invoices", p, 0, 10_000):
                ids[m.value] += 1
        assert len(ids) == outputs_expected
        assert set(ids.values()) == {1}
        assert b.is_processed("ev-0", "billing:bill")
    finally:
        for a in apps:
            a.stop()


def test_idempotency_key_none_means_no_dedup() -> None:
    app = mqlite.App("unused")
    calls: list[int] = []

    @app.subscriber("t", idempotency_key=lambda x: None if x < 0 else x)
    def h(x: int) -> None:
        calls.append(x)

    with TestApp(app) as t:
        for x in (-1, -1, 5, 5):
            t.publish("t", x)
        t.wait_idle()
        assert calls == [-1, -1, 5]
        assert [e.status for e in t.calls("h")] == ["ok", "ok", "ok", "skipped"]
    assert TopicPartition("t", 0).partition == 0
