"""Subscriber options (:class:`SubscriberSpec`) and handler introspection.

``@app.subscriber(...)`` validates every option here, once, at decoration time,
so a typo fails at import and not at the first message.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mqlite.app.codec import PayloadError, make_decoder
from mqlite.app.context import Context
from mqlite.app.exceptions import Reject
from mqlite.config import validate_topic_name
from mqlite.retry import Backoff

__all__ = ["DEFAULT_BACKOFF", "DEFAULT_TIME_LIMIT", "MAX_TIME_LIMIT", "SubscriberSpec",
           "make_spec"]

#: Default retry backoff: exponential from 0.5 s, doubling, capped at 30 s, 50% jitter.
DEFAULT_BACKOFF = Backoff.exponential(base=0.5, cap=30.0, jitter=0.5)
_MODES = ("stream", "queue")
_ACKS = ("before", "after", "manual")
MAX_RETRIES = 1000
MAX_CONCURRENCY = 1024
MAX_BATCH = 10_000
MAX_COMMIT_INTERVAL = 60.0
#: Default ``time_limit`` of a queue subscriber, seconds (1 hour, Pub/Sub's
#: ``max_lease_duration``; D88): one handler call longer than this counts as failed.
DEFAULT_TIME_LIMIT = 3600.0
#: Largest ``time_limit``, seconds (7 days).
MAX_TIME_LIMIT = 7 * 86400.0
#: ``time_limit`` not given: :data:`DEFAULT_TIME_LIMIT` in queue mode, none in stream mode.
TIME_LIMIT_DEFAULT: Any = object()


@dataclass(eq=False)
class SubscriberSpec:
    """Everything ``@app.subscriber`` was given, validated (see ``App.subscriber``)."""

    handler: Callable[..., Any]
    topics: list[str]
    group: str
    name: str
    mode: str = "stream"
    ack: str = "after"
    exactly_once: bool = False
    idempotency_key: Callable[[Any], Any] | None = None
    idempotency_ttl: float = 7 * 24 * 3600.0
    retries: int = 3
    backoff: Backoff = DEFAULT_BACKOFF
    dead_letter: str | None = None
    permanent: tuple[type[BaseException], ...] = ()
    concurrency: int = 1
    batch: int = 500
    batch_handler: bool = False  # batch=True: the handler takes a list of payloads
    commit_interval: float = 0.1
    retry_topic: str | None = None  # stream: failed messages retry through this topic
    partitions: int | None = None
    auto_offset_reset: str = "earliest"
    visibility_timeout: float = 30.0
    time_limit: float | None = None  # queue mode: seconds one handler call may run (D88)
    publishers: list[str] = field(default_factory=list)
    is_async: bool = False
    takes_payload: bool = True
    ctx_param: str | None = None
    ctx_first: bool = False
    decode: Callable[[bytes | None], Any] = field(default=make_decoder(None))
    raw_bytes: bool = False  # the payload is annotated ``bytes``: no decoding at all

    @property
    def permanent_types(self) -> tuple[type[BaseException], ...]:
        """Exception types that go straight to the dead-letter topic."""
        return (Reject, PayloadError, *self.permanent)

    def call(self, payload: Any, ctx: Context | None) -> Any:
        """Call the handler with the arguments it declared (sync; async returns a coroutine)."""
        h = self.handler
        if self.ctx_param is None:
            return h(payload) if self.takes_payload else h()
        if not self.takes_payload:
            return h(ctx)
        return h(ctx, payload) if self.ctx_first else h(payload, ctx)


def _no_payload(value: bytes | None) -> None:
    return None


def _is_ctx(param: inspect.Parameter, hint: Any) -> bool:
    if hint is Context:
        return True
    ann = param.annotation
    if isinstance(ann, str) and ann.rsplit(".", 1)[-1] == "Context":
        return True
    return hint is inspect.Parameter.empty and param.name in ("ctx", "context")


def _introspect(fn: Callable[..., Any]) -> tuple[bool, str | None, bool, Any]:
    """(takes_payload, ctx parameter name, ctx comes first, payload annotation)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot read the signature of handler {fn!r}: {exc}") from None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: use the raw annotations
        hints = {}
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required_kw = [p.name for p in sig.parameters.values()
                   if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if required_kw or len(params) > 2:
        raise TypeError(f"handler {fn.__qualname__} must take (payload), (payload, ctx), "
                        "(ctx) or nothing")
    ctx_name = None
    ctx_first = False
    payload_ann: Any = None
    takes_payload = False
    for i, p in enumerate(params):
        hint = hints.get(p.name, p.annotation)
        if ctx_name is None and _is_ctx(p, hint):
            ctx_name = p.name
            ctx_first = i == 0
        elif not takes_payload:
            takes_payload = True
            payload_ann = None if hint is inspect.Parameter.empty else hint
        else:
            raise TypeError(f"handler {fn.__qualname__}: which parameter is the Context? "
                            "annotate it `ctx: mqlite.Context`")
    if ctx_first and not takes_payload:
        ctx_first = False
    return takes_payload, ctx_name, ctx_first, payload_ann


def _batch_item_type(handler: Callable[..., Any], ann: Any, takes_payload: bool,
                     ctx_param: str | None, mode: str, exactly_once: bool,
                     idempotency_key: Any, ack: str) -> Any:
    """The item type of a ``batch=True`` handler's ``list[T]`` annotation (checks its options)."""
    what = f"batch=True handler {getattr(handler, '__qualname__', handler)!r}"
    if not takes_payload or ctx_param is not None:
        raise TypeError(f"{what} takes one parameter, the list of payloads (no ctx)")
    if mode != "stream":
        raise ValueError(f"{what}: batch handlers are for mode='stream'")
    if exactly_once or idempotency_key is not None or ack == "manual":
        raise ValueError(f"{what}: exactly_once, idempotency_key and ack='manual' work per "
                         "message; use a per-message handler for them")
    if ann is None:
        return None
    if typing.get_origin(ann) in (list, Sequence):
        args = typing.get_args(ann)
        return args[0] if args else None
    raise TypeError(f"{what}: annotate the payload parameter as list[T] (got {ann!r})")


def _retry_topic(retry_topic: bool | str, topics: list[str], mode: str, exactly_once: bool,
                 batch_handler: bool, dead_letter: str | None) -> str | None:
    """The retry topic's name for ``retry_topic=`` (``None``: retry in place)."""
    if retry_topic is False:
        return None
    if retry_topic is True:
        if len(topics) != 1:
            raise ValueError("a subscriber of several topics needs retry_topic='name'")
        name = f"{topics[0]}.retry"
    elif isinstance(retry_topic, str):
        name = retry_topic
    else:
        raise TypeError(f"retry_topic must be a bool or a topic name, not "
                        f"{type(retry_topic).__name__}")
    validate_topic_name(name, "retry_topic")
    if mode != "stream":
        raise ValueError("retry_topic is for mode='stream' (queue mode retries by nack(delay=))")
    if exactly_once or batch_handler:
        raise ValueError("retry_topic does not combine with exactly_once or batch=True: retry "
                         "messages are delayed sends, outside the commit's transaction")
    if name in topics or name == dead_letter:
        raise ValueError("retry_topic must differ from the subscribed and dead-letter topics")
    return name


def _check_seconds(value: Any, name: str, maximum: float, allow_zero: bool = True) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    lo_ok = value >= 0 if allow_zero else value > 0
    if math.isnan(value) or not lo_ok or value > maximum:
        raise ValueError(f"{name} is in seconds and must be {'0' if allow_zero else '> 0'} to "
                         f"{maximum:g}, got {value!r}")
    return float(value)


def _check_int(value: Any, name: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be {lo} to {hi}, got {value}")
    return value


def _time_limit(value: Any, mode: str) -> float | None:
    """``time_limit=``: seconds, > 0 to :data:`MAX_TIME_LIMIT`, or ``None`` (no limit);
    queue mode only (D88)."""
    if value is TIME_LIMIT_DEFAULT:
        return DEFAULT_TIME_LIMIT if mode == "queue" else None
    if value is None:
        return None
    if mode != "queue":
        raise ValueError("time_limit is for mode='queue': a stream handler that hangs holds "
                         "its partition (its order), so a limit there could only skip the "
                         "message; pass time_limit=None or drop it")
    return _check_seconds(value, "time_limit", MAX_TIME_LIMIT, allow_zero=False)


def make_spec(handler: Callable[..., Any], topics: str | Sequence[str], *, group: str | None,
              app_name: str, name: str | None, mode: str, ack: str, exactly_once: bool,
              idempotency_key: Callable[[Any], Any] | None, idempotency_ttl: float,
              retries: int, backoff: Backoff | float | None, dead_letter: str | None,
              permanent: Sequence[type[BaseException]], concurrency: int, batch: int | bool,
              partitions: int | None, auto_offset_reset: str,
              visibility_timeout: float, commit_interval: float = 0.1,
              max_records: int | None = None,
              retry_topic: bool | str = False,
              time_limit: Any = TIME_LIMIT_DEFAULT) -> SubscriberSpec:
    """Validate ``@app.subscriber`` options into a :class:`SubscriberSpec` (raises on bad ones)."""
    if not callable(handler):
        raise TypeError("@app.subscriber decorates a function")
    tlist = [topics] if isinstance(topics, str) else list(topics)
    if not tlist:
        raise ValueError("a subscriber needs at least one topic")
    for t in tlist:
        validate_topic_name(t)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if ack not in _ACKS:
        raise ValueError(f"ack must be one of {_ACKS}, got {ack!r}")
    if mode == "queue" and len(tlist) != 1:
        raise ValueError("a queue-mode subscriber reads exactly one topic")
    if not isinstance(exactly_once, bool):
        raise TypeError("exactly_once must be a bool")
    if exactly_once and ack != "after":
        raise ValueError("exactly_once=True commits with the handler's outputs: it needs "
                         "ack='after'")
    if idempotency_key is not None and not callable(idempotency_key):
        raise TypeError("idempotency_key must be a callable payload -> str | bytes | None")
    ttl = _check_seconds(idempotency_ttl, "idempotency_ttl", 366 * 86400, allow_zero=False)
    _check_int(retries, "retries", 0, MAX_RETRIES)
    if backoff is None:
        bo = Backoff.fixed(0.0)
    elif isinstance(backoff, Backoff):
        bo = backoff
    else:
        bo = Backoff.fixed(_check_seconds(backoff, "backoff", 86400))
    if dead_letter is not None:
        validate_topic_name(dead_letter)
        if dead_letter in tlist:
            raise ValueError("dead_letter must not be one of the subscribed topics")
    perm = tuple(permanent)
    for p in perm:
        if not (isinstance(p, type) and issubclass(p, BaseException)):
            raise TypeError(f"permanent= takes exception types, got {p!r}")
    _check_int(concurrency, "concurrency", 1, MAX_CONCURRENCY)
    batch_handler = batch is True
    if batch is False or batch is True:
        poll_size = 500 if max_records is None else max_records
    else:
        poll_size = batch if max_records is None else max_records
        if max_records is not None and batch != 500:
            raise ValueError("pass the poll size as batch=N or max_records=N, not both")
    _check_int(poll_size, "max_records" if max_records is not None else "batch", 1, MAX_BATCH)
    ci = _check_seconds(commit_interval, "commit_interval", MAX_COMMIT_INTERVAL)
    rt = _retry_topic(retry_topic, tlist, mode, exactly_once, batch_handler, dead_letter)
    if partitions is not None:
        _check_int(partitions, "partitions", 1, 10_000)
    if auto_offset_reset not in ("earliest", "latest"):
        raise ValueError("auto_offset_reset must be 'earliest' or 'latest'")
    vt = _check_seconds(visibility_timeout, "visibility_timeout", 43200, allow_zero=False)
    tl = _time_limit(time_limit, mode)
    takes_payload, ctx_param, ctx_first, ann = _introspect(handler)
    if batch_handler:
        ann = _batch_item_type(handler, ann, takes_payload, ctx_param, mode, exactly_once,
                               idempotency_key, ack)
    hname = name or getattr(handler, "__name__", "handler")
    if not isinstance(hname, str) or not hname:
        raise TypeError("name must be a non-empty str")
    grp = group if group is not None else re.sub(r"[^A-Za-z0-9._-]", "_", f"{app_name}.{hname}")
    validate_topic_name(grp, "group")
    return SubscriberSpec(
        handler=handler, topics=tlist, group=grp, name=hname, mode=mode, ack=ack,
        exactly_once=exactly_once, idempotency_key=idempotency_key, idempotency_ttl=ttl,
        retries=retries, backoff=bo, dead_letter=dead_letter, permanent=perm,
        concurrency=concurrency, batch=poll_size, batch_handler=batch_handler,
        commit_interval=ci, retry_topic=rt, partitions=partitions,
        auto_offset_reset=auto_offset_reset, visibility_timeout=vt, time_limit=tl,
        is_async=inspect.iscoroutinefunction(handler), takes_payload=takes_payload,
        ctx_param=ctx_param, ctx_first=ctx_first,
        decode=make_decoder(ann) if takes_payload else _no_payload,
        raw_bytes=takes_payload and ann is bytes and ctx_param is None and not batch_handler)
