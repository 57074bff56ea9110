"""Queue mode: a job that runs longer than ``visibility_timeout`` keeps its message (D86).

docs/app.md promises that a received message stays invisible while its job runs.  The
App used to extend only between the messages of a job, so one handler call longer than
the timeout let the message become visible again: another worker ran it concurrently,
and with ``retries`` the delivery count ran up to a dead letter of a job that succeeded.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import mqlite

VT = 2.0  # seconds; the heartbeat extends every VT / 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_job_longer_than_the_visibility_timeout_is_not_redelivered(tmp_broker_dir,
                                                                      kind: str) -> None:
    app = mqlite.App(tmp_broker_dir, durability="none")
    entered = threading.Event()
    release = threading.Event()
    attempts: list[int] = []

    if kind == "sync":
        @app.subscriber("jobs", group="w", mode="queue", visibility_timeout=VT, retries=1,
                        dead_letter="jobs.dlq")
        def job(x: int, ctx: mqlite.Context) -> None:
            attempts.append(ctx.attempt)
            entered.set()
            assert release.wait(60)
    else:
        @app.subscriber("jobs", group="w", mode="queue", visibility_timeout=VT, retries=1,
                        dead_letter="jobs.dlq")
        async def ajob(x: int, ctx: mqlite.Context) -> None:
            attempts.append(ctx.attempt)
            entered.set()
            assert await asyncio.to_thread(release.wait, 60)

    app.start()
    try:
        app.publish("jobs", 1)
        assert entered.wait(30)
        rival = app.broker.queue("jobs", "w")
        try:
            # 2.5 visibility timeouts while the handler still runs: nothing to take
            got = rival.receive(max_messages=1, timeout=2.5 * VT)
            assert [(d.offset, d.delivery_count) for d in got] == []
        finally:
            rival.close()
        release.set()
        app.wait_idle(timeout=30)
        stats = app.broker.queue_stats("jobs", "w")
        assert stats is not None
        assert (stats.consumed, stats.inflight, stats.ready) == (1, 0, 0)
        assert app.dead_letters("jobs.dlq") == []
    finally:
        release.set()
        app.stop()
    assert attempts == [1]
