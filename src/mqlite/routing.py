"""Exchanges: RabbitMQ-style routing of one published message to many topics.

Types:

``direct``
    Bindings whose routing key equals the message's routing key.
``fanout``
    Every binding.
``topic``
    Binding keys are dot-separated words where ``*`` matches exactly one word
    and ``#`` matches zero or more words.  Matching is word by word (never a
    regular expression): ``order.*`` matches ``order.created`` but not
    ``order.us.created``; ``order.#`` matches both and ``order``.  As in
    RabbitMQ, a word that holds ``*`` or ``#`` among other characters
    (``a.b#.c``) is a literal word, matched only by the same word.
``headers``
    Bindings carry header values; ``match="all"`` needs every one present
    and equal in the message's headers, ``match="any"`` at least one.  As in
    RabbitMQ (``rabbit_exchange_type_headers``), binding headers whose names
    start with ``x-`` are not compared unless ``match`` is ``"all-with-x"``
    or ``"any-with-x"``; a binding with nothing left to compare matches every
    message under ``all`` and none under ``any``.  A binding value of
    ``None`` only requires the header to be present (RabbitMQ's ``void``
    field).  A message may repeat a header name: a binding value matches when
    any of that name's values equals it.

A publish appends a copy to every matching topic (each topic once) in one
transaction.  With no match the message goes to the exchange's alternate
exchange if it has one, else nothing is written (``mandatory=True`` makes
that an :class:`UnroutableError`).

Storage: ``exchanges`` maps name -> msgpack {type, alternate}; ``bindings``
maps ``exchange NUL topic NUL binding-digest`` -> msgpack binding.  A process
cache of bindings is validated by ``meta/exchanges_version``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mqlite._engine import on_topic_delete
from mqlite._headers import HeadersArg, normalize_headers
from mqlite._storage import exchanges as _ex
from mqlite._storage import log as _log
from mqlite._storage.exchanges import Binding, ExchangeRecord
from mqlite.config import MAX_I64, require_int, validate_topic_name
from mqlite.errors import (
    ExchangeExistsError,
    ExchangeNotFoundError,
    UnroutableError,
)
from mqlite.types import RecordMetadata

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = [
    "EXCHANGE_TYPES",
    "HEADER_MATCHES",
    "Binding",
    "bind",
    "declare_exchange",
    "delete_exchange",
    "list_bindings",
    "list_exchanges",
    "publish",
    "topic_matches",
    "unbind",
]

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
#: ``match=`` values of a headers binding (RabbitMQ's ``x-match``).
HEADER_MATCHES = ("all", "any", "all-with-x", "any-with-x")
_MAX_ROUTING_KEY = 255
_MAX_HOPS = 8


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether a topic-exchange binding ``pattern`` matches ``routing_key``, word by word."""
    pw = pattern.split(".") if pattern else []
    kw = routing_key.split(".") if routing_key else []
    # Dynamic programming over (pattern words used, key words used); '#' may
    # swallow zero or more words, '*' exactly one, a literal only itself.
    reach = [False] * (len(kw) + 1)
    reach[0] = True
    for w in pw:
        nxt = [False] * (len(kw) + 1)
        if w == "#":
            seen = False
            for j in range(len(kw) + 1):
                seen = seen or reach[j]
                nxt[j] = seen
        else:
            for j in range(len(kw)):
                if reach[j] and (w == "*" or w == kw[j]):
                    nxt[j + 1] = True
        reach = nxt
        if not any(reach):
            return False
    return reach[len(kw)]


def _check_routing_key(rk: object, what: str = "routing_key") -> str:
    if not isinstance(rk, str):
        raise TypeError(f"{what} must be str, not {type(rk).__name__}")
    if len(rk.encode()) > _MAX_ROUTING_KEY:
        raise ValueError(f"{what} is longer than {_MAX_ROUTING_KEY} bytes")
    if "\x00" in rk:
        raise ValueError(f"{what} must not contain NUL")
    return rk


def _get_exchange(txn: Any, dbs: dict[str, Any], name: str) -> ExchangeRecord:
    ex = _ex.get_exchange(txn, dbs, name)
    if ex is None:
        raise ExchangeNotFoundError(
            f"exchange {name!r} does not exist; declare it with "
            f"broker.declare_exchange({name!r}, type)")
    return ex


