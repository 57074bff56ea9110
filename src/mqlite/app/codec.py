"""Payload encoding and decoding (msgspec): JSON by default, typed on request.

Encoding (``app.publish``, ``ctx.publish``, a publisher's return value):
``bytes``/``bytearray``/``memoryview`` are stored as they are; a pydantic model
is dumped with its own JSON encoder; anything else goes through
``msgspec.json.encode`` (dicts, lists, str, numbers, ``msgspec.Struct``,
dataclasses, ``TypedDict`` values, datetimes, UUIDs...).

Decoding follows the annotation of the handler's first parameter:

=============================  =================================================
annotation                     the handler gets
=============================  =================================================
none, ``Any``, ``object``      ``msgspec.json.decode(value)`` (dict, list, ...)
``bytes``                      the raw value (``b""`` for a null value)
``msgspec.Struct``, dataclass,  that type, validated by ``msgspec.json.Decoder``
``TypedDict``, ``list[int]``
pydantic ``BaseModel``         ``Model.model_validate_json(value)``
=============================  =================================================

A value that is not valid JSON or does not match the type raises
:class:`PayloadError`, which the App treats as a permanent failure.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["PayloadError", "encode_key", "encode_value", "fast_decoder", "make_decoder"]


class PayloadError(ValueError):
    """A message value could not be decoded into the handler's payload type (permanent)."""


_json_decode = msgspec.json.decode
_json_encode = msgspec.json.encode


def _pydantic_base() -> type | None:
    mod = sys.modules.get("pydantic")  # only if the user imported it: never import it ourselves
    return getattr(mod, "BaseModel", None) if mod is not None else None


def encode_value(payload: Any) -> bytes:
    """Bytes for ``payload`` (see the module docstring).

    Raises
    ------
    TypeError
        msgspec cannot encode the object.
    """
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    base = _pydantic_base()
    if base is not None and isinstance(payload, base):
        return payload.model_dump_json().encode()  # type: ignore[attr-defined]
    try:
        return _json_encode(payload)
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"cannot encode a {type(payload).__name__} payload as JSON ({exc}); "
                        "pass bytes, or a dict / msgspec.Struct / dataclass") from None


def encode_key(key: Any) -> bytes | None:
    """A message key: ``None``, bytes-like as is, ``str`` UTF-8, ``int`` as decimal text.

    Raises
    ------
    TypeError
        Any other type.
    """
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode()
    raise TypeError(f"key must be str, bytes, int or None, not {type(key).__name__}")


#: make_decoder's functions -> the msgspec decode each wraps (see fast_decoder)
_FAST: weakref.WeakKeyDictionary[Callable[..., Any], Callable[[bytes], Any]] = \
    weakref.WeakKeyDictionary()


def fast_decoder(decode: Callable[[bytes | None], Any]) -> Callable[[bytes], Any] | None:
    """The msgspec decode inside a :func:`make_decoder` function, or ``None``.

    For a value that is not ``None`` it returns what ``decode`` returns; when it
    raises, call ``decode`` itself for the error (a :class:`PayloadError`).  The
    App's lean loop calls it directly: one Python call less per message (D45).
    """
    return _FAST.get(decode)


def make_decoder(annotation: Any) -> Callable[[bytes | None], Any]:
    """A function ``value -> payload`` for a handler parameter annotated ``annotation``.

    The returned function raises :class:`PayloadError` for a value that does
    not decode or validate.
    """
    if annotation in (None, Any, object):
        def plain(value: bytes | None) -> Any:
            if value is None:
                return None
            try:
                return _json_decode(value)
            except msgspec.DecodeError as exc:
                raise PayloadError(f"payload is not JSON: {exc}") from None
        _FAST[plain] = _json_decode
        return plain
    if annotation is bytes:
        return lambda value: b"" if value is None else value
    base = _pydantic_base()
    if base is not None and isinstance(annotation, type) and issubclass(annotation, base):
        validate = annotation.model_validate_json  # type: ignore[attr-defined]
        error_types = (ValueError,)

        def pyd(value: bytes | None) -> Any:
            try:
                return validate(value or b"null")
            except error_types as exc:
                raise PayloadError(f"payload does not validate as {annotation.__name__}: "
                                   f"{exc}") from None
        return pyd
    try:
        decoder = msgspec.json.Decoder(annotation)
    except TypeError as exc:
        raise TypeError(f"cannot decode payloads as {annotation!r}: {exc}; annotate the "
                        "handler's payload with a msgspec.Struct, dataclass, TypedDict, "
                        "pydantic model, bytes or a JSON type") from None
    name = getattr(annotation, "__name__", repr(annotation))

    def typed(value: bytes | None) -> Any:
        try:
            return decoder.decode(value if value is not None else b"null")
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise PayloadError(f"payload does not validate as {name}: {exc}") from None
    _FAST[typed] = decoder.decode
    return typed
