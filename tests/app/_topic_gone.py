"""What the tests of a subscriber whose topic is deleted under a running App share, for a
queue subscriber (D84, test_app_topic_gone.py) and a stream subscriber (D89,
test_app_stream_topic_gone.py): the App under test, its held message, and the checks of its
wait (health, log).  Synchronised on events and on the App's health, never on sleeps."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from _polling import wait_until

import mqlite
from mqlite.app import TestApp

__all__ = ["MODES", "MODE_IDS", "QUEUE", "STREAM", "TIMEOUT", "Held", "Mode", "app_errors",
           "assert_waits", "assert_warned_once", "resumed", "send", "topic_gone_app",
           "waiting"]

TIMEOUT = 60.0


class Held:
    """The message with ``"hold": true`` blocks its handler until :meth:`release`."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()


@dataclass(frozen=True)
class Mode:
    """One subscriber mode of these tests: how :func:`topic_gone_app` subscribes."""

    mode: str  # the subscriber's ``mode``
    topic: str  # the topic it reads (a stream test may give a list instead)
    sub: str  # the handler's name: its health entry and TestApp's record
    group: str
    partitions: int | None  # the subscriber's ``partitions``

    @property
    def app_name(self) -> str:
        return self.mode[0]


QUEUE = Mode("queue", "jobs", "job", "workers", None)
STREAM = Mode("stream", "events", "read", "readers", 2)
MODES = [QUEUE, STREAM]
MODE_IDS = [m.mode for m in MODES]


def topic_gone_app(m: Mode, kind: str, concurrency: int, held: Held,
                   topics: list[str] | None = None, *, fail_held: bool = False,
                   graceful_timeout: float = 30.0) -> mqlite.App:
    """An App with one ``kind`` (``"sync"``/``"async"``) subscriber of ``topics`` (default
    ``m.topic``) that publishes ``{"id": ...}`` to ``"done"`` for each message handled; the
    held message blocks until released, then fails (retried) if ``fail_held``."""
    app = mqlite.App("unused", name=m.app_name, graceful_timeout=graceful_timeout)
    subscribe = app.subscriber(topics or m.topic, group=m.group, mode=m.mode,
                               concurrency=concurrency, partitions=m.partitions, backoff=0.0,
                               name=m.sub)

    def on(x: dict) -> dict:
        if x.get("hold"):
            held.started.set()
            held.released.wait(TIMEOUT)
            if fail_held:
                raise RuntimeError("transient")
        return {"id": x["id"]}

    if kind == "sync":
        @subscribe
        @app.publisher("done")
        def handle(x: dict) -> dict:
            return on(x)
    else:
        @subscribe
        @app.publisher("done")
        async def ahandle(x: dict) -> dict:
            if x.get("hold"):
                return await asyncio.get_running_loop().run_in_executor(None, on, x)
            return on(x)
    return app


def send(b: mqlite.Broker, topic: str, ids: range, partitions: int | None = None) -> None:
    """One message ``{"id": i}`` per id (``partitions``: to partition ``i % partitions``)."""
    for i in ids:
        b.send(topic, msgspec.json.encode({"id": i}),
               partition=None if partitions is None else i % partitions)


def waiting(app: mqlite.App, sub: str) -> dict[str, Any] | None:
    """The subscriber's health entry once it waits; fails at once if it stopped instead."""
    h = app.health().subscribers[sub]
    assert h["error"] is None, f"the subscriber stopped: {h['error']}"
    return h if h.get("waiting") else None


def assert_waits(app: mqlite.App, topic: str, sub: str) -> None:
    """Once ``topic`` is deleted: ``sub`` waits, says so in its health, the App is not
    ready, and nothing created the topic again."""
    h = wait_until(lambda: waiting(app, sub), TIMEOUT, "the subscriber waiting")
    assert f"'{topic}' was deleted" in h["waiting"] and h["ready"] is False
    assert app.health().ready is False
    assert topic not in app.broker.topics()  # the App does not create it while running


def resumed(app: mqlite.App, t: TestApp, sub: str) -> None:
    """Once the topic exists again: the App ready, ``sub`` no longer waiting, and all sent
    so far handled."""
    wait_until(lambda: app.health().ready, TIMEOUT, "the subscriber receiving again")
    t.wait_idle()
    assert app.health().subscribers[sub]["waiting"] is None


def app_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "mqlite.app" and r.levelno >= logging.ERROR]


def assert_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    """No error logged, and the wait warned about once."""
    assert app_errors(caplog) == []
    warned = [r.getMessage() for r in caplog.records
              if "was deleted; waiting" in r.getMessage()]
    assert len(warned) == 1, warned
