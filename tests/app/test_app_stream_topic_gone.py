"""A stream subscriber whose topic is deleted (and created again) under a running App (D89).

The rules of the queue subscriber (D84, tests/app/test_app_topic_gone.py): the subscriber
does not stop, it waits (one warning, health says so, not ready), never creates the topic
itself, a stop ends the wait at once, and once the topic exists again it reads it with a
new group consumer, from the new topic's first message: never from an offset the group
committed on the deleted topic.  A subscriber of two topics keeps reading the one that
exists while it waits for the other (as a Kafka consumer subscribed to a list does).
Synchronised on events and on the App's health, never on sleeps.
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


def _stream_app(kind: str, concurrency: int, held: Held, topics: list[str],
                graceful_timeout: float = 30.0) -> mqlite.App:
    app = mqlite.App("unused", name="s", graceful_timeout=graceful_timeout)

    def on(x: dict) -> dict:
        if x.get("hold"):
            held.started.set()
            held.released.wait(TIMEOUT)
        return {"id": x["id"]}

    if kind == "sync":
        @app.subscriber(topics, group="readers", concurrency=concurrency, partitions=2,
                        backoff=0.0)
        @app.publisher("done")
        def read(x: dict) -> dict:
            return on(x)
    else:
        @app.subscriber(topics, group="readers", concurrency=concurrency, partitions=2,
                        backoff=0.0)
        @app.publisher("done")
        async def read(x: dict) -> dict:  # type: ignore[misc]  # the other branch's name
            if x.get("hold"):
                return await asyncio.get_running_loop().run_in_executor(None, on, x)
            return on(x)
    return app


def _waiting(app: mqlite.App) -> dict[str, Any] | None:
    """The subscriber's health entry once it waits; fails at once if it stopped instead."""
    h = app.health().subscribers["read"]
    assert h["error"] is None, f"the subscriber stopped: {h['error']}"
    return h if h.get("waiting") else None


def _app_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "mqlite.app" and r.levelno >= logging.ERROR]


def _send(b: mqlite.Broker, topic: str, ids: range) -> None:
    for i in ids:
        b.send(topic, msgspec.json.encode({"id": i}), partition=i % 2)


KINDS = [("sync", 1), ("sync", 3), ("async", 1), ("async", 3)]


@pytest.mark.parametrize(("kind", "concurrency"), KINDS)
def test_stream_subscriber_waits_for_its_deleted_topic_then_reads_the_new_one_from_its_start(
        kind: str, concurrency: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mqlite.app")
    held = Held()
    app = _stream_app(kind, concurrency, held, ["events"])
    with TestApp(app) as t:
        b = app.broker
        _send(b, "events", range(6))  # the group commits offset 3 on each old partition
        t.wait_idle()
        assert b.committed_offsets("readers", "events") == {0: 3, 1: 3}
        t.publish("events", {"id": 6, "hold": True}, partition=0)
        assert held.started.wait(TIMEOUT)
        b.delete_topic("events")
        held.released.set()  # its lane finishes; its offset has nowhere to go
        h = wait_until(lambda: _waiting(app), TIMEOUT, "the subscriber waiting")
        assert "'events' was deleted" in h["waiting"] and h["ready"] is False
        assert app.health().ready is False
        assert "events" not in b.topics()  # the App does not create it while running
        b.create_topic("events", partitions=2)
        _send(b, "events", range(10, 50))  # offsets 0..19 of each new partition
        wait_until(lambda: app.health().ready, TIMEOUT, "the subscriber reading again")
        t.wait_idle()
        assert app.health().subscribers["read"]["waiting"] is None
        # every message of the new topic once: none below the old committed offset 3 skipped
        handled = Counter(p["id"] for p in t.payloads("read"))
        assert handled == Counter([*range(7), *range(10, 50)])
        assert b.committed_offsets("readers", "events") == {0: 20, 1: 20}
        assert _app_errors(caplog) == []
        warned = [r.getMessage() for r in caplog.records
                  if "was deleted; waiting" in r.getMessage()]
        assert len(warned) == 1, warned


@pytest.mark.parametrize(("kind", "concurrency"), [("sync", 1), ("async", 3)])
def test_a_subscriber_of_two_topics_reads_the_other_while_it_waits_for_the_deleted_one(
        kind: str, concurrency: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mqlite.app")
    app = _stream_app(kind, concurrency, Held(), ["a", "b"])
    with TestApp(app) as t:
        b = app.broker
        _send(b, "a", range(4))
        _send(b, "b", range(100, 104))
        t.wait_idle()
        b.delete_topic("a")
        h = wait_until(lambda: _waiting(app), TIMEOUT, "the subscriber waiting")
        assert "'a' was deleted" in h["waiting"] and h["ready"] is False
        _send(b, "b", range(104, 124))  # read while "a" is waited for
        wait_until(lambda: len(t.payloads("read")) == 28, TIMEOUT, "b's messages handled")
        assert _waiting(app) is not None
        assert "a" not in b.topics()
        b.create_topic("a", partitions=2)
        _send(b, "a", range(10, 30))
        _send(b, "b", range(124, 130))
        wait_until(lambda: app.health().ready, TIMEOUT, "the subscriber reading both")
        t.wait_idle()
        handled = Counter(p["id"] for p in t.payloads("read"))
        assert handled == Counter([*range(4), *range(10, 30), *range(100, 130)])
        assert sum(b.committed_offsets("readers", "a").values()) == 20
        assert sum(b.committed_offsets("readers", "b").values()) == 30
        assert _app_errors(caplog) == []


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_stop_while_a_stream_subscriber_waits_for_its_topic_is_prompt(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """``app.stop()`` ends the wait at once (graceful_timeout 600 s: a stop that waited for
    it, or for the subscriber's join limit, would take minutes)."""
    app = _stream_app(kind, 2, Held(), ["events"], graceful_timeout=600.0)
    with TestApp(app):
        app.broker.delete_topic("events")
        wait_until(lambda: _waiting(app), TIMEOUT, "the subscriber waiting")
        t0 = time.monotonic()
        app.stop(timeout=TIMEOUT)
        took = time.monotonic() - t0
        assert app.state == "stopped"
        assert not [r for r in caplog.records if "did not stop" in r.getMessage()]
        assert took < TIMEOUT / 2, f"stop took {took:.1f} s"
    assert _app_errors(caplog) == []


def test_a_publish_that_creates_the_stream_topic_again_ends_the_wait() -> None:
    """``auto_create_topics`` (default): ``app.publish`` to the deleted topic creates it
    again, and the waiting subscriber handles the message."""
    app = _stream_app("sync", 1, Held(), ["events"])
    with TestApp(app) as t:
        app.broker.delete_topic("events")
        wait_until(lambda: _waiting(app), TIMEOUT, "the subscriber waiting")
        app.publish("events", {"id": 7})
        wait_until(lambda: app.health().ready, TIMEOUT, "the subscriber reading again")
        t.wait_idle()
        assert t.payloads("read") == [{"id": 7}]
        assert t.published("done") == [{"id": 7}]
