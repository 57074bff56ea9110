"""A queue subscriber whose topic is deleted (and created again) under a running App (D84).

The subscriber does not stop: it waits (health says so, not ready), never creates the
topic itself, and once the topic exists again receives from it with a new queue consumer.
Deliveries in flight at the deletion went with the old topic: their settles are dropped
without an error and without a second outcome.  Synchronised on events and on the App's
health, never on sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from typing import Any

import msgspec
import pytest
from _polling import wait_until

import mqlite
from mqlite.app import TestApp

TIMEOUT = 60.0


class Held:
    """The message with ``"hold": true`` blocks its handler until :meth:`release`."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()


def _queue_app(kind: str, concurrency: int, held: Held, fail_held: bool = False,
               graceful_timeout: float = 30.0) -> mqlite.App:
    app = mqlite.App("unused", name="q", graceful_timeout=graceful_timeout)

    def on(x: dict) -> dict:
        if x.get("hold"):
            held.started.set()
            held.released.wait(TIMEOUT)
            if fail_held:
                raise RuntimeError("transient")
        return {"id": x["id"]}

    if kind == "sync":
        @app.subscriber("jobs", group="workers", mode="queue", concurrency=concurrency,
                        backoff=0.0)
        @app.publisher("done")
        def job(x: dict) -> dict:
            return on(x)
    else:
        @app.subscriber("jobs", group="workers", mode="queue", concurrency=concurrency,
                        backoff=0.0)
        @app.publisher("done")
        async def job(x: dict) -> dict:  # type: ignore[misc]  # the other branch's name
            if x.get("hold"):
                return await asyncio.get_running_loop().run_in_executor(None, on, x)
            return on(x)
    return app


def _waiting(app: mqlite.App) -> dict[str, Any] | None:
    """The subscriber's health entry once it waits; fails at once if it stopped instead."""
    h = app.health().subscribers["job"]
    assert h["error"] is None, f"the subscriber stopped: {h['error']}"
    return h if h.get("waiting") else None


def _app_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "mqlite.app" and r.levelno >= logging.ERROR]


@pytest.mark.parametrize("fail_held", [False, True], ids=["held-ok", "held-fails"])
@pytest.mark.parametrize(("kind", "concurrency"), [("sync", 1), ("sync", 3), ("async", 1),
                                                   ("async", 3)])
def test_queue_subscriber_waits_for_its_deleted_topic_then_handles_the_new_one_once(
        kind: str, concurrency: int, fail_held: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mqlite.app")
    held = Held()
    app = _queue_app(kind, concurrency, held, fail_held)
    with TestApp(app) as t:
        b = app.broker
        t.publish("jobs", {"id": 0})
        t.wait_idle()
        t.publish("jobs", {"id": 1, "hold": True})
        assert held.started.wait(TIMEOUT)
        b.delete_topic("jobs")
        held.release()  # its ack (or nack) now meets a deleted topic
        h = wait_until(lambda: _waiting(app), TIMEOUT, "the subscriber waiting")
        assert "'jobs' was deleted" in h["waiting"] and h["ready"] is False
        assert app.health().ready is False
        assert "jobs" not in b.topics()  # the App does not create it while running
        b.create_topic("jobs", partitions=2)
        for i in range(2, 42):
            b.send("jobs", msgspec.json.encode({"id": i}))
        wait_until(lambda: app.health().ready, TIMEOUT, "the subscriber receiving again")
        t.wait_idle()
        assert app.health().subscribers["job"]["waiting"] is None
        handled = Counter(p["id"] for p in t.payloads("job"))
        assert handled == Counter(range(42)) - Counter([1] if fail_held else [])
        # the held message: one outcome, counted once (its settle was dropped, not retried)
        held_events = [e.status for e in t.calls("job") if e.payload == {"id": 1, "hold": True}]
        assert held_events == (["retry"] if fail_held else ["ok"])
        # its output went with its ack: dropped (one transaction); the others' written once
        assert sorted(x["id"] for x in t.published("done")) == [0, *range(2, 42)]
        assert _app_errors(caplog) == []
        warned = [r.getMessage() for r in caplog.records
                  if "was deleted; waiting" in r.getMessage()]
        assert len(warned) == 1, warned


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_stop_while_waiting_for_the_topic_is_prompt(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """``app.stop()`` ends the wait at once (graceful_timeout 600 s: a stop that waited for
    it, or for the subscriber's join limit, would take minutes)."""
    held = Held()
    app = _queue_app(kind, 2, held, graceful_timeout=600.0)
    with TestApp(app):
        app.broker.delete_topic("jobs")
        wait_until(lambda: _waiting(app), TIMEOUT, "the subscriber waiting")
        t0 = time.monotonic()
        app.stop(timeout=TIMEOUT)
        took = time.monotonic() - t0
        assert app.state == "stopped"
        assert not [r for r in caplog.records if "did not stop" in r.getMessage()]
        assert took < TIMEOUT / 2, f"stop took {took:.1f} s"
    assert _app_errors(caplog) == []


def test_a_publish_that_creates_the_topic_again_ends_the_wait() -> None:
    """``auto_create_topics`` (default): ``app.publish`` to the deleted topic creates it
    again, and the waiting subscriber handles the message."""
    held = Held()
    app = _queue_app("sync", 1, held)
    with TestApp(app) as t:
        app.broker.delete_topic("jobs")
        wait_until(lambda: _waiting(app), TIMEOUT, "the subscriber waiting")
        app.publish("jobs", {"id": 7})
        wait_until(lambda: app.health().ready, TIMEOUT, "the subscriber receiving again")
        t.wait_idle()
        assert t.payloads("job") == [{"id": 7}]
        assert t.published("done") == [{"id": 7}]
