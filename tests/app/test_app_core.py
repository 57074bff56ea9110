"""mqlite.App core: handlers, payloads, Context, publishers, ack policies, hooks, harness."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import TypedDict

import msgspec
import pytest
from _polling import wait_until

import mqlite
from mqlite import TopicPartition
from mqlite.app import HandlerEvent, TestApp


class Order(msgspec.Struct):
    id: int
    amount: float = 0.0


@dataclasses.dataclass
class DOrder:
    id: int


class TOrder(TypedDict):
    id: int


def test_sync_handler_gets_payload_and_context_and_publishes_return_value() -> None:
    app = mqlite.App("unused", name="svc")
    seen: list[tuple[object, str, int, int, bytes | None, int]] = []

    @app.subscriber("orders", group="payments")
    @app.publisher("paid")
    def pay(order: dict, ctx: mqlite.Context) -> dict:
        seen.append((order, ctx.topic, ctx.partition, ctx.offset, ctx.key, ctx.attempt))
        assert ctx.group == "payments" and ctx.header("h") == "v"
        return {"paid": order["id"]}

    with TestApp(app) as t:
        t.publish("orders", {"id": 1}, key="user-1", headers={"h": "v"})
        t.publish("orders", {"id": 2}, key=b"user-2", headers=[("h", b"v")])
        t.wait_idle()
        assert seen == [({"id": 1}, "orders", 0, 0, b"user-1", 1),
                        ({"id": 2}, "orders", 0, 1, b"user-2", 1)]
        assert t.published("paid") == [{"paid": 1}, {"paid": 2}]
        assert t.payloads("pay") == [{"id": 1}, {"id": 2}]
        assert app.broker.committed_offsets("payments", "orders") == {0: 2}


def test_async_handler_runs_on_the_app_loop() -> None:
    app = mqlite.App("unused")
    loops: list[asyncio.AbstractEventLoop] = []

    @app.subscriber("orders")
    @app.publisher("out")
    async def handle(order: Order) -> Order:
        await asyncio.sleep(0.001)
        loops.append(asyncio.get_running_loop())
        return Order(order.id, order.amount * 2)

    with TestApp(app) as t:
        for i in range(20):
            t.publish("orders", Order(i, 1.5))
        t.wait_idle()
        assert t.published("out") == [{"id": i, "amount": 3.0} for i in range(20)]
        assert len(set(map(id, loops))) == 1


@pytest.mark.parametrize("ann", [Order, DOrder, TOrder], ids=["struct", "dataclass", "typeddict"])
def test_typed_payloads_are_validated_and_bad_ones_are_dead_lettered(ann: type) -> None:
    app = mqlite.App("unused")
    got: list[object] = []

    def handle(order):
        got.append(order)

    handle.__annotations__ = {"order": ann}
    app.subscriber("orders", dead_letter="orders.dlq", retries=5)(handle)
    with TestApp(app) as t:
        t.publish("orders", {"id": 7})
        t.publish("orders", {"id": "not a number"})
        t.publish("orders", b"{not json")
        t.wait_idle()
        assert len(got) == 1
        one = got[0]
        assert (one["id"] if isinstance(one, dict) else one.id) == 7  # type: ignore[attr-defined]
        dls = t.dead_letters("orders.dlq")
        assert [d.original_offset for d in dls] == [1, 2]
        assert all(d.delivery_count == 1 and d.reason == "invalid payload" for d in dls)
        assert all(dict(d.message.headers)["x-error-type"] == b"PayloadError" for d in dls)


def test_bytes_pass_through_and_handler_without_arguments() -> None:
    app = mqlite.App("unused")
    raw: list[bytes] = []
    count = [0]

    @app.subscriber("blobs")
    def blob(value: bytes) -> None:
        raw.append(value)

    @app.subscriber("blobs", name="counter")
    def counter() -> None:
        count[0] += 1

    with TestApp(app) as t:
        t.publish("blobs", b"\x00\xffraw")
        t.publish("blobs", bytearray(b"x"))
        t.wait_idle()
    assert raw == [b"\x00\xffraw", b"x"]
    assert count[0] == 2


def test_ctx_publish_is_sent_only_when_the_handler_succeeds() -> None:
    app = mqlite.App("unused")
    attempts: list[int] = []

    @app.subscriber("in", retries=2, backoff=0)
    def handle(x: int, ctx: mqlite.Context) -> None:
        ctx.publish("out", {"x": x, "attempt": ctx.attempt}, key="k")
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError("transient")

    with TestApp(app) as t:
        t.publish("in", 5)
        t.wait_idle()
        assert attempts == [1, 2, 3]
        assert t.published("out") == [{"x": 5, "attempt": 3}]
        assert [e.status for e in t.calls("handle")] == ["retry", "retry", "ok"]


def test_ack_before_commits_before_the_handler_runs() -> None:
    app = mqlite.App("unused")
    entered, release = threading.Event(), threading.Event()

    @app.subscriber("in", group="g", ack="before")
    def slow(x: int) -> None:
        entered.set()
        assert release.wait(30)

    with TestApp(app) as t:
        t.publish("in", 1)
        assert entered.wait(30)
        # at-most-once: the offset is committed while the handler still runs
        assert app.broker.committed_offsets("g", "in") == {0: 1}
        release.set()
        t.wait_idle()


def test_ack_manual_commits_only_what_the_handler_committed() -> None:
    app = mqlite.App("unused")

    @app.subscriber("in", group="g", ack="manual")
    def handle(x: int, ctx: mqlite.Context) -> None:
        if x != 3:
            ctx.commit()

    with TestApp(app) as t:
        for x in (1, 2, 3):
            t.publish("in", x)
        with pytest.raises(mqlite.TimeoutError):
            t.wait_idle(timeout=1.0)
        # 1 and 2 committed, 3 never: waited for (a loaded machine may not have handled
        # 2 within the second above), not read once
        wait_until(lambda: app.broker.committed_offsets("g", "in") == {0: 2}, 30.0,
                   "1 and 2 committed")
        assert app.broker.committed_offsets("g", "in") == {0: 2}  # 3 never committed
        t.publish("in", 4)  # a later commit covers everything before it (Kafka semantics)
        t.wait_idle()
        assert app.broker.committed_offsets("g", "in") == {0: 4}


def test_queue_mode_competing_handlers_ack_after() -> None:
    app = mqlite.App("unused")
    seen: list[int] = []
    lock = threading.Lock()

    @app.subscriber("jobs", group="workers", mode="queue", concurrency=4)
    def work(job: dict, ctx: mqlite.Context) -> None:
        assert isinstance(ctx.message, mqlite.Delivery)
        with lock:
            seen.append(job["n"])

    with TestApp(app) as t:
        for n in range(50):
            t.publish("jobs", {"n": n})
        t.wait_idle()
        assert sorted(seen) == list(range(50))
        assert t.app.broker.queue_policy("jobs", "workers") is not None


def test_topics_are_created_at_startup_and_existing_ones_kept(tmp_broker_dir) -> None:
    with mqlite.open(tmp_broker_dir) as b:
        b.create_topic("existing", partitions=2)
    app = mqlite.App(tmp_broker_dir, partitions=3)

    @app.subscriber(["existing", "fresh"], dead_letter="fresh.dlq")
    @app.publisher("results")
    def h(x: object) -> None:
        return None

    @app.subscriber("six", partitions=6)
    def h6(x: object) -> None:
        return None

    with app:
        b = app.broker
        assert b.partitions_for("existing") == 2
        assert b.partitions_for("fresh") == 3
        assert b.partitions_for("results") == 3
        assert b.partitions_for("fresh.dlq") == 1
        assert b.partitions_for("six") == 6


def test_hooks_run_in_order_and_async_hooks_too() -> None:
    app = mqlite.App("unused")
    calls: list[str] = []

    @app.on_startup
    def s1() -> None:
        calls.append("start-sync")

    @app.on_startup
    async def s2() -> None:
        calls.append("start-async")

    @app.on_shutdown
    async def d1() -> None:
        calls.append("stop-async")

    @app.subscriber("t")
    def h(x: object) -> None:
        calls.append("handled")

    with TestApp(app) as t:
        t.publish("t", 1)
        t.wait_idle()
    assert calls == ["start-sync", "start-async", "handled", "stop-async"]


def test_app_publish_forms_and_auto_created_topic(tmp_broker_dir) -> None:
    app = mqlite.App(tmp_broker_dir, partitions=2)
    md = app.publish("new-topic", {"a": 1}, key="k")
    assert md.topic == "new-topic" and app.broker.partitions_for("new-topic") == 2

    async def main() -> mqlite.RecordMetadata:
        return await app.publish_async("new-topic", b"raw", key=b"k")

    md2 = asyncio.run(main())
    assert md2.partition == md.partition  # same key, same partition
    msgs = app.broker.read("new-topic", md.partition, 0)
    assert [m.value for m in msgs] == [b'{"a":1}', b"raw"]
    app.stop()
    strict = mqlite.App(tmp_broker_dir, auto_create_topics=False)
    with pytest.raises(mqlite.TopicNotFoundError):
        strict.publish("missing", 1)
    strict.stop()


def test_listeners_see_start_and_finish_with_status_and_seconds() -> None:
    events: list[HandlerEvent] = []
    app = mqlite.App("unused", listeners=[events.append])

    @app.subscriber("t", retries=1, backoff=0)
    def h(x: int) -> None:
        if x == 2:
            raise mqlite.Reject("no")

    with TestApp(app) as t:
        t.publish("t", 1)
        t.publish("t", 2)
        t.wait_idle()
    assert [(e.offset, e.status) for e in events] == [(0, None), (0, "ok"), (1, None),
                                                        (1, "error")]
    assert all(e.seconds >= 0 for e in events)
    assert isinstance(events[-1].error, mqlite.Reject)


def test_request_reply_sync_async_and_timeout() -> None:
    app = mqlite.App("unused")

    @app.subscriber("sum")
    def add(req: dict) -> int:
        return req["a"] + req["b"]

    @app.subscriber("never")
    def never(req: object) -> None:
        raise mqlite.Reject("no reply")

    with TestApp(app) as t:
        assert app.request_sync("sum", {"a": 2, "b": 3}, timeout=30) == 5

        async def main() -> list[int]:
            return list(await asyncio.gather(*(app.request("sum", {"a": i, "b": 1}, timeout=30)
                                               for i in range(5))))

        assert asyncio.run(main()) == [1, 2, 3, 4, 5]
        with pytest.raises(mqlite.TimeoutError):
            app.request_sync("never", {}, timeout=0.2)
        t.wait_idle()


def test_health_reports_ready_per_subscriber() -> None:
    app = mqlite.App("unused")

    @app.subscriber("t", group="g")
    def h(x: object) -> None:
        return None

    assert app.health().ready is False
    with TestApp(app):
        h_ = app.health()
        assert h_.ready and h_.subscribers["h"]["ready"] and h_.subscribers["h"]["group"] == "g"
    assert app.health().ready is False


@pytest.mark.parametrize("kwargs, err", [
    ({"mode": "fifo"}, ValueError), ({"ack": "later"}, ValueError),
    ({"retries": -1}, ValueError), ({"retries": 1.5}, TypeError),
    ({"concurrency": 0}, ValueError), ({"batch": 10_001}, ValueError),
    ({"backoff": -1}, ValueError), ({"backoff": "1s"}, TypeError),
    ({"dead_letter": "bad name!"}, ValueError), ({"dead_letter": "t"}, ValueError),
    ({"exactly_once": True, "ack": "before"}, ValueError),
    ({"permanent": (int,)}, TypeError), ({"visibility_timeout": 0}, ValueError),
    ({"idempotency_key": "id"}, TypeError), ({"partitions": 0}, ValueError),
])
def test_bad_subscriber_options_fail_at_decoration(kwargs: dict, err: type) -> None:
    app = mqlite.App("unused")
    with pytest.raises(err):
        app.subscriber("t", **kwargs)(lambda x: None)


def test_bad_app_options_and_handler_signatures() -> None:
    with pytest.raises(TypeError):
        mqlite.App(42)
    with pytest.raises(ValueError):
        mqlite.App("d", graceful_timeout=-1)
    with pytest.raises(ValueError):
        mqlite.App("d", durability="always")
    app = mqlite.App("unused")
    with pytest.raises(TypeError):
        app.subscriber("t")(lambda a, b, c: None)
    with pytest.raises(TypeError):
        app.subscriber("t")(lambda a, b: None)  # which one is the Context?
    with pytest.raises(TypeError):
        mqlite.Retry(delay="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mqlite.Retry(delay=-1)
    app.subscriber("t")(lambda x: None)
    with pytest.raises(ValueError):
        app.subscriber("t")(lambda x: None)  # same name twice


def test_commit_position_is_per_partition_with_keys() -> None:
    app = mqlite.App("unused", partitions=4)
    order: dict[int, list[int]] = {}

    @app.subscriber("t", group="g", concurrency=4)
    def h(x: dict, ctx: mqlite.Context) -> None:
        order.setdefault(ctx.partition, []).append(x["seq"])

    with TestApp(app) as t:
        for seq in range(200):
            t.publish("t", {"seq": seq}, key=f"k{seq % 8}")
        t.wait_idle()
        ends = {p.partition: p.end_offset for p in app.broker.describe_topic("t").partitions}
        assert app.broker.committed_offsets("g", "t") == {p: e for p, e in ends.items() if e}
    for seqs in order.values():
        assert seqs == sorted(seqs)  # in order within each partition
    assert sum(map(len, order.values())) == 200
    assert TopicPartition("t", 0) == ("t", 0)


def test_mqlite_run_refuses_bad_targets(tmp_path, monkeypatch) -> None:
    from mqlite.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "svc_mod.py").write_text("import mqlite\napp = mqlite.App('d')\nnot_app = 3\n")
    assert main(["run", "no_such_module_xyz:app"]) == 2
    assert main(["run", "svc_mod:missing"]) == 2
    assert main(["run", "svc_mod:not_app"]) == 2
    assert main(["run", "a:b:c"]) == 2
    assert main(["run", "svc_mod:app", "--graceful-timeout", "-1"]) == 2


def test_health_endpoint_serves_200_and_503() -> None:
    import json
    import urllib.error
    import urllib.request

    from mqlite.app.run import serve_health

    state = {"ready": False}
    server = serve_health(lambda: (state["ready"], {"x": 1}), 0)
    port = server.server_address[1]
    try:
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10)
        assert ei.value.code == 503
        ei.value.close()
        state["ready"] = True
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read()) == {"ready": True, "x": 1}
    finally:
        server.shutdown()
        server.server_close()


def test_pydantic_models_are_decoded_validated_and_encoded() -> None:
    pydantic = pytest.importorskip("pydantic")

    class POrder(pydantic.BaseModel):  # type: ignore[name-defined]  # importorskip: a ModuleType
        id: int
        amount: float

    app = mqlite.App("unused")
    got: list[object] = []

    def handle(order):
        got.append(order)
        return POrder(id=order.id, amount=order.amount * 2)

    handle.__annotations__ = {"order": POrder}
    app.subscriber("orders", dead_letter="orders.dlq")(app.publisher("out")(handle))
    with TestApp(app) as t:
        t.publish("orders", POrder(id=1, amount=2.5))
        t.publish("orders", {"id": "x"})
        t.wait_idle()
        assert [(o.id, o.amount) for o in got] == [(1, 2.5)]  # type: ignore[attr-defined]
        assert t.published("out") == [{"id": 1, "amount": 5.0}]
        (dl,) = t.dead_letters("orders.dlq")
        assert dl.reason == "invalid payload"


def test_test_app_can_run_one_module_app_in_several_tests(tmp_path) -> None:
    """docs/app.md's Testing section: tests share one module-level App.  Each
    ``TestApp`` block gets a fresh directory and its own calls; on exit the App has
    its own target back, no TestApp listener, and starts again (D81)."""
    target = str(tmp_path / "prod")
    app = mqlite.App(target, name="svc", durability="lazy")

    @app.subscriber("orders", group="payments")
    @app.publisher("paid")
    def pay(order: dict) -> dict:
        return {"paid": order["id"]}

    assert app.state == "new"
    for n in (1, 2, 3):
        with TestApp(app) as t:
            assert app.state == "running"
            assert app.target != target and app.durability == "none"
            t.publish("orders", {"id": n})
            t.wait_idle()
            assert t.published("paid") == [{"paid": n}]  # a fresh directory each time
            assert t.payloads("pay") == [{"id": n}]  # only this block's calls
        assert (app.target, app.durability) == (target, "lazy")
        assert app._listeners == []
        assert app.state == "new"
        assert not (tmp_path / "prod").exists()  # the tests never touched the real target


def test_test_app_refuses_a_running_app_and_gives_back_a_failed_start() -> None:
    app = mqlite.App("unused")

    @app.subscriber("orders")
    def h(x: dict) -> None:
        return None

    with TestApp(app), pytest.raises(RuntimeError, match="not running"), TestApp(app):
        pass  # the App is already running in the outer block

    @app.subscriber("other", batch=True)
    @app.publisher("out")
    def bad(xs: list[dict]) -> dict:
        return {}

    with pytest.raises(ValueError, match="publisher"), TestApp(app):
        pass
    assert app.target == "unused" and app._listeners == []
    app.subscribers.pop()  # without the bad subscriber it starts again
    with TestApp(app) as t:
        t.publish("orders", {"id": 1})
        t.wait_idle()
        assert t.payloads("h") == [{"id": 1}]


def test_remove_listener_stops_the_calls_and_ignores_an_unknown_one() -> None:
    app = mqlite.App("unused")
    seen: list[str | None] = []

    def listen(ev: HandlerEvent) -> None:
        seen.append(ev.status)

    @app.subscriber("orders")
    def h(x: dict) -> None:
        return None

    app.add_listener(listen)
    with TestApp(app) as t:
        t.publish("orders", {"id": 1})
        t.wait_idle()
        wait_until(lambda: seen == [None, "ok"], 30.0, "the listener saw the call end")
        app.remove_listener(listen)
        app.remove_listener(listen)  # not there any more: a no-op
        t.publish("orders", {"id": 2})
        t.wait_idle()
        assert t.payloads("h") == [{"id": 1}, {"id": 2}]
    assert seen == [None, "ok"]


def test_docs_app_md_example_and_its_testing_block_run(tmp_path) -> None:
    """docs/app.md: the first example's App, tested by the Testing section's block as
    written (pasted into one file; ``app.publish`` / ``app.run`` left out), twice."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "app.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    service = "\n".join(line for line in blocks[0].splitlines()
                        if not line.startswith(("app.publish(", "app.run(")))
    testing = next(b for b in blocks if "TestApp(app)" in b)
    code = service + "\n" + testing + "\ntest_pay()\ntest_pay()\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def test_publish_schedules_jobs_and_dedups_them(tmp_broker_dir) -> None:
    """``app.publish(delay=, deliver_at=, dedup_id=)``: a job enqueued for later (Celery's
    ``countdown`` / ``eta``) and an idempotent enqueue, as ``broker.send`` has (D86)."""
    app = mqlite.App(tmp_broker_dir, durability="none")
    try:
        app.publish("jobs", {"n": 0})  # created by the publish
        md = app.publish("jobs", {"n": 1}, delay=3600)
        assert md.offset == -1  # scheduled, not yet appended
        app.publish("jobs", {"n": 2}, deliver_at=time.time() - 1)  # past: due at once
        first = app.publish("jobs", {"n": 3}, dedup_id="job-3")
        assert app.publish("jobs", {"n": 3}, dedup_id="job-3") == first
        b = app.broker
        b.promote_scheduled()
        c = b.consumer("jobs", group="check", auto_offset_reset="earliest")
        got = [msgspec.json.decode(m.value)["n"] for m in c.poll(timeout=5)]
        c.close()
        assert sorted(got) == [0, 2, 3]  # n=1 held back for an hour; n=3 appended once
        assert b.stats().scheduled == {"jobs": 1}
        with pytest.raises(ValueError, match="delay"):
            app.publish("jobs", {"n": 4}, delay=-1)
    finally:
        app.stop()
