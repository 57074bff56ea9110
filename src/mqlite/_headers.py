"""The one place message headers given by a caller are normalised.

Every public path that takes ``headers=`` (``Broker.send``, ``send_batch``,
``Producer.send``, ``Broker.publish``, ``Transaction.send`` / ``publish`` and
delayed sends) calls :func:`normalize_headers` before anything else looks at
them, so all of them accept the same forms and reject the same mistakes:

* ``None`` (no headers);
* a ``dict`` / mapping ``{name: value}``;
* a sequence of ``(name, value)`` pairs (tuples or 2-item lists); names may
  repeat and their order is kept.

Names are ``str``.  Values are bytes-like (``bytes``, ``bytearray``,
``memoryview``) or ``str``, which is encoded UTF-8.  Anything else is a
``TypeError`` that says what to pass.  The result is ``None`` or a list of
``(str, bytes)`` tuples, the only form the codec and the router see.

Cost: the common case (``None``, or a list of ``(str, bytes)`` tuples) is
checked in one pass over the pairs and returned as is, without copying.
Leaf module: imports nothing from mqlite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["HeadersArg", "normalize_headers", "normalize_headers_list"]

#: What the public API accepts for ``headers=``.
HeadersArg = Mapping[str, Any] | Sequence[tuple[str, Any]] | None

_HOW = ("pass headers as a dict {name: value} or a sequence of (name, value) pairs, "
        "with str names and bytes or str values")


def normalize_headers(headers: Any) -> list[tuple[str, bytes]] | None:
    """Return ``headers`` as ``None`` or a list of ``(str, bytes)`` pairs.

    Parameters
    ----------
    headers
        ``None``, a mapping ``{name: value}`` or a sequence of ``(name,
        value)`` pairs; names ``str``, values bytes-like or ``str`` (encoded
        UTF-8).

    Returns
    -------
    list of (str, bytes) or None
        The input itself when it already is a list of ``(str, bytes)``
        pairs (not copied: do not mutate it while a send uses it), else a
        new list of tuples.

    Raises
    ------
    TypeError
        Any other form, a non-``str`` name, or a value that is neither
        bytes-like nor ``str``; the message says what to pass.
    """
    if headers is None:
        return None
    if type(headers) is list:
        try:  # the common case, in one cheap pass (~100 ns a pair); odd shapes go the slow way
            for name, value in headers:
                if type(name) is not str or type(value) is not bytes:
                    break
            else:
                return headers
        except (TypeError, ValueError):
            pass
    return _normalize_slow(headers)


def normalize_headers_list(headers: Any, n: int) -> list[list[tuple[str, bytes]] | None] | None:
    """Normalise ``send_batch``'s per-message headers: ``None`` or one entry per value.

    Raises
    ------
    TypeError
        ``headers`` is not a sequence, or an entry is not a valid headers form.
    ValueError
        ``len(headers) != n``.
    """
    if headers is None:
        return None
    if isinstance(headers, (str, bytes, bytearray, memoryview, Mapping)) \
            or not isinstance(headers, Sequence):
        raise TypeError("send_batch headers= takes one headers entry per value (a list of "
                        f"None / dicts / (name, value) pair lists), not {type(headers).__name__}")
    if len(headers) != n:
        raise ValueError(f"len(headers) == {len(headers)} but len(values) == {n}")
    return [normalize_headers(h) for h in headers]


def _value(name: str, v: Any) -> bytes:
    if type(v) is bytes:
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"header {name!r}: value must be bytes or str, not {type(v).__name__}; "
                    + _HOW)


def _name(k: Any) -> str:
    if not isinstance(k, str):
        raise TypeError(f"header names must be str, not {type(k).__name__}; " + _HOW)
    return k if type(k) is str else str.__str__(k)


def _normalize_slow(headers: Any) -> list[tuple[str, bytes]]:
    if isinstance(headers, Mapping):
        return [(_name(k), _value(k, v)) for k, v in headers.items()]
    if isinstance(headers, (str, bytes, bytearray, memoryview)) \
            or not isinstance(headers, (Sequence, tuple, list)):
        raise TypeError(f"headers must be a dict or a sequence of (name, value) pairs, "
                        f"not {type(headers).__name__}; " + _HOW)
    out: list[tuple[str, bytes]] = []
    for p in headers:
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise TypeError(f"each header must be a (name, value) pair, not {p!r:.60}; " + _HOW)
        name = _name(p[0])
        out.append((name, _value(name, p[1])))
    return out
