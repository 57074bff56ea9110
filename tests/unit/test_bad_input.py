"""Bad input gets a clean TypeError/ValueError before any storage call.

Each rejected call must leave the broker exactly as it was: no LMDB commit
(the environment's last transaction id is unchanged), no file created or
changed anywhere under the test's temporary directory (so a topic name can
never become a path).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

import mqlite
from mqlite import TopicPartition

BAD_TOPIC_NAMES = [
    "",
    "a" * 250,
    "x" * 10_000,
    "a/b",
    "/etc/passwd",
    "../escape",
    "x/../../y",
    "..",
    ".",
    "a\x00b",
    "\x00",
    "a\nb",
    "tab\there",
    "bell\x07",
    "del\x7f",
    "cr\r",
    "a b",
    " lead",
    "a\\b",
    "c:drive",
    "star*",
    "hash#",
    "t\u00f3pico",
    "\u65e5\u672c\u8a9e",
    "zero\u200bwidth",
    "\uff41\uff42",  # full-width letters
    "emoji\U0001f600",
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with (mode, size); data files' sizes included."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size)
    return out


class Unchanged:
    """Asserts nothing was committed and no file appeared or changed."""

    def __init__(self, broker: mqlite.Broker, root: Path) -> None:
        self.broker = broker
        self.root = root

    def __enter__(self) -> Self:
        self.txnid = self.broker._engine.env.handle().info()["last_txnid"]
        self.tree = _tree(self.root)
        self.cwd = set(os.listdir("."))
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        assert self.broker._engine.env.handle().info()["last_txnid"] == self.txnid, "a commit happened"
        assert _tree(self.root) == self.tree, "files changed under the test directory"
        assert set(os.listdir(".")) == self.cwd, "a file appeared in the working directory"


@pytest.fixture
def unchanged(broker: mqlite.Broker, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Unchanged]]:
    # Relative paths (a topic "../escape") would resolve against the cwd: make it ours.
    monkeypatch.chdir(tmp_path)
    broker.create_topic("good", partitions=2)
    broker.send("good", b"seed")
    yield lambda: Unchanged(broker, tmp_path)


def _send_at(p: mqlite.Producer, ts: Any) -> Any:
    return p.send("good", b"v", timestamp_ms=ts)


def _with_producer(b: mqlite.Broker, fn: Callable[[Any], Any]) -> Any:
    with b.producer(linger_ms=0) as p:
        return fn(p)


TOPIC_CALLS: dict[str, Callable[[mqlite.Broker, Any], Any]] = {
    "create_topic": lambda b, t: b.create_topic(t),
    "create_topic_exist_ok": lambda b, t: b.create_topic(t, exist_ok=True),
    "send": lambda b, t: b.send(t, b"v"),
    "send_keyed": lambda b, t: b.send(t, b"v", key=b"k", dedup_id="d"),
    "send_delayed": lambda b, t: b.send(t, b"v", delay=0.5),
    "send_batch": lambda b, t: b.send_batch(t, [b"v"]),
    "describe_topic": lambda b, t: b.describe_topic(t),
    "delete_topic": lambda b, t: b.delete_topic(t),
    "topic_config": lambda b, t: b.topic_config(t),
    "partitions_for": lambda b, t: b.partitions_for(t),
    "read": lambda b, t: b.read(t),
    "apply_retention": lambda b, t: b.apply_retention(t),
    "consumer": lambda b, t: b.consumer(t),
    "consumer_list": lambda b, t: b.consumer(["good", t]),
    "subscribe": lambda b, t: b.consumer().subscribe([t]),
    "assign": lambda b, t: b.consumer().assign([TopicPartition(t, 0)]),
    "assign_tuple": lambda b, t: b.consumer().assign([(t, 0)]),  # a (topic, partition) tuple is accepted too
    "producer_send": lambda b, t: _with_producer(b, lambda p: p.send(t, b"v")),
}


@pytest.mark.parametrize("name", BAD_TOPIC_NAMES, ids=repr)
@pytest.mark.parametrize("call", list(TOPIC_CALLS), ids=str)
def test_bad_topic_name_is_invalid_topic_error(broker: mqlite.Broker,
                                               unchanged: Callable[[], Unchanged],
                                               call: str, name: str) -> None:
    with unchanged(), pytest.raises(mqlite.InvalidTopicError) as info:
        TOPIC_CALLS[call](broker, name)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, mqlite.MqliteError)
    assert "invalid topic name" in str(info.value)
    assert broker.topics() == ["good"]


@pytest.mark.parametrize("name", [b"bytes", 7, None, 1.5, ["t"]], ids=repr)
def test_non_str_topic_name_is_type_error(broker: mqlite.Broker,
                                          unchanged: Callable[[], Unchanged], name: Any) -> None:
    for call in ("create_topic", "send", "send_batch", "describe_topic", "delete_topic", "read",
                 "producer_send"):
        with unchanged(), pytest.raises(TypeError):
            TOPIC_CALLS[call](broker, name)


@pytest.mark.parametrize("name", ["a", "A-z_0.9", "a" * 249, "...", ".a", "a..b", "-", "_"])
def test_valid_topic_names_boundaries(broker: mqlite.Broker, name: str) -> None:
    broker.create_topic(name)
    assert broker.send(name, b"v").offset == 0
    assert name in broker.topics()
    assert [m.value for m in broker.read(name)] == [b"v"]
    broker.delete_topic(name)


def test_no_file_named_after_topic_anywhere(broker: mqlite.Broker, tmp_path: Path) -> None:
    broker.create_topic("plain-name")
    broker.send("plain-name", b"v")
    assert not [p for p in tmp_path.rglob("*plain-name*")]


# -- values, keys, headers ----------------------------------------------------------------------

BAD_VALUES = ["text", 1, 1.5, True, [b"a"], {"a": b"b"}, object(), (b"a",)]


@pytest.mark.parametrize("value", BAD_VALUES, ids=lambda v: type(v).__name__)
def test_non_bytes_value_is_type_error(broker: mqlite.Broker, unchanged: Callable[[], Unchanged],
                                       value: Any) -> None:
    with unchanged():
        with pytest.raises(TypeError):
            broker.send("good", value)
        with pytest.raises(TypeError):
            broker.send("good", value, delay=1.0)
        with pytest.raises(TypeError):
            broker.send_batch("good", [b"ok", value])
        if not isinstance(value, (list, tuple)):
            with pytest.raises(TypeError):
                broker.send_batch("good", value)


def test_str_value_message_says_encode(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    with pytest.raises(TypeError, match="encode"):
        broker.send("t", "text")


@pytest.mark.parametrize("key", ["text", 1, 2.0, [b"k"], object()], ids=lambda v: type(v).__name__)
def test_non_bytes_key_is_type_error(broker: mqlite.Broker, unchanged: Callable[[], Unchanged],
                                     key: Any) -> None:
    with unchanged():
        with pytest.raises(TypeError):
            broker.send("good", b"v", key=key)
        with pytest.raises(TypeError):
            broker.send_batch("good", [b"v"], keys=[key])


@pytest.mark.parametrize("headers", [
    [(b"name", b"v")],           # name not str
    [("name", 1)],
    [("name", None)],
    [(1, b"v")],
], ids=repr)
def test_bad_header_types_are_type_error(broker: mqlite.Broker,
                                         unchanged: Callable[[], Unchanged],
                                         headers: Any) -> None:
    with unchanged():
        with pytest.raises(TypeError):
            broker.send("good", b"v", headers=headers)
        with pytest.raises(TypeError):
            broker.send_batch("good", [b"v"], headers=[headers])


@pytest.mark.parametrize("headers", [[("only-name",)], [("a", b"b", b"c")], [b"ab"], "abc",
                                     {"a": 1}, 5], ids=repr)
def test_malformed_headers_are_clean_errors(broker: mqlite.Broker,
                                            unchanged: Callable[[], Unchanged],
                                            headers: Any) -> None:
    with unchanged(), pytest.raises((TypeError, ValueError)):
        broker.send("good", b"v", headers=headers)


@pytest.mark.parametrize("ts", ["1", 1.5, True, [1]], ids=repr)
def test_bad_timestamp_is_type_error(broker: mqlite.Broker, unchanged: Callable[[], Unchanged],
                                     ts: Any) -> None:
    with unchanged(), pytest.raises(TypeError):
        broker.send("good", b"v", timestamp_ms=ts)


def test_negative_timestamp_is_value_error(broker: mqlite.Broker,
                                           unchanged: Callable[[], Unchanged]) -> None:
    # -1 is the "no timestamp" sentinel of partition state and of delayed messages.
    with unchanged():
        for ts in (-1, -5):
            with pytest.raises(ValueError):
                broker.send("good", b"v", timestamp_ms=ts)
            with pytest.raises(ValueError):
                broker.send("good", b"v", timestamp_ms=ts, delay=1.0)
            with pytest.raises(ValueError):
                broker.send_batch("good", [b"v"], timestamp_ms=ts)
            with pytest.raises(ValueError):
                broker.send_batch("good", [b"v", b"w"], timestamp_ms=[1, ts])
            with pytest.raises(ValueError):
                _with_producer(broker, functools.partial(_send_at, ts=ts))
    assert broker.send("good", b"v", timestamp_ms=0).timestamp_ms == 0


@pytest.mark.parametrize("partition,exc", [
    ("0", TypeError), (1.0, TypeError), (True, TypeError),
    (-1, mqlite.PartitionNotFoundError), (2, mqlite.PartitionNotFoundError),
    (2**64, mqlite.PartitionNotFoundError),
], ids=repr)
def test_bad_partition(broker: mqlite.Broker, unchanged: Callable[[], Unchanged],
                       partition: Any, exc: type[Exception]) -> None:
    with unchanged():
        with pytest.raises(exc):
            broker.send("good", b"v", partition=partition)
        with pytest.raises(exc):
            broker.send_batch("good", [b"v"], partition=partition)
        with pytest.raises(exc):
            broker.send("good", b"v", partition=partition, delay=1.0)
    assert issubclass(mqlite.PartitionNotFoundError, ValueError)


@pytest.mark.parametrize("dedup_id,exc", [
    (1, TypeError), (["x"], TypeError), ("", ValueError), (b"", ValueError),
    (b"x" * 257, ValueError),
], ids=repr)
def test_bad_dedup_id(broker: mqlite.Broker, unchanged: Callable[[], Unchanged], dedup_id: Any,
                      exc: type[Exception]) -> None:
    with unchanged(), pytest.raises(exc):
        broker.send("good", b"v", dedup_id=dedup_id)


def test_longest_topic_with_longest_dedup_id_works(broker: mqlite.Broker) -> None:
    # Both at their documented maximum must still fit the storage's key limits.
    name = "t" * 249
    broker.create_topic(name)
    md = broker.send(name, b"v", dedup_id=b"d" * 256)
    assert broker.send(name, b"v", dedup_id=b"d" * 256) == md
    assert broker.describe_topic(name).messages == 1


# -- message size ------------------------------------------------------------------------------


def test_oversize_message_is_message_too_large(broker: mqlite.Broker,
                                               unchanged: Callable[[], Unchanged]) -> None:
    big = b"x" * ((8 << 20) + 1)  # default cap is 8 MiB
    with unchanged():
        with pytest.raises(mqlite.MessageTooLargeError) as info:
            broker.send("good", big)
        with pytest.raises(mqlite.MessageTooLargeError):
            broker.send_batch("good", [b"ok", big])
        with pytest.raises(mqlite.MessageTooLargeError):
            broker.send("good", big, delay=1.0)
    assert isinstance(info.value, ValueError)
    assert broker.send("good", b"x" * (8 << 20)).offset == 1  # exactly the cap is fine


# -- topic settings ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,exc", [
    ({"partitions": 0}, ValueError),
    ({"partitions": -1}, ValueError),
    ({"partitions": 10_001}, ValueError),
    ({"partitions": "3"}, TypeError),
    ({"partitions": 2.0}, TypeError),
    ({"partitions": True}, TypeError),
    ({"retention_ms": 0}, ValueError),
    ({"retention_ms": -5}, ValueError),
    ({"retention_ms": 1.5}, TypeError),
    ({"retention_bytes": 0}, ValueError),
    ({"retention_messages": -1}, ValueError),
    ({"max_message_bytes": 0}, ValueError),
    ({"max_message_bytes": (1 << 30) + 1}, ValueError),
    ({"dedup_window_ms": -1}, ValueError),
    ({"dedup_window_ms": "1"}, TypeError),
    ({"cleanup": "compact-ish"}, ValueError),
], ids=repr)
def test_bad_topic_settings(broker: mqlite.Broker, unchanged: Callable[[], Unchanged],
                            kwargs: dict[str, Any], exc: type[Exception]) -> None:
    with unchanged(), pytest.raises(exc):
        broker.create_topic("newtopic", **kwargs)
    assert "newtopic" not in broker.topics()


# -- consumer arguments ------------------------------------------------------------------------


def test_bad_consumer_arguments(broker: mqlite.Broker, unchanged: Callable[[], Unchanged]) -> None:
    tp = TopicPartition("good", 0)
    with unchanged():
        with pytest.raises(ValueError):
            broker.consumer("good", auto_offset_reset="smallest")
        with pytest.raises(ValueError):
            broker.consumer("good", commit="sometimes")
        with pytest.raises(ValueError):
            broker.consumer("good", max_poll_records=0)
        c = broker.consumer("good")
        with pytest.raises(ValueError):
            c.poll(max_records=0)
        with pytest.raises(TypeError):
            c.poll(max_records="5")  # type: ignore[arg-type]  # checks the TypeError
        with pytest.raises(ValueError):
            c.poll(timeout=-1)
        with pytest.raises(ValueError):
            c.poll(timeout=float("nan"))
        with pytest.raises(TypeError):
            c.poll(timeout="1")  # type: ignore[arg-type]  # checks the TypeError
        with pytest.raises(ValueError):
            c.seek(tp, -1)
        with pytest.raises(TypeError):
            c.seek(tp, "3")  # type: ignore[arg-type]  # checks the TypeError
        with pytest.raises(TypeError):
            c.seek("good", 3)  # type: ignore[arg-type]  # checks the TypeError
        with pytest.raises(ValueError):
            c.seek(TopicPartition("good", 7), 0)  # not assigned
        with pytest.raises(mqlite.PartitionNotFoundError):
            c.assign([TopicPartition("good", 2)])
        with pytest.raises(ValueError):
            c.assign([("good", -1)])  # a tuple: the ValueError checked
        with pytest.raises(ValueError):
            c.offsets_for_times({tp: -1})
        with pytest.raises(ValueError):
            broker.read("good", offset=-1)
        with pytest.raises(mqlite.PartitionNotFoundError):
            broker.read("good", partition=5)
        c.close()


# -- open() arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,exc", [
    ({"map_size": "big"}, TypeError),
    ({"map_size": 1.5}, TypeError),
    ({"map_size": 1000}, ValueError),
    ({"durability": "always"}, ValueError),
], ids=repr)
def test_bad_open_arguments(tmp_broker_dir: Path, kwargs: dict[str, Any],
                            exc: type[Exception]) -> None:
    with pytest.raises(exc):
        mqlite.open(tmp_broker_dir, **kwargs)
    assert not tmp_broker_dir.exists()


@pytest.mark.parametrize("path", [123, None, b"/tmp/x".decode().encode()], ids=repr)
def test_bad_open_path_type(path: Any) -> None:
    with pytest.raises(TypeError):
        mqlite.open(path)


def test_bad_delay_arguments(broker: mqlite.Broker, unchanged: Callable[[], Unchanged]) -> None:
    with unchanged():
        with pytest.raises(ValueError):
            broker.send("good", b"v", delay=-1)
        with pytest.raises(TypeError):
            broker.send("good", b"v", delay="1")  # type: ignore[arg-type]  # checks the TypeError
        with pytest.raises(ValueError):
            broker.send("good", b"v", delay=1, deliver_at=2e9)
