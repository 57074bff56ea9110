"""OpenTelemetry spans for mqlite, per the messaging semantic conventions (``[otel]`` extra).

A leaf module (it imports nothing else of mqlite at run time), so any layer —
the service framework, your own code around ``broker.send`` / ``poll`` — can
use it::

    from mqlite.tracing import Tracing
    tracing = Tracing()                       # on when opentelemetry-api is installed

    with tracing.send("orders") as span:      # span "send orders", kind PRODUCER
        md = broker.send("orders", value, headers=span.headers(headers))
        span.sent(md)                         # partition, offset, message id

    for msg in consumer.poll():
        with tracing.process(msg, group="payments"):   # "process orders", CONSUMER,
            handle(msg)                                # child of the send span

``span.headers(h)`` returns ``h`` plus the W3C ``traceparent`` (and
``tracestate``) of the send span, so the trace crosses processes inside the
message; ``process`` extracts it and makes the send span the parent (and a
link).  Attributes: ``messaging.system="mqlite"``,
``messaging.operation.name`` / ``.type``, ``messaging.destination.name``,
``messaging.destination.partition.id``, ``messaging.consumer.group.name``,
``messaging.message.id`` (``topic/partition/offset``),
``messaging.mqlite.offset``, ``messaging.message.body.size``.

Off, it costs nothing: without opentelemetry-api, or with
``Tracing(enabled=False)``, ``send``/``process`` return one shared no-op
object whose ``headers(h)`` returns ``h`` itself; no span, no context, no
header is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

__all__ = ["SYSTEM", "Tracing"]

SYSTEM = "mqlite"


class _NoSpan:
    """The no-op span handle (tracing off): every call does nothing."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def headers(self, headers: Any = None) -> Any:
        return headers

    def sent(self, md: Any) -> None:
        return None


_NO_SPAN = _NoSpan()


def _header_pairs(headers: Any) -> list[tuple[str, Any]]:
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


class _SendSpan:
    __slots__ = ("_cm", "_span", "_tracing")

    def __init__(self, tracing: Tracing, topic: str, partition: int | None) -> None:
        from opentelemetry.trace import SpanKind

        self._tracing = tracing
        attrs: dict[str, Any] = {
            "messaging.system": SYSTEM, "messaging.operation.name": "send",
            "messaging.operation.type": "send", "messaging.destination.name": topic}
        if partition is not None:
            attrs["messaging.destination.partition.id"] = str(partition)
        self._cm = tracing.tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER,
                                                        attributes=attrs)
        self._span: Any = None

    def __enter__(self) -> Self:
        self._span = self._cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)

    def headers(self, headers: Any = None) -> list[tuple[str, Any]]:
        """``headers`` (dict or pairs) plus this span's trace context (W3C headers)."""
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        pairs = [(k, v) for k, v in _header_pairs(headers) if k not in carrier]
        return pairs + [(k, v.encode()) for k, v in carrier.items()]

    def sent(self, md: Any) -> None:
        """Record where the message went (a ``RecordMetadata``)."""
        span = self._span
        if span is None or getattr(md, "offset", -1) < 0:
            return
        span.set_attribute("messaging.destination.partition.id", str(md.partition))
        span.set_attribute("messaging.mqlite.offset", md.offset)
        span.set_attribute("messaging.message.id", f"{md.topic}/{md.partition}/{md.offset}")


class Tracing:
    """Makes ``send`` and ``process`` spans (see the module docstring).

    Parameters
    ----------
    tracer_provider
        An OpenTelemetry ``TracerProvider`` (default: the global one).
    enabled
        ``False``: every call is a no-op.  ``None`` (default): on when
        ``opentelemetry-api`` can be imported.
    """

    __slots__ = ("enabled", "tracer")

    def __init__(self, tracer_provider: Any = None, *, enabled: bool | None = None) -> None:
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool or None, not {type(enabled).__name__}")
        self.tracer: Any = None
        if enabled is not False:
            try:
                from opentelemetry import trace
            except ImportError:
                if enabled:
                    raise ImportError("mqlite tracing needs opentelemetry-api: pip install "
                                      "'mqlite[otel]'") from None
                enabled = False
            else:
                self.tracer = trace.get_tracer("mqlite", tracer_provider=tracer_provider)
                enabled = True
        self.enabled = enabled

    def send(self, topic: str, *, partition: int | None = None) -> Any:
        """A ``send {topic}`` PRODUCER span, current inside the ``with`` block.

        The handle's ``headers(h)`` adds the trace context to the message's
        headers; ``sent(md)`` records partition, offset and message id.
        """
        if not self.enabled:
            return _NO_SPAN
        return _SendSpan(self, topic, partition)

    def process(self, msg: Any, group: str | None = None) -> Any:
        """A ``process {topic}`` CONSUMER span for ``msg`` (a Message or Delivery).

        Its parent is the trace context found in the message's headers (the
        send span), which is also added as a link; without one it is a root
        (or a child of the current span).
        """
        if not self.enabled:
            return _NO_SPAN
        from opentelemetry import propagate, trace
        from opentelemetry.trace import Link, SpanKind

        carrier = {}
        for k, v in _header_pairs(getattr(msg, "headers", None)):
            if k in ("traceparent", "tracestate") and v is not None:
                carrier[k] = v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) \
                    else str(v)
        ctx = propagate.extract(carrier) if carrier else None
        links: Sequence[Any] = ()
        if ctx is not None:
            sc = trace.get_current_span(ctx).get_span_context()
            if sc.is_valid:
                links = [Link(sc)]
            else:
                ctx = None
        topic = msg.topic
        attrs: dict[str, Any] = {
            "messaging.system": SYSTEM, "messaging.operation.name": "process",
            "messaging.operation.type": "process", "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(msg.partition),
            "messaging.mqlite.offset": msg.offset,
            "messaging.message.id": f"{topic}/{msg.partition}/{msg.offset}"}
        if group is not None:
            attrs["messaging.consumer.group.name"] = group
        value = getattr(msg, "value", None)
        if value is not None:
            attrs["messaging.message.body.size"] = len(value)
        return self.tracer.start_as_current_span(f"process {topic}", context=ctx,
                                                 kind=SpanKind.CONSUMER, attributes=attrs,
                                                 links=links)