def declare_exchange(engine: Engine, name: str, type: str = "direct", *,
                     alternate_exchange: str | None = None, exist_ok: bool = True) -> None:
    validate_topic_name(name, "exchange")
    if type not in EXCHANGE_TYPES:
        raise ValueError(f"exchange type must be one of {EXCHANGE_TYPES}, got {type!r}")
    if alternate_exchange is not None:
        validate_topic_name(alternate_exchange, "alternate exchange")
        if alternate_exchange == name:
            raise ValueError("an exchange cannot be its own alternate exchange")
    env = engine.live_env()
    with engine.write() as txn:
        old = _ex.get_exchange(txn, env.dbs, name)
        if old is not None:
            if old.type != type or old.alternate != alternate_exchange:
                raise ExchangeExistsError(
                    f"exchange {name!r} exists as type {old.type!r} (alternate "
                    f"{old.alternate!r}); delete it first to change it")
            if not exist_ok:
                raise ExchangeExistsError(f"exchange {name!r} already exists")
            return
        engine.admit_growth(txn)
        _ex.put_exchange(txn, env.dbs, name, ExchangeRecord(type, alternate_exchange))


def delete_exchange(engine: Engine, name: str) -> None:
    validate_topic_name(name, "exchange")
    env = engine.live_env()
    with engine.write() as txn:
        _get_exchange(txn, env.dbs, name)
        _ex.delete_exchange(txn, env.dbs, name)


def list_exchanges(engine: Engine) -> list[str]:
    env = engine.live_env()
    with engine.read() as txn:
        return _ex.list_exchanges(txn, env.dbs)


def list_bindings(engine: Engine, exchange: str) -> list[Binding]:
    """Bindings of ``exchange`` (``ExchangeNotFoundError`` if it does not exist)."""
    validate_topic_name(exchange, "exchange")
    env = engine.live_env()
    with env.read_txn() as txn:
        _get_exchange(txn, env.dbs, exchange)
        return _ex.load_bindings(txn, env.dbs, exchange)


def _make_binding(ex: ExchangeRecord, exchange: str, topic: str, routing_key: str | None,
                  headers: dict[str, Any] | None, match: str) -> Binding:
    if ex.type == "headers":
        if headers is None:
            headers = {}  # RabbitMQ: a binding without arguments (matches all under "all")
        if not isinstance(headers, dict):
            raise TypeError(f"headers= must be a dict, not {type(headers).__name__}")
        if match not in HEADER_MATCHES:
            raise ValueError(f"match must be one of {HEADER_MATCHES}, got {match!r}")
        if "x-match" in headers:
            raise ValueError("pass the match mode as match=..., not as an 'x-match' header")
        hv: dict[str, bytes | None] = {}
        for k, v in headers.items():
            if not isinstance(k, str):
                raise TypeError("binding header names must be str")
            if v is None:
                hv[k] = None
            elif isinstance(v, str):
                hv[k] = v.encode()
            elif isinstance(v, (bytes, bytearray, memoryview)):
                hv[k] = bytes(v)
            else:
                raise TypeError(f"binding header {k!r}: value must be str, bytes or None")
        return Binding(exchange, topic, None, hv, match)
    if headers is not None:
        raise ValueError(f"headers= only applies to headers exchanges, not {ex.type!r}")
    if ex.type == "fanout":
        return Binding(exchange, topic, None, None, "all")
    if routing_key is None:
        raise ValueError(f"a {ex.type} exchange binding needs routing_key=")
    _check_routing_key(routing_key)
    return Binding(exchange, topic, routing_key, None, "all")


def bind(engine: Engine, exchange: str, topic: str, routing_key: str | None = None, *,
         headers: dict[str, Any] | None = None, match: str = "all") -> None:
    """Bind ``topic`` to ``exchange``.  Binding twice is a no-op.

    Raises :class:`ExchangeNotFoundError`, :class:`TopicNotFoundError`, or
    ``ValueError`` for arguments that do not fit the exchange type.
    """
    validate_topic_name(exchange, "exchange")
    validate_topic_name(topic)
    env = engine.live_env()
    with engine.write() as txn:
        ex = _get_exchange(txn, env.dbs, exchange)
        engine.topic(txn, topic)
        b = _make_binding(ex, exchange, topic, routing_key, headers, match)
        engine.admit_growth(txn)
        _ex.put_binding(txn, env.dbs, b)


def unbind(engine: Engine, exchange: str, topic: str, routing_key: str | None = None, *,
           headers: dict[str, Any] | None = None, match: str = "all") -> None:
    """Remove a binding (``ValueError`` when no such binding exists)."""
    validate_topic_name(exchange, "exchange")
    validate_topic_name(topic)
    env = engine.live_env()
    with engine.write() as txn:
        ex = _get_exchange(txn, env.dbs, exchange)
        b = _make_binding(ex, exchange, topic, routing_key, headers, match)
        if not _ex.delete_binding(txn, env.dbs, b):
            raise ValueError(f"no such binding of {topic!r} to exchange {exchange!r}")


