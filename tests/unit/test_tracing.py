"""OpenTelemetry spans per the messaging conventions, context carried in headers (issue 13)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import mqlite
from mqlite.tracing import Tracing


@pytest.fixture
def traced() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def test_send_and_process_spans_share_the_trace(broker: mqlite.Broker, traced) -> None:
    tracing, exporter = traced
    broker.create_topic("orders", 2)
    with tracing.send("orders") as span:
        md = broker.send("orders", b"hello", key=b"k",
                         headers=span.headers({"app": b"x", "traceparent": b"stale"}))
        span.sent(md)
    c = broker.consumer("orders", group="payments")
    (msg,) = c.poll(timeout=5.0)
    assert next(k for k, _ in msg.headers) == "app"
    assert sum(1 for k, _ in msg.headers if k == "traceparent") == 1  # ours replaced it
    with tracing.process(msg, group="payments"):
        pass
    c.close()
    send, proc = exporter.get_finished_spans()
    assert (send.name, send.kind) == ("send orders", SpanKind.PRODUCER)
    assert (proc.name, proc.kind) == ("process orders", SpanKind.CONSUMER)
    assert send.attributes["messaging.system"] == "mqlite"
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.destination.name"] == "orders"
    assert send.attributes["messaging.destination.partition.id"] == str(md.partition)
    assert send.attributes["messaging.mqlite.offset"] == md.offset
    assert proc.attributes["messaging.consumer.group.name"] == "payments"
    assert proc.attributes["messaging.message.id"] == f"orders/{md.partition}/{md.offset}" == \
        send.attributes["messaging.message.id"]
    assert proc.attributes["messaging.message.body.size"] == 5
    assert proc.context.trace_id == send.context.trace_id
    assert proc.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in proc.links] == [send.context.span_id]


def test_process_without_context_is_a_root(broker: mqlite.Broker, traced) -> None:
    tracing, exporter = traced
    broker.create_topic("t")
    broker.send("t", b"plain")
    q = broker.queue("t", "w")
    (d,) = q.receive(timeout=5.0)
    with tracing.process(d):
        pass
    d.ack()
    q.close()
    (span,) = exporter.get_finished_spans()
    assert span.parent is None and not span.links
    assert "messaging.consumer.group.name" not in span.attributes


def test_context_crosses_processes(broker: mqlite.Broker, traced) -> None:
    tracing, exporter = traced
    broker.create_topic("t")
    code = textwrap.dedent(f"""
        import mqlite
        from opentelemetry.sdk.trace import TracerProvider
        from mqlite.tracing import Tracing
        t = Tracing(TracerProvider())
        with mqlite.open({broker.path!r}) as b, t.send("t") as span:
            b.send("t", b"x", headers=span.headers())
            print(format(span._span.get_span_context().trace_id, "032x"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    (msg,) = broker.read("t")
    with tracing.process(msg):
        pass
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == out


def test_off_costs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    off = Tracing(enabled=False)
    h = [("a", b"1")]
    with off.send("t") as span:
        assert span.headers(h) is h  # no copy, no context
        span.sent(None)
    assert off.send("t") is off.process(None) is span  # one shared no-op object
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert not Tracing().enabled
    with pytest.raises(ImportError, match=r"mqlite\[otel\]"):
        Tracing(enabled=True)
    with pytest.raises(TypeError):
        Tracing(enabled=1)  # type: ignore[arg-type]
