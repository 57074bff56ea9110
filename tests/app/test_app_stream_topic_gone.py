"""A stream subscriber whose topic is deleted (and created again) under a running App (D89).

The rules of the queue subscriber (D84, tests/app/test_app_topic_gone.py, which also runs
the tests both modes share: a stop ends the wait at once, a publish that creates the topic
ends it): the subscriber does not stop, it waits (one warning, health says so, not ready),
never creates the topic itself, and once the topic exists again it reads it with a new
group consumer, from the new topic's first message: never from an offset the group
committed on the deleted topic.  A subscriber of two topics keeps reading the one that
exists while it waits for the other (as a Kafka consumer subscribed to a list does).
Synchronised on events and on the App's health, never on sleeps.
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from _polling import wait_until
from _topic_gone import (
    STREAM,
    TIMEOUT,
    Held,
    assert_waits,
    assert_warned_once,
    resumed,
    send,
    topic_gone_app,
    waiting,
)

from mqlite.app import TestApp

KINDS = [("sync", 1), ("sync", 3), ("async", 1), ("async", 3)]


@pytest.mark.parametrize(("kind", "concurrency"), KINDS)
def test_stream_subscriber_waits_for_its_deleted_topic_then_reads_the_new_one_from_its_start(
        kind: str, concurrency: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mqlite.app")
    held = Held()
    app = topic_gone_app(STREAM, kind, concurrency, held, ["events"])
    with TestApp(app) as t:
        b = app.broker
        send(b, "events", range(6), 2)  # the group commits offset 3 on each old partition
        t.wait_idle()
        assert b.committed_offsets("readers", "events") == {0: 3, 1: 3}
        t.publish("events", {"id": 6, "hold": True}, partition=0)
        assert held.started.wait(TIMEOUT)
        b.delete_topic("events")
        held.release()  # its lane finishes; its offset has nowhere to go
        assert_waits(app, "events", "read")
        b.create_topic("events", partitions=2)
        send(b, "events", range(10, 50), 2)  # offsets 0..19 of each new partition
        resumed(app, t, "read")
        # every message of the new topic once: none below the old committed offset 3 skipped
        handled = Counter(p["id"] for p in t.payloads("read"))
        assert handled == Counter([*range(7), *range(10, 50)])
        assert b.committed_offsets("readers", "events") == {0: 20, 1: 20}
        assert_warned_once(caplog)


@pytest.mark.parametrize(("kind", "concurrency"), [("sync", 1), ("async", 3)])
def test_a_subscriber_of_two_topics_reads_the_other_while_it_waits_for_the_deleted_one(
        kind: str, concurrency: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mqlite.app")
    app = topic_gone_app(STREAM, kind, concurrency, Held(), ["a", "b"])
    with TestApp(app) as t:
        b = app.broker
        send(b, "a", range(4), 2)
        send(b, "b", range(100, 104), 2)
        t.wait_idle()
        b.delete_topic("a")
        assert_waits(app, "a", "read")
        send(b, "b", range(104, 124), 2)  # read while "a" is waited for
        wait_until(lambda: len(t.payloads("read")) == 28, TIMEOUT, "b's messages handled")
        assert waiting(app, "read") is not None
        assert "a" not in b.topics()
        b.create_topic("a", partitions=2)
        send(b, "a", range(10, 30), 2)
        send(b, "b", range(124, 130), 2)
        resumed(app, t, "read")
        handled = Counter(p["id"] for p in t.payloads("read"))
        assert handled == Counter([*range(4), *range(10, 30), *range(100, 130)])
        assert sum(b.committed_offsets("readers", "a").values()) == 20
        assert sum(b.committed_offsets("readers", "b").values()) == 30
        assert_warned_once(caplog)