def _matches(ex: ExchangeRecord, b: Binding, routing_key: str,
             headers: Sequence[tuple[str, Any]] | None) -> bool:
    if ex.type == "fanout":
        return True
    if ex.type == "direct":
        return b.routing_key == routing_key
    if ex.type == "topic":
        return topic_matches(b.routing_key or "", routing_key)
    return headers_match(b.headers or {}, b.match, headers)


def headers_match(want: dict[str, bytes | None], match: str,
                  headers: Sequence[tuple[str, Any]] | None) -> bool:
    """Whether a message's ``headers`` satisfy a headers-exchange binding.

    ``want`` maps header names to a required value (``None``: present with
    any value).  Names starting with ``x-`` are skipped unless ``match`` ends
    in ``-with-x``; with nothing left, ``all`` is true and ``any`` false, as
    in RabbitMQ.
    """
    with_x = match.endswith("-with-x")
    have: dict[str, list[bytes]] = {}
    for name, v in headers or ():
        have.setdefault(name, []).append(bytes(v))
    checks = (k in have and (v is None or v in have[k])
              for k, v in want.items() if with_x or not k.startswith("x-"))
    if match.startswith("any"):
        return any(checks)
    return all(checks)


def route(txn: Any, engine: Engine, exchange: str, routing_key: str,
          headers: Sequence[tuple[str, Any]] | None) -> list[str]:
    """Topics a message reaches (each once, in binding order), following alternates."""
    dbs = engine.env.dbs
    seen: set[str] = set()
    name: str | None = exchange
    for _ in range(_MAX_HOPS):
        if name is None or name in seen:
            return []
        seen.add(name)
        ex = _get_exchange(txn, dbs, name)
        topics: list[str] = []
        for b in _ex.load_bindings(txn, dbs, name):
            if b.topic not in topics and _matches(ex, b, routing_key, headers):
                topics.append(b.topic)
        if topics:
            return topics
        name = ex.alternate
    return []


def publish_in(txn: Any, engine: Engine, exchange: str, routing_key: str, value: Any, *,
               key: Any, headers: Sequence[tuple[str, Any]] | None, ts: int,
               mandatory: bool) -> tuple[list[RecordMetadata], set[str]]:
    """Route and append inside ``txn``; returns the metadata and the topics written.

    Admits the bytes of every copy as a send before writing the first
    (``StorageFullError`` above the high-water mark).
    """
    topics = route(txn, engine, exchange, routing_key, headers)
    if not topics:
        if mandatory:
            raise UnroutableError(
                f"message with routing key {routing_key!r} matched no binding of exchange "
                f"{exchange!r} and there is no alternate exchange")
        return [], set()
    planned = []
    batch_cache: dict[int, list[bytes]] = {}
    for t in topics:
        rec = engine.topic(txn, t)
        maxb = rec.config["max_message_bytes"]
        batches = batch_cache.get(maxb)
        if batches is None:
            batches = batch_cache[maxb] = engine.encode(
                rec, [value], None if key is None else [key],
                None if headers is None else [headers], ts)
        planned.append((t, rec, engine.choose_partition(rec, key, None), batches))
    # Every copy counts (a fanout to N topics stores N), before the first is written.
    engine.check_space(engine.live_env(), txn,
                       sum(len(b) for _, _, _, batches in planned for b in batches))
    out = []
    for t, rec, part, batches in planned:
        off, _ = engine.append_in(txn, rec, part, batches)
        out.append(RecordMetadata(t, part, off, ts))
    return out, set(topics)


def publish(engine: Engine, exchange: str, routing_key: str, value: Any, *, key: Any = None,
            headers: HeadersArg = None, timestamp_ms: int | None = None,
            mandatory: bool = False) -> list[RecordMetadata]:
    validate_topic_name(exchange, "exchange")
    _check_routing_key(routing_key)
    headers = normalize_headers(headers)
    if isinstance(value, str):
        raise TypeError("value must be bytes-like, not str; encode it first")
    ts = time.time_ns() // 1_000_000 if timestamp_ms is None else require_int(
        timestamp_ms, "timestamp_ms", minimum=0, maximum=MAX_I64)
    env = engine.live_env()
    txn = env.write_txn()
    try:
        out, touched = publish_in(txn, engine, exchange, routing_key, value, key=key,
                                  headers=headers, ts=ts, mandatory=mandatory)
    except BaseException as exc:  # noqa: BLE001 - fail() aborts and re-raises
        env.fail(txn, exc, f"publish to exchange {exchange!r}")
    env.commit(txn)
    if touched:
        env.notify_topics(touched)
    return out


def _drop_topic_bindings(txn: Any, dbs: dict[str, Any], rec: _log.TopicRecord) -> None:
    """Delete-topic hook: remove bindings that target the topic."""
    _ex.delete_bindings_of_topic(txn, dbs, rec.name)


def _register_hooks() -> None:
    on_topic_delete(_drop_topic_bindings)


_register_hooks()
