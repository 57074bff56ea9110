"""``_core.messages_from_kafka``: confluent-kafka messages -> mqlite Messages (no broker)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError
from confluent_kafka import Message as KMessage

import mqlite
from mqlite._core import messages_from_kafka


def _k(topic: str, partition: int, offset: int, **kw: Any) -> Any:
    return KMessage(topic=topic, partition=partition, offset=offset,
                    timestamp=kw.pop("timestamp", (1, 1000 + offset)), **kw)


class _Fake:
    """Another client's message object: the getters by name only (the method-call path)."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.t, self.p, self.o = topic, partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def timestamp(self) -> tuple[int, int]:
        return (1, 5)

    def key(self) -> bytes:
        return b"fk"

    def value(self) -> bytes:
        return b"fv"

    def headers(self) -> None:
        return None


def test_fields_headers_and_last_offset_per_partition_run() -> None:
    raw = [_k("a", 0, 7, key=b"k", value=b"v", headers=[("h", b"x"), ("n", None)]),
           _k("a", 0, 8), _k("a", 1, 3), _k("b", 1, 4), _k("a", 0, 9, value=b"z")]
    out: list[mqlite.Message] = []
    last: dict[tuple[str, int], int] = {}
    assert messages_from_kafka(raw, 0, out, last) == 5
    assert out[0] == mqlite.Message("a", 0, 7, 1007, b"k", b"v", [("h", b"x"), ("n", b"")])
    assert out[1] == mqlite.Message("a", 0, 8, 1008, None, None)
    assert out[1].headers == []
    assert [(m.topic, m.partition, m.offset) for m in out[2:]] == [("a", 1, 3), ("b", 1, 4),
                                                                  ("a", 0, 9)]
    assert out[4].value == b"z"
    assert last == {("a", 0): 9, ("a", 1): 3, ("b", 1): 4}


def test_stops_at_an_error_message_and_resumes_after_it() -> None:
    bad = KMessage(topic="a", partition=0, offset=-1,
                   error=KafkaError(KafkaError._PARTITION_EOF))
    raw = [_k("a", 0, 1), bad, _k("a", 0, 2)]
    out: list[mqlite.Message] = []
    last: dict[tuple[str, int], int] = {}
    assert messages_from_kafka(raw, 0, out, last) == 1
    assert last == {("a", 0): 1}
    assert messages_from_kafka(raw, 2, out, last) == 3
    assert [m.offset for m in out] == [1, 2] and last == {("a", 0): 2}


def test_other_message_types_use_the_getters_by_name() -> None:
    for first in (_Fake("f", 2, 10), _k("a", 0, 1)):  # either type may come first
        raw = [first, _Fake("f", 2, 11), _k("a", 0, 2)]
        out: list[mqlite.Message] = []
        last: dict[tuple[str, int], int] = {}
        assert messages_from_kafka(raw, 0, out, last) == 3
        assert out[1] == mqlite.Message("f", 2, 11, 5, b"fk", b"fv")
        assert last[("a", 0)] == 2 and last[("f", 2)] == 11
