"""A subscriber whose topic is deleted (and created again) under a running App (D84, D89).

The subscriber does not stop: it waits (health says so, not ready), never creates the
topic itself, a stop ends the wait at once, and a publish that creates the topic again ends
it; these hold for a queue and a stream subscriber alike (the stream subscriber's own
tests: test_app_stream_topic_gone.py).  Once the topic exists again a queue subscriber
receives from it with a new queue consumer.  Deliveries in flight at the deletion went with
the old topic: their settles are dropped without an error and without a second outcome.
Synchronised on events and on the App's health, never on sleeps.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest
from _polling import wait_until
from _topic_gone import (
    MODE_IDS,
    MODES,
    QUEUE,
    TIMEOUT,
    Held,
    Mode,
    app_errors,
    assert_waits,
    assert_warned_once,
    resumed,
    send,
    topic_gone_app,
    waiting,
)

from mqlite.app import TestApp


@pytest.mark.parametrize("fail_held", [False, True], ids=["held-ok", "held-fails"])
@pytest.mark.parametrize(("kind", "concurrency"), [("sync", 1), ("sync", 3), ("async", 1),
                                                   ("async", 3)])
def test_queue_subscriber_waits_for_its_deleted_topic_then_handles_the_new_one_once(
        kind: str, concurrency: int, fail_held: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mqlite.app")
    held = Held()
    app = topic_gone_app(QUEUE, kind, concurrency, held, fail_held=fail_held)
    with TestApp(app) as t:
        b = app.broker
        t.publish("jobs", {"id": 0})
        t.wait_idle()
        t.publish("jobs", {"id": 1, "hold": True})
        assert held.started.wait(TIMEOUT)
        b.delete_topic("jobs")
        held.release()  # its ack (or nack) now meets a deleted topic
        assert_waits(app, "jobs", "job")
        b.create_topic("jobs", partitions=2)
        send(b, "jobs", range(2, 42))
        resumed(app, t, "job")
        handled = Counter(p["id"] for p in t.payloads("job"))
        assert handled == Counter(range(42)) - Counter([1] if fail_held else [])
        # the held message: one outcome, counted once (its settle was dropped, not retried)
        held_events = [e.status for e in t.calls("job") if e.payload == {"id": 1, "hold": True}]
        assert held_events == (["retry"] if fail_held else ["ok"])
        # its output went with its ack: dropped (one transaction); the others' written once
        assert sorted(x["id"] for x in t.published("done")) == [0, *range(2, 42)]
        assert_warned_once(caplog)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("m", MODES, ids=MODE_IDS)
def test_stop_while_waiting_for_the_topic_is_prompt(
        m: Mode, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """``app.stop()`` ends the wait at once (graceful_timeout 600 s: a stop that waited for
    it, or for the subscriber's join limit, would take minutes)."""
    app = topic_gone_app(m, kind, 2, Held(), graceful_timeout=600.0)
    with TestApp(app):
        app.broker.delete_topic(m.topic)
        wait_until(lambda: waiting(app, m.sub), TIMEOUT, "the subscriber waiting")
        t0 = time.monotonic()
        app.stop(timeout=TIMEOUT)
        took = time.monotonic() - t0
        assert app.state == "stopped"
        assert not [r for r in caplog.records if "did not stop" in r.getMessage()]
        assert took < TIMEOUT / 2, f"stop took {took:.1f} s"
    assert app_errors(caplog) == []


@pytest.mark.parametrize("m", MODES, ids=MODE_IDS)
def test_a_publish_that_creates_the_topic_again_ends_the_wait(m: Mode) -> None:
    """``auto_create_topics`` (default): ``app.publish`` to the deleted topic creates it
    again, and the waiting subscriber handles the message."""
    app = topic_gone_app(m, "sync", 1, Held())
    with TestApp(app) as t:
        app.broker.delete_topic(m.topic)
        wait_until(lambda: waiting(app, m.sub), TIMEOUT, "the subscriber waiting")
        app.publish(m.topic, {"id": 7})
        wait_until(lambda: app.health().ready, TIMEOUT, "the subscriber receiving again")
        t.wait_idle()
        assert t.payloads(m.sub) == [{"id": 7}]
        assert t.published("done") == [{"id": 7}]
