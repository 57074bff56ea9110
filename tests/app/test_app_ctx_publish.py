"""``ctx.publish(delay=, deliver_at=, dedup_id=)``: a running job schedules a follow-up (D88).

``app.publish`` has had the three since D86; a handler could not schedule its next step.
A delayed message cannot be part of a transaction (it is stored apart until due), so it
is sent on its own before the handler's transaction: with ``exactly_once=True`` it
needs a ``dedup_id`` (a clear ``ValueError`` otherwise).
"""

from __future__ import annotations

import threading
import time

import msgspec
import pytest

import mqlite
from mqlite.app.context import Context


def _values(broker: mqlite.Broker, topic: str) -> list[object]:
    c = broker.consumer(topic, group="check", auto_offset_reset="earliest")
    try:
        out: list[object] = []
        while True:
            got = c.poll(timeout=0.2)
            if not got:
                return out
            out += [msgspec.json.decode(m.value or b"null") for m in got]
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("mode", ["queue", "stream"])
def test_a_job_schedules_and_dedups_its_follow_ups(tmp_broker_dir, kind: str, mode: str) -> None:
    app = mqlite.App(tmp_broker_dir, durability="none")
    chain: list[int] = []
    finished = threading.Event()

    def body(n: int, ctx: mqlite.Context) -> None:
        chain.append(n)
        if n < 3:  # the follow-up of step n, 50 ms later, at most once per step
            ctx.publish("steps", n + 1, delay=0.05, dedup_id=f"step-{n + 1}")
            ctx.publish("steps", n + 1, delay=0.05, dedup_id=f"step-{n + 1}")
        else:
            finished.set()
        ctx.publish("later", {"n": n}, delay=3600)  # held back
        ctx.publish("later", {"past": n}, deliver_at=time.time() - 1)  # due at once
        ctx.publish("audit", {"n": n}, dedup_id=f"audit-{n % 2}")  # inside the transaction

    if kind == "sync":
        @app.subscriber("steps", group="g", mode=mode)
        def step(n: int, ctx: mqlite.Context) -> None:
            body(n, ctx)
    else:
        @app.subscriber("steps", group="g", mode=mode)
        async def astep(n: int, ctx: mqlite.Context) -> None:
            body(n, ctx)

    app.start()
    try:
        app.publish("steps", 0)
        assert finished.wait(60)
        app.wait_idle(timeout=60)
        b = app.broker
        b.promote_scheduled()
        assert chain == [0, 1, 2, 3]  # each follow-up once, though published twice
        assert b.stats().scheduled.get("later") == 4
        assert sorted(v["past"] for v in _values(b, "later")) == [0, 1, 2, 3]  # type: ignore[index]
        assert _values(b, "audit") == [{"n": 0}, {"n": 1}]  # audit-0 and audit-1 once each
    finally:
        app.stop()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_exactly_once_needs_a_dedup_id_for_a_delayed_send(tmp_broker_dir, kind: str) -> None:
    app = mqlite.App(tmp_broker_dir, durability="none")
    errors: list[str] = []
    app.add_listener(lambda e: errors.append(repr(e.error)) if e.error is not None else None)

    def body(n: int, ctx: mqlite.Context) -> None:
        if n == 0:
            ctx.publish("next", n, delay=0)  # refused: no dedup id
        else:
            ctx.publish("next", n, delay=0, dedup_id=f"next-{n}")
            ctx.publish("out", n)

    if kind == "sync":
        @app.subscriber("in", group="g", exactly_once=True, retries=0, dead_letter="in.dlq")
        def eos(n: int, ctx: mqlite.Context) -> None:
            body(n, ctx)
    else:
        @app.subscriber("in", group="g", exactly_once=True, retries=0, dead_letter="in.dlq")
        async def aeos(n: int, ctx: mqlite.Context) -> None:
            body(n, ctx)

    app.start()
    try:
        app.publish("in", 0)
        app.publish("in", 1)
        app.wait_idle(timeout=60)
        app.broker.promote_scheduled()
        assert [d.offset for d in app.dead_letters("in.dlq")] == [0]
        assert len(errors) == 1 and "cannot join the transaction" in errors[0]
        assert "dedup_id" in errors[0]
        assert _values(app.broker, "next") == [1]
        assert _values(app.broker, "out") == [1]
    finally:
        app.stop()


def test_ctx_publish_checks_its_arguments_when_called() -> None:
    from mqlite.app.context import CTX_EXACTLY_ONCE, CTX_NO_SCHEDULE

    m = mqlite.Message("t", 0, 0, 0, None, b"1", [])
    ctx = Context(m, 1, "g", "h")
    with pytest.raises(ValueError, match="not both"):
        ctx.publish("t", 1, delay=1, deliver_at=time.time())
    with pytest.raises(ValueError, match="delay"):
        ctx.publish("t", 1, delay=-1)
    with pytest.raises(TypeError, match="delay"):
        ctx.publish("t", 1, delay="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deliver_at is a UNIX time in seconds"):
        ctx.publish("t", 1, deliver_at=time.time() * 1000)  # milliseconds
    with pytest.raises(ValueError, match="dedup_id must be 1 to 256 bytes"):
        ctx.publish("t", 1, dedup_id="")
    with pytest.raises(TypeError, match="dedup_id must be str or bytes"):
        ctx.publish("t", 1, dedup_id=5)  # type: ignore[arg-type]
    assert ctx._outputs == []
    ctx.publish("t", 1, delay=2.5, dedup_id=b"x")
    (out,) = ctx._outputs
    assert (out.delay, out.deliver_at, out.dedup_id, out.scheduled) == (2.5, None, b"x", True)
    eos = Context(m, 1, "g", "h", CTX_EXACTLY_ONCE)
    eos.publish("t", 1, dedup_id="no delay: in the transaction")  # fine
    with pytest.raises(ValueError, match="exactly_once"):
        eos.publish("t", 1, deliver_at=time.time())
    kafka = Context(m, 1, "g", "h", CTX_NO_SCHEDULE)
    kafka.publish("t", 1)
    for kw in ({"delay": 1.0}, {"deliver_at": time.time()}, {"dedup_id": "x"}):
        with pytest.raises(mqlite.NotSupportedError, match="Kafka"):
            kafka.publish("t", 1, **kw)


def test_the_kafka_backend_refuses_delayed_sends() -> None:
    from mqlite.app.backend import LocalBackend
    from mqlite.app.kafka_backend import KafkaBackend

    assert LocalBackend.delayed_sends is True
    assert KafkaBackend.delayed_sends is False
