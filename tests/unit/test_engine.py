"""The engine beneath the features (docs/decisions.md D17).

* A null value or key (``None``) stays null on every append path: it used to
  become ``b""`` when dead-lettered, and ``send(t, None, delay=...)`` raised.
* Wake-ups and ``after_commit`` callbacks belong to the write transaction: they
  fire after a commit, never after an abort.
* The facade is typed: ``help(broker.consumer)`` shows every option.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable

import pytest

import mqlite
from mqlite._engine import Engine


def _deliver_now(b: mqlite.Broker, topic: str, value: bytes | None, key: bytes | None) -> None:
    b.send(topic, value, key=key, deliver_at=time.time() - 1)  # already due
    assert b.promote_scheduled() == 1


def _dead_letter(b: mqlite.Broker, topic: str, value: bytes | None, key: bytes | None) -> None:
    b.create_topic("src")
    b.send("src", value, key=key)
    with b.queue("src", "w", max_deliveries=1, dead_letter_topic=topic) as q:
        (d,) = q.receive(max_messages=1, timeout=5)
        d.nack()


def _redrive(b: mqlite.Broker, topic: str, value: bytes | None, key: bytes | None) -> None:
    _dead_letter(b, "src.dlq", value, key)
    assert b.redrive("src.dlq", to_topic=topic) == 1


def _tx(b: mqlite.Broker, topic: str, value: bytes | None, key: bytes | None) -> None:
    with b.transaction() as tx:
        tx.send(topic, value, key=key)


def _producer(b: mqlite.Broker, topic: str, value: bytes | None, key: bytes | None) -> None:
    with b.producer() as p:
        p.send(topic, value, key=key).result(timeout=10)


def _publish(b: mqlite.Broker, topic: str, value: bytes | None, key: bytes | None) -> None:
    b.declare_exchange("fx", "fanout")
    b.bind("fx", topic)
    b.publish("fx", "", value, key=key)


PATHS: dict[str, Callable[[mqlite.Broker, str, bytes | None, bytes | None], object]] = {
    "send": lambda b, t, v, k: b.send(t, v, key=k),
    "send_batch": lambda b, t, v, k: b.send_batch(t, [v], keys=None if k is None else [k]),
    "producer": _producer,
    "publish": _publish,
    "transaction": _tx,
    "delayed": _deliver_now,
    "dead_letter": _dead_letter,
    "redrive": _redrive,
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("key", [None, b"", b"k"])
def test_null_value_stays_null_on_every_append_path(broker: mqlite.Broker, path: str,
                                                     key: bytes | None) -> None:
    if path != "dead_letter":
        broker.create_topic("t")
    PATHS[path](broker, "t", None, key)
    (m,) = broker.read("t", 0, 0, 10)
    assert m.value is None
    assert m.key == key


def test_empty_value_stays_empty_not_null(broker: mqlite.Broker) -> None:
    _dead_letter(broker, "t", b"", None)
    (m,) = broker.read("t", 0, 0, 10)
    assert m.value == b""


def _engine(b: mqlite.Broker) -> Engine:
    return b._engine


def test_append_wakes_the_topic_after_commit_not_on_abort(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    eng = _engine(broker)
    notifier = eng.env.notifier
    slot = eng.env.topic_slot("t")
    before = notifier.load(slot)
    with pytest.raises(RuntimeError), eng.write() as txn:
        rec = eng.topic(txn, "t")
        eng.append_in(txn, rec, 0, eng.encode(rec, [b"x"], None, None, 1))
        raise RuntimeError("abort")
    assert notifier.load(slot) == before
    assert broker.read("t") == []
    with eng.write() as txn:
        rec = eng.topic(txn, "t")
        eng.append_in(txn, rec, 0, eng.encode(rec, [b"x"], None, None, 1))
        assert notifier.load(slot) == before  # not before the commit
    assert notifier.load(slot) != before
    assert [m.value for m in broker.read("t")] == [b"x"]


def test_after_commit_runs_once_after_commit_and_never_after_abort(
        broker: mqlite.Broker) -> None:
    eng = _engine(broker)
    ran: list[str] = []
    with pytest.raises(KeyError), eng.write():
        eng.after_commit(lambda: ran.append("aborted"))
        raise KeyError("abort")
    with eng.write():
        eng.after_commit(lambda: ran.append("committed"))
        assert ran == []
    with eng.write():
        pass
    assert ran == ["committed"]


def test_facade_options_are_typed_keywords() -> None:
    for name in ("consumer", "producer", "queue", "create_topic", "send", "send_batch"):
        sig = inspect.signature(getattr(mqlite.Broker, name))
        kinds = {p.kind for p in sig.parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, name
        assert sig.return_annotation not in ("Any", inspect.Signature.empty), name
    params = inspect.signature(mqlite.Broker.consumer).parameters
    for opt in ("auto_offset_reset", "commit", "session_timeout", "assignor", "on_assign"):
        assert opt in params


def test_group_options_without_group_are_a_type_error(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    with pytest.raises(TypeError, match="need group="):
        broker.consumer("t", session_timeout=5.0)
