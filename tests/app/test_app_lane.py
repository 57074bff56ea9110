"""The App's lean handler loop (``_core.run_lane``, D40): outcomes, and the App around it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

import mqlite
from mqlite import _core
from mqlite._core import Message


class _Flags:
    """Stands for a runner and a lane: the two LaneFlag objects run_lane reads."""

    def __init__(self) -> None:
        self.stop = _core.LaneFlag()
        self.rev = _core.LaneFlag()


@contextlib.contextmanager
def _running(app: mqlite.App) -> Iterator[mqlite.App]:
    """A started App without TestApp: TestApp's listener would take every job off
    the lean path (listeners need an event per message)."""
    app.start()
    try:
        assert app.wait_ready(30)
        yield app
    finally:
        app.stop()


class Order(msgspec.Struct):
    id: int


def _msgs(n: int, headers_at: int | None = None) -> list[Message]:
    return [Message("t", 0, i, 0, None, json.dumps(i).encode(),
                    [("x-reply-to", b"r")] if i == headers_at else None) for i in range(n)]


def test_run_lane_sync_modes_headers_and_errors() -> None:
    seen: list[Any] = []
    flags = _Flags()
    msgs = _msgs(5, headers_at=3)
    msgs[1] = Message("t", 0, 1, 0, None, None)  # a tombstone: b"" in mode 0
    assert _core.run_lane(seen.append, msgs, 0, 0, False, None, flags.stop, flags.rev) == (
        3, _core.LANE_REPLY, None, None)
    assert seen == [b"0", b"", b"2", b"3"]
    assert _core.run_lane(seen.append, msgs, 4, 0, False, None, flags.stop, flags.rev) == (
        5, _core.LANE_DONE, None, None)
    seen.clear()
    out = _core.run_lane(lambda v: v * 10, _msgs(5, headers_at=2), 0, 1, False, json.loads,
                         flags.stop, flags.rev)
    assert out == (2, _core.LANE_REPLY, 20, None)  # the result of the message with headers
    calls: list[int] = []
    assert _core.run_lane(lambda: calls.append(1), _msgs(3), 0, 2, False, None, flags.stop,
                          flags.rev) == (3, _core.LANE_DONE, None, None)
    assert calls == [1, 1, 1]

    def boom(v: int) -> None:
        if v == 2:
            raise ValueError("two")
    i, outcome, exc, _ = _core.run_lane(boom, _msgs(5), 0, 1, False, json.loads, flags.stop, flags.rev)
    assert (i, outcome, type(exc), str(exc)) == (2, _core.LANE_RAISED, ValueError, "two")
    # a decoding error is raised at that message too
    bad = _msgs(3)
    bad[1] = Message("t", 0, 1, 0, None, b"{not json")
    i, outcome, exc, _ = _core.run_lane(seen.append, bad, 0, 1, False, json.loads, flags.stop, flags.rev)
    assert (i, outcome, isinstance(exc, ValueError)) == (1, _core.LANE_RAISED, True)


def test_run_lane_stops_before_a_message_when_stopping_or_revoked() -> None:
    flags = _Flags()
    seen: list[bytes] = []

    def h(v: bytes) -> None:
        seen.append(v)
        if len(seen) == 2:
            flags.stop.on = True
    assert _core.run_lane(h, _msgs(5), 0, 0, False, None, flags.stop, flags.rev) == (
        2, _core.LANE_DONE, None, None)
    flags.stop.on, seen[:] = False, []
    flags.rev.on = True
    assert _core.run_lane(h, _msgs(5), 0, 0, False, None, flags.stop, flags.rev) == (
        0, _core.LANE_DONE, None, None)
    assert seen == []
    with pytest.raises(TypeError):  # the flags are LaneFlag objects, read as C fields
        _core.run_lane(h, _msgs(1), 0, 0, False, None, False, flags.rev)  # type: ignore[arg-type]  # checks the TypeError


def test_lane_flags_of_the_runner_and_lanes_are_what_run_lane_reads(tmp_path: Any) -> None:
    """``Runner._stopping`` and ``_Lane.revoked`` are views of the LaneFlag objects
    handed to run_lane: setting either from Python stops the C loop."""
    from mqlite.app.runner import _Lane
    from mqlite.types import TopicPartition

    lane = _Lane(TopicPartition("t", 0))
    assert not lane.revoked and not lane.revoked_flag
    lane.revoked = True
    assert lane.revoked_flag.on and bool(lane.revoked_flag)
    app = mqlite.App(str(tmp_path / "b"))

    @app.subscriber("t", group="g")
    async def h(v: bytes) -> None:
        return None
    app.start()
    try:
        runner = app._runners[0]
        assert not runner._stopping and not runner._stop_flag.on
        runner.request_stop()
        assert runner._stop_flag.on and runner._stopping
    finally:
        app.stop()


def test_run_lane_async_returns_suspends_and_hands_back_other_awaitables() -> None:
    flags = _Flags()
    seen: list[int] = []

    async def quick(v: int) -> int:
        seen.append(v)
        return v

    async def main() -> None:
        assert _core.run_lane(quick, _msgs(4, headers_at=3), 0, 1, True, json.loads, flags.stop,
                              flags.rev) == (3, _core.LANE_REPLY, 3, None)
        fut = asyncio.get_running_loop().create_future()

        async def waits(v: int) -> int:
            if v == 1:
                return await fut
            return v
        i, outcome, (coro, yielded), _ = _core.run_lane(waits, _msgs(3), 0, 1, True, json.loads,
                                                     flags.stop, flags.rev)
        assert (i, outcome, yielded) == (1, _core.LANE_SUSPENDED, fut)
        fut.get_loop().call_soon(fut.set_result, 42)
        from mqlite.app.runner import _resume
        assert await _resume(coro, yielded) == 42

        fut2 = asyncio.get_running_loop().create_future()
        fut2.set_result(7)
        i, outcome, aw, _ = _core.run_lane(lambda v: fut2, _msgs(2), 0, 1, True, json.loads,
                                        flags.stop, flags.rev)
        assert (i, outcome, aw) == (0, _core.LANE_AWAIT, fut2)

        async def raises(v: int) -> None:
            raise KeyError(v)
        i, outcome, exc, _ = _core.run_lane(raises, _msgs(2), 0, 1, True, json.loads, flags.stop,
                                         flags.rev)
        assert (i, outcome, type(exc)) == (0, _core.LANE_RAISED, KeyError)

        async def cancelled(v: int) -> None:
            raise asyncio.CancelledError
        with pytest.raises(asyncio.CancelledError):  # not an Exception: it propagates
            _core.run_lane(cancelled, _msgs(2), 0, 1, True, json.loads, flags.stop, flags.rev)
    asyncio.run(main())
    assert seen == [0, 1, 2, 3]


def test_resume_passes_cancellation_to_the_handler() -> None:
    from mqlite.app.runner import _resume

    flags = _Flags()
    events: list[str] = []

    async def h(v: int) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def drive() -> None:
        _, outcome, (coro, yielded), _ = _core.run_lane(h, _msgs(1), 0, 1, True, json.loads,
                                                     flags.stop, flags.rev)
        assert outcome == _core.LANE_SUSPENDED
        await _resume(coro, yielded)

    async def main() -> None:
        task = asyncio.ensure_future(drive())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(main())
    assert events == ["cancelled"]


def test_app_async_handlers_that_wait_keep_order_retries_and_replies(tmp_path: Any) -> None:
    app = mqlite.App(str(tmp_path / "b"))
    seen: list[int] = []
    fails = {7: 1}  # message 7 fails once (transient), then succeeds

    @app.subscriber("orders", group="g", retries=2, backoff=0.01)
    async def handle(v: int) -> int | None:
        if v % 3 == 0:
            await asyncio.sleep(0)  # suspends: finished by _resume, then the C loop goes on
        if v % 5 == 0:
            await asyncio.sleep(0.001)
        if fails.get(v):
            fails[v] -= 1
            raise RuntimeError("transient")
        seen.append(v)
        return v * 2

    async def ask() -> Any:
        return await app.request("orders", 1000, timeout=30)

    with _running(app):
        for i in range(40):
            app.publish("orders", i)
        app.wait_idle(60)
        assert seen == list(range(40))
        assert app.broker.committed_offsets("g", "orders") == {0: 40}
        assert asyncio.run(ask()) == 2000  # a request on the lean path gets its reply


def test_app_sync_lean_path_dead_letters_and_replies(tmp_path: Any) -> None:
    app = mqlite.App(str(tmp_path / "b"))
    seen: list[bytes] = []

    @app.subscriber("raw", group="g", dead_letter="raw.dlq")
    def handle(v: bytes) -> bytes:
        if v == b"bad":
            raise mqlite.Reject("no")
        seen.append(v)
        return v.upper()

    with _running(app):
        for v in (b"a", b"bad", b"c"):
            app.publish("raw", v)
        app.wait_idle(60)
        assert seen == [b"a", b"c"]
        assert [d.message.value for d in app.dead_letters("raw.dlq")] == [b"bad"]
        assert app.request_sync("raw", b"q", timeout=30) == b"Q"


class _Ctx:
    """Stands for an App Context: run_lane reads only ``_outputs``."""

    def __init__(self, m: Message) -> None:
        self.m = m
        self._outputs: list[str] = []


def test_run_lane_builds_a_ctx_per_message_and_stops_at_one_with_outputs() -> None:
    flags = _Flags()
    calls: list[tuple[Any, ...]] = []

    def h(v: int, ctx: _Ctx) -> int:
        calls.append((v, ctx.m.offset))
        if v == 2:
            ctx._outputs.append("out")
        return v
    i, outcome, obj, ctx = _core.run_lane(h, _msgs(5), 0, 1, False, json.loads, flags.stop,
                                          flags.rev, _Ctx, False)
    assert (i, outcome, obj) == (2, _core.LANE_REPLY, 2)  # its ctx has outputs: to Python
    assert ctx._outputs == ["out"] and ctx.m.offset == 2
    assert calls == [(0, 0), (1, 1), (2, 2)]
    assert _core.run_lane(h, _msgs(5), 3, 1, False, json.loads, flags.stop, flags.rev, _Ctx,
                          False) == (5, _core.LANE_DONE, None, None)

    def first(ctx: _Ctx, v: bytes) -> None:
        calls.append((ctx.m.offset, v))
    calls.clear()
    assert _core.run_lane(first, _msgs(2), 0, 0, False, None, flags.stop, flags.rev, _Ctx,
                          True)[:2] == (2, _core.LANE_DONE)
    assert calls == [(0, b"0"), (1, b"1")]

    def only(ctx: _Ctx) -> None:
        calls.append((ctx.m.offset,))
    calls.clear()
    assert _core.run_lane(only, _msgs(2), 0, 2, False, None, flags.stop, flags.rev, _Ctx,
                          False)[:2] == (2, _core.LANE_DONE)
    assert calls == [(0,), (1,)]

    async def waits(v: int, ctx: _Ctx) -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        i, outcome, _, ctx = _core.run_lane(waits, _msgs(2), 0, 1, True, json.loads,
                                            flags.stop, flags.rev, _Ctx, False)
        assert (i, outcome, ctx.m.offset) == (0, _core.LANE_SUSPENDED, 0)  # its ctx given
    asyncio.run(main())


@pytest.mark.parametrize("is_async", [False, True])
def test_app_ctx_handlers_take_the_lean_path_with_outputs_retries_and_dlq(
        is_async: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A handler taking ``ctx`` runs in the C loop (D45): one Context per message with
    its metadata; ``ctx.publish`` outputs are sent once, only for handled messages (not
    for a failed attempt), in order; retries and the DLQ as on the full path."""
    from mqlite.app import runner as runner_mod

    lean_ctx: list[bool] = []
    real = runner_mod.run_lane

    def spy(*args: Any) -> Any:
        lean_ctx.append(args[8] is not None)  # make_ctx given
        return real(*args)
    monkeypatch.setattr(runner_mod, "run_lane", spy)
    app = mqlite.App(str(tmp_path / "b"))  # no TestApp: its listeners leave the lean path
    seen: list[tuple[int, int, int, str]] = []
    fails = {4: 1}  # transient once: retried in place on the full path

    def work(v: int, ctx: mqlite.Context) -> None:
        if v == 9:
            ctx.publish("out", {"v": v})  # published, then rejected: never sent
            raise mqlite.Reject("nine")
        if v % 2 == 0:
            ctx.publish("out", {"v": v, "attempt": ctx.attempt})
        if fails.get(v):
            fails[v] -= 1
            raise RuntimeError("transient")
        seen.append((v, ctx.offset, ctx.attempt, ctx.topic))

    if is_async:
        @app.subscriber("in", group="g", retries=2, backoff=0.01, dead_letter="in.dlq")
        async def ah(v: int, ctx: mqlite.Context) -> None:
            if v % 3 == 0:
                await asyncio.sleep(0)  # waits: finished on the loop, ctx kept
            work(v, ctx)
    else:
        @app.subscriber("in", group="g", retries=2, backoff=0.01, dead_letter="in.dlq")
        def sh(ctx: mqlite.Context, v: int) -> None:
            work(v, ctx)

    with _running(app):
        for i in range(12):
            app.publish("in", i)
        app.wait_idle(60)
        assert [s[0] for s in seen] == [i for i in range(12) if i != 9]
        assert all(s[1] == s[0] and s[3] == "in" for s in seen)
        assert [s[2] for s in seen if s[0] == 4] == [2] and \
            all(s[2] == 1 for s in seen if s[0] != 4)
        outs = [json.loads(m.value) for m in app.broker.consumer(
            "out", group="check", auto_offset_reset="earliest").poll(100, timeout=5)]
        assert outs == [{"v": v, "attempt": 2 if v == 4 else 1} for v in range(0, 12, 2)]
        assert [d.message.value for d in app.dead_letters("in.dlq")] == [b"9"]
        assert app.broker.committed_offsets("g", "in") == {0: 12}
    assert lean_ctx and all(lean_ctx)


