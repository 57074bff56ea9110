"""Every path that takes ``headers=`` accepts the same forms (issue 9, part 7).

A dict, or a sequence of ``(name, value)`` pairs; ``str`` values are stored
UTF-8 encoded; anything else is a ``TypeError`` that says what to pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import mqlite
from mqlite._headers import normalize_headers
from mqlite.scheduler import promote_due

FORMS: list[Any] = [
    {"format": "pdf", "n": b"1"},
    [("format", "pdf"), ("n", b"1")],
    (("format", b"pdf"), ["n", bytearray(b"1")]),
    [("format", memoryview(b"pdf")), ("n", "1")],
]
WANT = [("format", b"pdf"), ("n", b"1")]


def _last(broker: mqlite.Broker, topic: str) -> list[tuple[str, bytes]]:
    msgs = broker.read(topic, 0, 0, 1000)
    return msgs[-1].headers


def _send(broker: mqlite.Broker, h: Any) -> None:
    broker.send("t", b"v", headers=h)


def _send_batch(broker: mqlite.Broker, h: Any) -> None:
    broker.send_batch("t", [b"a", b"v"], headers=[None, h])


def _producer(broker: mqlite.Broker, h: Any) -> None:
    with broker.producer() as p:
        p.send("t", b"v", headers=h).result(10)


def _tx_send(broker: mqlite.Broker, h: Any) -> None:
    with broker.transaction() as tx:
        tx.send("t", b"v", headers=h)


def _publish(broker: mqlite.Broker, h: Any) -> None:
    broker.publish("hx", "", b"v", headers=h, mandatory=True)


def _tx_publish(broker: mqlite.Broker, h: Any) -> None:
    with broker.transaction() as tx:
        tx.publish("hx", "", b"v", headers=h, mandatory=True)


def _delayed(broker: mqlite.Broker, h: Any) -> None:
    broker.send("t", b"v", headers=h, delay=0.001)
    assert promote_due(broker._engine, now_ms=time.time_ns() // 1_000_000 + 60_000) == 1


PATHS: dict[str, Callable[[mqlite.Broker, Any], None]] = {
    "send": _send, "send_batch": _send_batch, "producer": _producer, "tx.send": _tx_send,
    "publish": _publish, "tx.publish": _tx_publish, "delayed": _delayed,
}


@pytest.fixture
def hbroker(broker: mqlite.Broker) -> mqlite.Broker:
    broker.create_topic("t")
    broker.declare_exchange("hx", "headers")
    broker.bind("hx", "t", headers={"format": "pdf"})
    return broker


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("form", range(len(FORMS)))
def test_every_path_accepts_every_form(hbroker: mqlite.Broker, path: str, form: int) -> None:
    PATHS[path](hbroker, FORMS[form])
    assert _last(hbroker, "t") == WANT


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("bad, words", [
    ("format=pdf", "dict or a sequence"),
    (b"format", "dict or a sequence"),
    ([("format",)], "(name, value) pair"),
    ([("format", "pdf", "x")], "(name, value) pair"),
    ([(1, b"x")], "names must be str"),
    ({"format": 1}, "value must be bytes or str"),
    ([("format", None)], "value must be bytes or str"),
    (42, "dict or a sequence"),
])
def test_every_path_rejects_the_same_mistakes(hbroker: mqlite.Broker, path: str, bad: Any,
                                              words: str) -> None:
    with pytest.raises(TypeError, match="pass headers as a dict") as ei:
        PATHS[path](hbroker, bad)
    assert words in str(ei.value)
    assert hbroker.read("t", 0, 0, 1000) == []  # nothing stored


def test_headers_exchange_routes_on_dict_and_str_values(hbroker: mqlite.Broker) -> None:
    hbroker.create_topic("other")
    hbroker.bind("hx", "other", headers={"format": "csv"})
    md = hbroker.publish("hx", "", b"v", headers={"format": "pdf"})
    assert [m.topic for m in md] == ["t"]
    md = hbroker.publish("hx", "", b"v", headers=[("format", "csv")])
    assert [m.topic for m in md] == ["other"]


def test_common_form_is_returned_as_is() -> None:
    h = [("a", b"1"), ("a", b"2")]
    assert normalize_headers(h) is h
    assert normalize_headers(None) is None
    assert normalize_headers([]) == []
    assert normalize_headers({"é": "ü"}) == [("é", "ü".encode())]


def test_send_batch_headers_length_and_shape(hbroker: mqlite.Broker) -> None:
    with pytest.raises(ValueError, match="len\\(headers\\)"):
        hbroker.send_batch("t", [b"a", b"b"], headers=[None])
    with pytest.raises(TypeError, match="one headers entry per value"):
        hbroker.send_batch("t", [b"a"], headers={"format": "pdf"})  # type: ignore[arg-type]  # checks the TypeError
