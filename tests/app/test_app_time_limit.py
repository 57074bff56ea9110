"""Queue mode: ``time_limit=`` bounds one handler call (D88).

Since D86 the heartbeat keeps a running job's messages invisible, so a hung handler
held them for as long as its process lived.  Now a call past ``time_limit`` fails with
``mqlite.TimeLimitExceeded`` through the subscriber's retries / dead letter: an
``async def`` handler is cancelled; a plain ``def`` handler's thread is abandoned (it runs
on, what it returns is discarded) and the subscriber goes on with a new thread.

Nothing here sleeps to synchronise: handlers block on events the test sets.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

import mqlite

LIMIT = 0.5  # seconds


def _events(app: mqlite.App) -> list[mqlite.app.HandlerEvent]:
    seen: list[mqlite.app.HandlerEvent] = []
    app.add_listener(seen.append)
    return seen


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_call_over_its_limit_is_retried_then_dead_lettered(tmp_broker_dir, caplog, kind: str,
                                                             concurrency: int) -> None:
    """``hang`` jobs never finish by themselves: each attempt fails at the limit, the
    message is dead-lettered after ``retries``; ``ok`` jobs published after it are handled
    (the subscriber goes on while abandoned sync calls still run)."""
    app = mqlite.App(tmp_broker_dir, durability="none")
    release = threading.Event()  # set at the end: the abandoned sync calls return then
    cancelled: list[int] = []
    done: list[int] = []
    late: list[int] = []

    if kind == "sync":
        @app.subscriber("jobs", group="w", mode="queue", time_limit=LIMIT, retries=1,
                        backoff=None, dead_letter="jobs.dlq", concurrency=concurrency,
                        batch=1)
        @app.publisher("out")
        def job(x: dict, ctx: mqlite.Context) -> dict:
            if x["hang"]:
                release.wait(120)
                late.append(x["id"])
                ctx.publish("out", {"late": x["id"]})
                return {"late": x["id"]}
            done.append(x["id"])
            return {"id": x["id"]}
    else:
        @app.subscriber("jobs", group="w", mode="queue", time_limit=LIMIT, retries=1,
                        backoff=None, dead_letter="jobs.dlq", concurrency=concurrency,
                        batch=1)
        @app.publisher("out")
        async def ajob(x: dict, ctx: mqlite.Context) -> dict:
            if x["hang"]:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.append(x["id"])
                    raise
            done.append(x["id"])
            return {"id": x["id"]}

    seen = _events(app)
    caplog.set_level(logging.WARNING, logger="mqlite.app")
    app.start()
    try:
        app.publish("jobs", {"id": 0, "hang": True})
        for i in range(1, 6):
            app.publish("jobs", {"id": i, "hang": False})
        app.wait_idle(timeout=60)
        dl = app.dead_letters("jobs.dlq")
        assert len(dl) == 1
        hs = dict(dl[0].message.headers)
        assert hs["x-error-type"] == b"TimeLimitExceeded"
        assert "time_limit" in (dl[0].last_error or "")
        assert sorted(done) == [1, 2, 3, 4, 5]
        finals = [(e.offset, e.status, type(e.error).__name__) for e in seen
                  if e.status is not None and e.offset == 0]
        assert finals == [(0, "retry", "TimeLimitExceeded"),
                          (0, "dead_letter", "TimeLimitExceeded")]
        warned = [r for r in caplog.records if "(attempt"
                  in r.getMessage() and r.levelno == logging.WARNING]
        assert len(warned) == 2 and "jobs[0]@0" in warned[0].getMessage()
        assert "job" in warned[0].getMessage()
        if kind == "sync":
            assert app.health().subscribers["job"]["overdue"] == 2
        else:
            assert cancelled == [0, 0]
    finally:
        release.set()
        app.stop()
    # the late returns of the abandoned calls wrote nothing and counted nothing more
    outs = app.broker.consumer("out")
    got = []
    while True:
        batch = outs.poll(timeout=0.5)
        if not batch:
            break
        got += [m.value for m in batch]
    outs.close()
    assert sorted(got) == sorted(f'{{"id":{i}}}'.encode() for i in range(1, 6))
    assert [e for e in seen if e.offset == 0 and e.status == "ok"] == []
    if kind == "sync":
        assert sorted(late) == [0, 0]


def test_an_abandoned_call_releases_the_rest_of_its_job(tmp_broker_dir) -> None:
    """A sync job of several messages whose first call hangs: the messages it finished
    before are acked with their outputs, those after it go to another thread at once
    (not after ``visibility_timeout``), the hung one is retried."""
    app = mqlite.App(tmp_broker_dir, durability="none")
    release = threading.Event()
    handled: list[tuple[int, int]] = []

    @app.subscriber("jobs", group="w", mode="queue", time_limit=LIMIT, retries=3,
                    backoff=None, dead_letter="jobs.dlq", visibility_timeout=600, batch=10)
    @app.publisher("out")
    def job(x: int, ctx: mqlite.Context) -> int:
        if x == 2 and ctx.attempt == 1:
            release.wait(120)
        handled.append((x, ctx.attempt))
        return x

    for i in range(5):  # before the start: one receive takes all five into one job
        app.publish("jobs", i)
    app.start()
    try:
        app.wait_idle(timeout=60)  # visibility_timeout=600: only the release can be this fast
        assert app.dead_letters("jobs.dlq") == []
        first = [x for x, a in handled if a == 1]
        assert first == [0, 1]
        assert sorted(x for x, a in handled if a == 2) == [2, 3, 4]
    finally:
        release.set()
        app.stop()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_call_within_its_limit_is_untouched(tmp_broker_dir, kind: str) -> None:
    app = mqlite.App(tmp_broker_dir, durability="none")
    seen = _events(app)

    if kind == "sync":
        @app.subscriber("jobs", group="w", mode="queue", time_limit=60)
        def job(x: int) -> None:
            if x == 1:
                raise TimeoutError("the handler's own timeout")  # not the limit's
    else:
        @app.subscriber("jobs", group="w", mode="queue", time_limit=60, retries=0)
        async def ajob(x: int) -> None:
            if x == 1:
                raise TimeoutError("the handler's own timeout")

    app.start()
    try:
        app.publish("jobs", 0)
        app.publish("jobs", 1)
        app.wait_idle(timeout=60)
    finally:
        app.stop()
    errs = {type(e.error).__name__ for e in seen if e.error is not None}
    assert errs == {"TimeoutError"}
    assert [e.status for e in seen if e.offset == 0 and e.status] == ["ok"]


def test_time_limit_option() -> None:
    from mqlite.app.subscriber import DEFAULT_TIME_LIMIT

    app = mqlite.App("/nonexistent-unused", durability="none")

    def h(x: int) -> None:
        return None

    assert DEFAULT_TIME_LIMIT == 3600.0
    app.subscriber("a", mode="queue", name="a")(h)
    app.subscriber("b", mode="queue", name="b", time_limit=None)(h)
    app.subscriber("c", mode="queue", name="c", time_limit=2)(h)
    app.subscriber("d", name="d")(h)
    limits = {s.name: s.time_limit for s in app.subscribers}
    assert limits == {"a": 3600.0, "b": None, "c": 2.0, "d": None}
    for bad in (0, -1, float("nan"), 7 * 86400 + 1):
        with pytest.raises(ValueError, match="time_limit is in seconds"):
            app.subscriber("e", mode="queue", name="e", time_limit=bad)(h)
    for wrong in ("10", True):
        with pytest.raises(TypeError, match="time_limit must be a number of seconds"):
            app.subscriber("e", mode="queue", name="e", time_limit=wrong)(h)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time_limit is for mode='queue'"):
        app.subscriber("e", name="e", time_limit=5)(h)
    e = mqlite.TimeLimitExceeded(2.5, "job")
    assert isinstance(e, TimeoutError) and isinstance(e, mqlite.MqliteError)
    assert (e.limit, e.subscriber) == (2.5, "job")
