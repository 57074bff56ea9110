"""Exchanges and bindings, inside caller-supplied transactions.

Layout (docs/format.md)::

    exchanges:  name (UTF-8)                                -> msgpack ExchangeRecord
    bindings:   exchange 0x00 topic 0x00 sha1(binding)[:16]  -> msgpack Binding
    meta:       b"exchanges_version"                        -> u64 BE, bumped by every change

A binding's key embeds a digest of the whole binding, so binding the same
topic twice with the same arguments is one record, and different routing keys
or header sets of one topic are separate records.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from mqlite._storage.log import prefix_keys

__all__ = [
    "Binding",
    "ExchangeRecord",
    "delete_binding",
    "delete_bindings_of_topic",
    "delete_exchange",
    "get_exchange",
    "list_exchanges",
    "load_bindings",
    "put_binding",
    "put_exchange",
]


class ExchangeRecord(msgspec.Struct):
    """An exchange as stored: its type and optional alternate exchange."""

    type: str
    alternate: str | None = None


class Binding(msgspec.Struct, frozen=True):
    """One binding of a topic to an exchange."""

    exchange: str
    topic: str
    routing_key: str | None = None
    headers: dict[str, bytes | None] | None = None
    match: str = "all"


_enc = msgspec.msgpack.Encoder()
_dec_ex = msgspec.msgpack.Decoder(ExchangeRecord)
_dec_b = msgspec.msgpack.Decoder(Binding)
_VERSION_KEY = b"exchanges_version"


def _bump(txn: Any, dbs: dict[str, Any]) -> None:
    raw = txn.get(_VERSION_KEY, db=dbs["meta"])
    v = 0 if raw is None else int.from_bytes(raw, "big")
    txn.put(_VERSION_KEY, (v + 1).to_bytes(8, "big"), db=dbs["meta"])


def get_exchange(txn: Any, dbs: dict[str, Any], name: str) -> ExchangeRecord | None:
    """The stored exchange ``name``, or ``None``."""
    raw = txn.get(name.encode(), db=dbs["exchanges"])
    return None if raw is None else _dec_ex.decode(raw)


def put_exchange(txn: Any, dbs: dict[str, Any], name: str, rec: ExchangeRecord) -> None:
    txn.put(name.encode(), _enc.encode(rec), db=dbs["exchanges"])
    _bump(txn, dbs)


def delete_exchange(txn: Any, dbs: dict[str, Any], name: str) -> None:
    """Delete exchange ``name`` and all its bindings."""
    txn.delete(name.encode(), db=dbs["exchanges"])
    for k in _binding_keys(txn, dbs, name):
        txn.delete(k, db=dbs["bindings"])
    _bump(txn, dbs)


def list_exchanges(txn: Any, dbs: dict[str, Any]) -> list[str]:
    cur = txn.cursor(db=dbs["exchanges"])
    return [bytes(k).decode() for k in cur.iternext(keys=True, values=False)]


def _binding_keys(txn: Any, dbs: dict[str, Any], exchange: str) -> list[bytes]:
    return prefix_keys(txn, dbs["bindings"], exchange.encode() + b"\x00")


def load_bindings(txn: Any, dbs: dict[str, Any], exchange: str) -> list[Binding]:
    """Bindings of ``exchange`` in key order."""
    return [_dec_b.decode(txn.get(k, db=dbs["bindings"]))
            for k in _binding_keys(txn, dbs, exchange)]


def _bkey(b: Binding) -> bytes:
    digest = hashlib.sha1(_enc.encode(b)).hexdigest()[:16]
    return b.exchange.encode() + b"\x00" + b.topic.encode() + b"\x00" + digest.encode()


def put_binding(txn: Any, dbs: dict[str, Any], b: Binding) -> None:
    """Store ``b`` (a no-op when the same binding exists)."""
    txn.put(_bkey(b), _enc.encode(b), db=dbs["bindings"])
    _bump(txn, dbs)


def delete_binding(txn: Any, dbs: dict[str, Any], b: Binding) -> bool:
    """Delete ``b``; False when there was no such binding."""
    if not txn.delete(_bkey(b), db=dbs["bindings"]):
        return False
    _bump(txn, dbs)
    return True


def delete_bindings_of_topic(txn: Any, dbs: dict[str, Any], topic: str) -> None:
    """Remove every binding that targets ``topic`` (topic deletion)."""
    cur = txn.cursor(db=dbs["bindings"])
    needle = b"\x00" + topic.encode() + b"\x00"
    doomed = [bytes(k) for k in cur.iternext(keys=True, values=False) if needle in bytes(k)]
    for k in doomed:
        txn.delete(k, db=dbs["bindings"])
    if doomed:
        _bump(txn, dbs)
