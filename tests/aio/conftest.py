"""Fixtures for the asyncio front end: one suite over the sync and async APIs.

``api`` is ``"sync"`` or ``"async"``; ``run(api, fn)`` runs ``fn(broker)``,
a coroutine function, on a fresh event loop with ``broker`` opened through
that API.  With ``"async"`` the broker is a :class:`mqlite.aio.AsyncBroker`;
with ``"sync"`` it is a proxy over :class:`mqlite.Broker` whose calls return
awaitables (the call runs at once, on the loop thread), so one test body
checks both APIs with the same names, values and errors.  Factory calls
(``consumer``, ``queue``, ``producer``, ``transaction``) are plain calls in
both.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

import pytest

import mqlite
import mqlite.aio
from mqlite.queue import Delivery

_FACTORIES = {"consumer", "queue", "producer", "transaction"}
_TX_COROUTINES = {"is_processed", "commit"}
_PLAIN = {"seek", "subscribe", "assign", "assignment", "subscription", "wakeup", "positions",
          "abort", "commit_offsets", "ack_in", "claim_in"}


async def _value(v: Any) -> Any:
    return v


async def _raise(exc: BaseException) -> Any:
    raise exc


def _wrap(obj: Any) -> Any:
    if isinstance(obj, Delivery):
        return SyncProxy(obj)
    if isinstance(obj, list) and obj and isinstance(obj[0], Delivery):
        return [SyncProxy(d) for d in obj]
    if isinstance(obj, (mqlite.Consumer, mqlite.Queue, mqlite.Producer, mqlite.Transaction)):
        return SyncProxy(obj)
    if isinstance(obj, mqlite.SendFuture):
        return obj.result(30)
    return obj


class SyncProxy:
    """The synchronous object, with calls made awaitable (see the module docstring)."""

    def __init__(self, target: Any) -> None:
        self.sync = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.sync, name)
        if not callable(attr):
            return attr
        if name in _FACTORIES or name in _PLAIN or (
                isinstance(self.sync, mqlite.Transaction) and name not in _TX_COROUTINES):
            def plain(*a: Any, **k: Any) -> Any:
                return _wrap(attr(*_unwrap(a), **k))
            return plain

        def call(*a: Any, **k: Any) -> Awaitable[Any]:
            try:
                result = attr(*_unwrap(a), **k)
            except Exception as exc:  # noqa: BLE001 - raised when awaited, like a coroutine
                return _raise(exc)
            return _value(_wrap(result))
        return call

    # the context-manager protocols, mapped onto the sync object's
    async def __aenter__(self) -> Self:
        self.sync.__enter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sync.__exit__(*exc)

    def __aiter__(self) -> Self:
        self._it = iter(self.sync)
        return self

    async def __anext__(self) -> Any:
        try:
            return _wrap(next(self._it))
        except StopIteration:
            raise StopAsyncIteration from None


def _unwrap(args: tuple[Any, ...]) -> list[Any]:
    out = []
    for a in args:
        if isinstance(a, SyncProxy):
            a = a.sync
        elif isinstance(a, list):
            a = [x.sync if isinstance(x, SyncProxy) else x for x in a]
        out.append(a)
    return out


async def open_api(api: str, path: Path, **kw: Any) -> Any:
    if api == "async":
        return await mqlite.aio.open(path, **kw)
    return SyncProxy(mqlite.open(path, **kw))


def run_with(api: str, path: Path, fn: Callable[[Any], Awaitable[Any]], **kw: Any) -> Any:
    async def main() -> Any:
        broker = await open_api(api, path, **kw)
        try:
            return await fn(broker)
        finally:
            await broker.close()

    return asyncio.run(main())


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(api: str, tmp_broker_dir: Path) -> Callable[..., Any]:
    """``run(fn, **open_kw)``: ``fn(broker)`` on a fresh loop, broker from ``api``."""

    def _run(fn: Callable[[Any], Awaitable[Any]], **kw: Any) -> Any:
        assert inspect.iscoroutinefunction(fn)
        return run_with(api, tmp_broker_dir, fn, **kw)

    return _run
