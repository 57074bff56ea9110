"""Time options name their unit and refuse implausible values (issue 9, part 7).

Kafka's options are milliseconds, mqlite's durations are seconds: a
``session_timeout=30000`` used to mean 8.3 hours and a ``deliver_at`` in
milliseconds 55,000 years ahead.  And ``mqlite.open("")`` used to turn the
current directory into a broker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import mqlite
from mqlite.config import _human, require_seconds, require_unix_time


@pytest.fixture
def tbroker(broker: mqlite.Broker) -> mqlite.Broker:
    broker.create_topic("t")
    return broker


class _EmptyPathLike:
    def __fspath__(self) -> str:
        return ""


@pytest.mark.parametrize("path", ["", _EmptyPathLike()], ids=["str", "PathLike"])
# (Path("") is Path("."): an explicit current directory, accepted)
def test_open_refuses_an_empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    path: object) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="empty path"):
        mqlite.open(path)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []  # the current directory was left alone


def test_session_timeout_in_ms_is_refused_naming_the_unit(tbroker: mqlite.Broker) -> None:
    with pytest.raises(ValueError) as ei:
        tbroker.consumer("t", group="g", session_timeout=30000)
    assert str(ei.value) == ("session_timeout is in seconds (got 30000, which is 8.33 hours; "
                             "the limit is 1 hour); did you mean 30.0?")
    with tbroker.consumer("t", group="g", session_timeout=3600):
        pass


def test_max_poll_interval_in_ms_is_refused(tbroker: mqlite.Broker) -> None:
    with pytest.raises(ValueError, match="max_poll_interval is in seconds.*did you mean 300.0"):
        tbroker.consumer("t", group="g", max_poll_interval=300_000)


def test_deliver_at_in_ms_is_refused_naming_the_unit(tbroker: mqlite.Broker) -> None:
    at_ms = time.time() * 1000 + 60_000
    with pytest.raises(ValueError, match=r"deliver_at is a UNIX time in seconds .* years "
                                         r"ahead.*did you mean"):
        tbroker.send("t", b"x", deliver_at=at_ms)
    md = tbroker.send("t", b"x", deliver_at=time.time() + 60)
    assert md.offset == -1


def test_deliver_at_in_the_past_is_due_at_once(tbroker: mqlite.Broker) -> None:
    assert tbroker.send("t", b"x", deliver_at=1.0).offset == -1


@pytest.mark.parametrize("call", [
    lambda b: b.send("t", b"x", delay=20 * 365.25 * 86400),
    lambda b: b.queue("t", "q", visibility_timeout=86_400),
    lambda b: b.queue("t", "q", retry_backoff=1e12),
    lambda b: b.producer(linger_ms=600_000),
    lambda b: mqlite.Backoff.fixed(1e12),
], ids=["delay", "visibility_timeout", "retry_backoff", "linger_ms", "Backoff.base"])
def test_implausible_durations_are_refused(tbroker: mqlite.Broker,
                                           call: Callable[[mqlite.Broker], object]) -> None:
    with pytest.raises(ValueError, match="is in (milli)?seconds"):
        call(tbroker)


def test_queue_call_durations_are_bounded(tbroker: mqlite.Broker) -> None:
    tbroker.send("t", b"x")
    with tbroker.queue("t", "q") as q:
        with pytest.raises(ValueError, match="visibility_timeout is in seconds"):
            q.receive(timeout=0, visibility_timeout=1e6)
        (d,) = q.receive(timeout=1)
        with pytest.raises(ValueError, match="seconds is in seconds"):
            q.extend(d, 1e6)
        with pytest.raises(ValueError, match="delay is in seconds"):
            q.nack(d, delay=1e10)
        q.ack(d)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_seconds_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        require_seconds(bad, "x", maximum=10)
    with pytest.raises(ValueError):
        require_unix_time(bad, "x", now=time.time())


def test_type_errors_stay_type_errors(tbroker: mqlite.Broker) -> None:
    with pytest.raises(TypeError):
        tbroker.consumer("t", group="g", session_timeout="30")  # type: ignore[arg-type]  # checks the TypeError
    with pytest.raises(TypeError):
        tbroker.send("t", b"x", deliver_at="tomorrow")  # type: ignore[arg-type]  # checks the TypeError
    with pytest.raises(TypeError):
        require_seconds(True, "x", maximum=10)


def test_human_durations() -> None:
    assert [_human(x) for x in (0.5, 1, 90, 30000, 86400 * 3)] == [
        "0.5 seconds", "1 second", "1.5 minutes", "8.33 hours", "3 days"]