def test_context_maker_fills_every_slot_as_the_constructor() -> None:
    from mqlite.app.context import Context, context_maker

    m = _msgs(1, headers_at=0)[0]
    a, b = context_maker(3, "g", "s")(m), Context(m, 3, "g", "s")
    for name in Context.__slots__:
        assert getattr(a, name) == getattr(b, name), name
    assert a._outputs is not context_maker(3, "g", "s")(m)._outputs  # a new list each
    assert (a.topic, a.offset, a.reply_to) == ("t", 0, "r")


def test_run_lane_results_out_hands_back_a_result_to_publish() -> None:
    flags = _Flags()

    def h(v: int) -> int | None:
        return v if v % 2 else None
    assert _core.run_lane(h, _msgs(4), 0, 1, False, json.loads, flags.stop, flags.rev, None,
                          False, True) == (1, _core.LANE_REPLY, 1, None)
    assert _core.run_lane(h, _msgs(4), 0, 1, False, json.loads, flags.stop, flags.rev, None,
                          False, False)[:2] == (4, _core.LANE_DONE)  # no publisher: ignored


@pytest.mark.parametrize("is_async", [False, True])
def test_app_publisher_results_on_the_lean_path(is_async: bool, tmp_path: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``@app.publisher`` handlers run in the C loop (D45): each result other than
    ``None`` is published once with the input's key, in order; ``None`` publishes
    nothing; a failed attempt publishes nothing."""
    from mqlite.app import runner as runner_mod

    lean: list[bool] = []
    real = runner_mod.run_lane

    def spy(*args: Any) -> Any:
        lean.append(args[10])  # results_out
        return real(*args)
    monkeypatch.setattr(runner_mod, "run_lane", spy)
    app = mqlite.App(str(tmp_path / "b"))
    fails = {3: 1}

    def work(v: int) -> dict[str, int] | None:
        if fails.get(v):
            fails[v] -= 1
            raise RuntimeError("transient")
        return None if v % 4 == 0 else {"v": v}

    if is_async:
        @app.publisher("out")
        @app.subscriber("in", group="g", retries=1, backoff=0.01)
        async def ah(v: int) -> dict[str, int] | None:
            if v % 3 == 0:
                await asyncio.sleep(0)
            return work(v)
    else:
        @app.publisher("out")
        @app.subscriber("in", group="g", retries=1, backoff=0.01)
        def sh(v: int) -> dict[str, int] | None:
            return work(v)

    with _running(app):
        for i in range(10):
            app.publish("in", i, key=f"k{i}")
        app.wait_idle(60)
        got = app.broker.consumer("out", group="check",
                                  auto_offset_reset="earliest").poll(100, timeout=5)
        assert [(json.loads(m.value), m.key) for m in got] == [
            ({"v": v}, f"k{v}".encode()) for v in range(10) if v % 4]
        assert app.broker.committed_offsets("g", "in") == {0: 10}
    assert lean and all(lean)


def test_run_lane_fast_decode_and_its_fallback_for_errors() -> None:
    """``fast_decode`` decodes directly; a value it cannot decode goes to ``decode``,
    whose error is the one raised (a PayloadError in the App), at that message."""
    from mqlite.app.codec import PayloadError, fast_decoder, make_decoder

    flags = _Flags()
    for ann, good in ((None, [0, 1]), (Order, [Order(0), Order(1)])):  # Order: {"id": ...}
        decode = make_decoder(ann)
        fast = fast_decoder(decode)
        assert fast is not None
        slow: list[Any] = []

        def counting(v: bytes | None, decode: Any = decode, slow: list[Any] = slow) -> Any:
            slow.append(v)
            return decode(v)
        seen: list[Any] = []
        msgs = ([Message("t", 0, i, 0, None, json.dumps({"id": i}).encode()) for i in range(2)]
                if ann is Order else _msgs(2))
        msgs.append(Message("t", 0, 2, 0, None, b"{not json"))
        i, outcome, exc, _ = _core.run_lane(seen.append, msgs, 0, 1, False, counting,
                                            flags.stop, flags.rev, None, False, False, fast)
        assert seen == good and slow == [b"{not json"]  # the wrapper only for the error
        assert (i, outcome, type(exc)) == (2, _core.LANE_RAISED, PayloadError)
    assert fast_decoder(make_decoder(bytes)) is None  # bytes: nothing to decode


def test_app_lean_typed_payloads_and_an_invalid_one(tmp_path: Any) -> None:
    """A msgspec-typed handler on the lean path (msgspec decodes directly, D45): valid
    payloads arrive as the type; an invalid one is dead-lettered after one attempt as
    "invalid payload", with the wrapper's error text; the partition moves on."""
    app = mqlite.App(str(tmp_path / "b"))
    got: list[Order] = []

    @app.subscriber("orders", group="g", retries=3, dead_letter="orders.dlq")
    async def handle(order: Order) -> None:
        got.append(order)

    with _running(app):
        app.publish("orders", {"id": 1})
        app.publish("orders", b'{"id": "x"}')
        app.publish("orders", {"id": 3})
        app.wait_idle(60)
        assert got == [Order(1), Order(3)]
        (dl,) = app.dead_letters("orders.dlq")
        assert (dl.message.value, dl.reason, dl.delivery_count) == (
            b'{"id": "x"}', "invalid payload", 1)
        assert "does not validate as Order" in (dl.last_error or "")
        assert app.broker.committed_offsets("g", "orders") == {0: 3}
