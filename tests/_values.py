"""Test helper: the value of a record a test sent (always set, so never ``None``)."""

from __future__ import annotations

from mqlite import Message


def value(m: Message) -> bytes:
    """``m.value``; fails the test on a record without a value (``Message.value`` may be None)."""
    assert m.value is not None, f"no value in {m.topic}/{m.partition} at offset {m.offset}"
    return m.value
