"""Prometheus metrics: broker state read on scrape, and handler metrics.

:class:`BrokerCollector` is a custom ``prometheus_client`` collector: each
scrape takes one :meth:`mqlite.Broker.stats` snapshot (one read transaction,
no group joined, nothing written) and turns it into the metric families
below.  :func:`serve` / ``mqlite metrics DIR --port P`` serve it over HTTP on
127.0.0.1 by default.  :class:`HandlerMetrics` (from
:mod:`mqlite.handler_metrics`, re-exported) is what ``mqlite.App`` reports
handler outcomes through.

Broker metrics (names fixed; docs/operations.md has the full list with
example alerts):

==========================================================  =========================
``mqlite_topic_partition_end_offset{topic,partition}``       next offset to be written
``mqlite_topic_partition_start_offset{topic,partition}``     first offset still stored
``mqlite_topic_partition_bytes{topic,partition}``            stored batch bytes
``mqlite_consumer_group_lag{group,topic,partition}``         end - committed
``mqlite_consumer_group_lag_sum{group,topic}``               lag summed over partitions
``mqlite_consumer_group_committed_offset{group,topic,partition}``
``mqlite_consumer_group_members{group}``                     live members (lock probed)
``mqlite_queue_messages_ready{topic,group}``                 receivable now
``mqlite_queue_messages_inflight{topic,group}``              held, unacked
``mqlite_queue_messages_delayed{topic,group}``               nacked with a running delay
``mqlite_queue_consumers{topic,group}``                      live queue consumers
``mqlite_queue_oldest_unacked_age_seconds{topic,group}``     age of the oldest delivery
``mqlite_queue_messages_scheduled{topic}``                   delayed sends not yet due
``mqlite_dead_letter_messages{topic}``                       DLQ depth (not redriven)
``mqlite_messages_sent_total{topic}``                        sum of end offsets
``mqlite_messages_consumed_total{topic,group}``              committed / settled count
``mqlite_scrape_duration_seconds``                           time this scrape took
==========================================================  =========================

``mqlite_consumer_group_dead_letter_info{group,topic,dead_letter_topic}`` is 1
for each group and subscribed topic whose failures go to ``dead_letter_topic``
(a queue group's policy; a stream group's as its App subscriber recorded it).

The two ``_total`` families are offsets, not process counters: they count
since the topic was created, survive restarts of every process, and reset
(which ``rate()`` handles) only when a topic is deleted and recreated or a
group's offsets are reset backwards.
"""

from __future__ import annotations

import gc
import operator
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from mqlite.config import validate_topic_name
from mqlite.handler_metrics import HandlerMetrics

if TYPE_CHECKING:
    from mqlite.broker import Broker
    from mqlite.types import BrokerStats

__all__ = ["BrokerCollector", "Family", "HandlerMetrics", "render", "serve", "stats_families"]


def _require_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError("mqlite metrics need prometheus_client: pip install "
                          "'mqlite[metrics]'") from None
    return prometheus_client


class Family:
    """One metric family: name, type (``"gauge"`` / ``"counter"``), help, labels, samples.

    Columnar, in segments: each segment is ``(keys, values)`` where ``keys[i]`` is
    a sample's label text (``topic="a",partition="0"``) and ``values[i]`` its
    value; ``label_values`` holds the samples' label values in order (left empty
    by ``stats_families(label_values=False)``).  Label-text lists are built once
    and shared by the families with the same labels, and kept between scrapes
    while the set of partitions is unchanged.  A counter's samples are exposed
    as ``<name>_total``.
    """

    __slots__ = ("doc", "kind", "label_values", "labels", "name", "segments")

    def __init__(self, name: str, kind: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.kind = kind
        self.doc = doc
        self.labels = labels
        self.segments: list[tuple[list[str], list[Any]]] = []
        self.label_values: list[Any] = []  # tuple[str, ...] each

    def add(self, values: tuple[str, ...], value: float) -> None:
        """Add one sample; the label text is built from ``values``."""
        if not self.segments or self.segments[-1][0] is _SHARED_NONE:
            self.segments.append(([], []))
        keys, vals = self.segments[-1]
        keys.append(_label_text(self.labels, values))
        vals.append(value)
        self.label_values.append(values)

    def extend(self, keys: list[str], values: list[Any]) -> None:
        """Add a segment: ``keys`` (kept by reference: it may be a cached list) and values."""
        self.segments.append((keys, values))
        self.segments.append((_SHARED_NONE, []))  # later add() calls open a fresh segment

    @property
    def values(self) -> list[Any]:
        return [v for _, vals in self.segments for v in vals]

    @property
    def samples(self) -> list[tuple[tuple[str, ...], Any]]:
        """``(label values, value)`` pairs (needs ``label_values``)."""
        return list(zip(self.label_values, self.values, strict=True))


_SHARED_NONE: list[str] = []
_add = operator.add


def _esc(v: str) -> str:
    # Topic and group names are [A-Za-z0-9._-]; escape anyway (a damaged record, a
    # name from elsewhere), as the exposition format requires.
    if "\\" in v or '"' in v or "\n" in v:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return v


def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{k}="{_esc(v)}"' for k, v in zip(names, values, strict=True))


def _keys(cache: dict[Any, Any], slot: Any, sig: list[tuple[str, int]], head: str
          ) -> list[str]:
    """Label texts ``{head}topic="t",partition="p"`` of ``sig``, reused while ``sig`` is
    the same as at the previous scrape (names never change; only the set does)."""
    hit = cache.get(slot)
    if hit is not None and hit[0] == sig:
        return hit[1]
    keys = [f'{head}topic="{_esc(t)}",partition="{i}"' for t, i in sig]
    cache[slot] = (sig, keys)
    return keys


def stats_families(s: BrokerStats, scrape_seconds: float | None = None, *,
                   label_values: bool = True,
                   label_cache: dict[Any, Any] | None = None) -> list[Family]:
    """The metric families of one :class:`~mqlite.BrokerStats` snapshot.

    ``label_values=False`` leaves ``Family.label_values`` empty for the
    per-partition families (only the label texts are built): enough for
    :func:`render`, and faster.  ``label_cache`` keeps the label texts between
    calls (``BrokerCollector`` passes its own).
    """
    cache: dict[Any, Any] = {} if label_cache is None else label_cache
    tp = ("topic", "partition")
    end = Family("mqlite_topic_partition_end_offset", "gauge", "Next offset to be written", tp)
    start = Family("mqlite_topic_partition_start_offset", "gauge",
                   "First offset still stored", tp)
    size = Family("mqlite_topic_partition_bytes", "gauge", "Bytes of stored record batches", tp)
    sent = Family("mqlite_messages_sent", "counter",
                  "Messages appended since the topic was created (sum of end offsets)",
                  ("topic",))
    parts = s.partitions
    sig = [(p.topic, p.partition) for p in parts]
    keys = _keys(cache, "~partitions", sig, "")
    ends = [p.end_offset for p in parts]
    end.extend(keys, ends)
    start.extend(keys, [p.start_offset for p in parts])
    size.extend(keys, [p.bytes for p in parts])
    if label_values:
        lvs = [(t, str(i)) for t, i in sig]
        end.label_values = start.label_values = size.label_values = lvs
    sent_by: dict[str, int] = {}
    for (t, _), e in zip(sig, ends, strict=True):
        sent_by[t] = sent_by.get(t, 0) + e
    for t, n in sent_by.items():
        sent.add((t,), n)

    gtp = ("group", "topic", "partition")
    lag = Family("mqlite_consumer_group_lag", "gauge",
                 "Messages not yet committed by the group", gtp)
    lag_sum = Family("mqlite_consumer_group_lag_sum", "gauge",
                     "Group lag summed over partitions", ("group", "topic"))
    committed = Family("mqlite_consumer_group_committed_offset", "gauge", "Committed offset",
                       gtp)
    members = Family("mqlite_consumer_group_members", "gauge",
                     "Live members of a stream group", ("group",))
    consumed = Family("mqlite_messages_consumed", "counter",
                      "Messages consumed by a group: committed offsets (stream groups) or "
                      "deliveries settled (queue groups)", ("topic", "group"))
    for grp in s.groups:
        g = grp.group
        rows = grp.lag
        members.add((g,), grp.members)
        gsig = [(x.topic, x.partition) for x in rows]
        gkeys = _keys(cache, ("~group", g), gsig, f'group="{_esc(g)}",')
        lags = [x.lag for x in rows]
        coms = [x.committed for x in rows]
        lag.extend(gkeys, lags)
        if None not in coms:
            committed.extend(gkeys, coms)
        else:
            kept = [(k, c) for k, c in zip(gkeys, coms, strict=True) if c is not None]
            committed.extend([k for k, _ in kept], [c for _, c in kept])
        if label_values:
            glvs = [(g, t, str(i)) for t, i in gsig]
            lag.label_values += glvs
            committed.label_values += [lv for lv, c in zip(glvs, coms, strict=True)
                                       if c is not None]
        sums: dict[str, int] = {}
        done: dict[str, int] = {}
        for (t, _), n, c in zip(gsig, lags, coms, strict=True):
            sums[t] = sums.get(t, 0) + n
            if c is not None:
                done[t] = done.get(t, 0) + c
        for t, n in sums.items():
            lag_sum.add((g, t), n)
        for t, n in done.items():
            consumed.add((t, g), n)

    tg = ("topic", "group")
    ready = Family("mqlite_queue_messages_ready", "gauge", "Queue messages receivable now", tg)
    inflight = Family("mqlite_queue_messages_inflight", "gauge",
                      "Queue messages delivered and not settled", tg)
    delayed = Family("mqlite_queue_messages_delayed", "gauge",
                     "Queue messages nacked with a running delay", tg)
    consumers = Family("mqlite_queue_consumers", "gauge", "Live consumers of a queue group", tg)
    oldest = Family("mqlite_queue_oldest_unacked_age_seconds", "gauge",
                    "Age of the oldest unsettled delivery (0: none)", tg)
    now_ms = s.taken_ms
    for q in s.queues:
        lv = (q.topic, q.group)
        ready.add(lv, q.ready)
        inflight.add(lv, q.inflight)
        delayed.add(lv, q.delayed)
        consumers.add(lv, q.consumers)
        age = 0.0 if q.oldest_pending_ms is None else max(0, now_ms - q.oldest_pending_ms) / 1e3
        oldest.add(lv, age)
        consumed.add(lv, q.consumed)

    scheduled = Family("mqlite_queue_messages_scheduled", "gauge",
                       "Delayed sends not yet due", ("topic",))
    for t, n in s.scheduled.items():
        scheduled.add((t,), n)
    dead = Family("mqlite_dead_letter_messages", "gauge",
                  "Dead letters not yet redriven or purged", ("topic",))
    for t, n in s.dead_letters.items():
        dead.add((t,), n)
    # where each group's failures go (queue policies; stream groups as their App recorded
    # it, D87): join on dead_letter_topic with mqlite_dead_letter_messages{topic}
    route = Family("mqlite_consumer_group_dead_letter_info", "gauge",
                   "1 for each (group, subscribed topic) whose failures go to dead_letter_topic",
                   ("group", "topic", "dead_letter_topic"))
    for grp in s.groups:
        for t, dlq in grp.dead_letter_topics.items():
            route.add((grp.group, t, dlq), 1)
    for q in s.queues:
        if q.dead_letter_topic is not None:
            route.add((q.group, q.topic, q.dead_letter_topic), 1)
    out = [end, start, size, sent, lag, lag_sum, committed, members, consumed, ready,
           inflight, delayed, consumers, oldest, scheduled, dead, route]
    if scrape_seconds is not None:
        d = Family("mqlite_scrape_duration_seconds", "gauge",
                   "Seconds the broker-state read of this scrape took", ())
        d.add((), scrape_seconds)
        out.append(d)
    return out


def render(families: list[Family], cache: dict[Any, Any] | None = None) -> bytes:
    """Prometheus text exposition format (0.0.4) of ``families``.

    Written directly rather than through ``prometheus_client``'s generic
    ``generate_latest`` (which builds one object per sample and sorts its
    labels): a broker of 10,000 partitions exposes ~50,000 samples.  Each
    line is a cached prefix (``\\nname{labels} ``) plus ``str(value)``, joined
    by C-level ``map``; ``cache`` (``BrokerCollector`` keeps one) holds the
    prefixes of the label-text lists seen at the previous call.
    """
    old: dict[Any, Any] = cache if cache is not None else {}
    new: dict[Any, Any] = {}
    out: list[str] = []
    for f in families:
        name = f.name + "_total" if f.kind == "counter" else f.name
        out.append(f"# HELP {name} {f.doc}\n# TYPE {name} {f.kind}")
        if not f.labels:
            out.extend(f"\n{name} {v}" for _, vals in f.segments for v in vals)
        else:
            head = f"\n{name}{{"
            for keys, vals in f.segments:
                if not vals:
                    continue
                slot = (id(keys), name)
                hit = new.get(slot) or old.get(slot)
                if hit is None or hit[0] is not keys:
                    hit = (keys, [f"{head}{k}}} " for k in keys])
                new[slot] = hit
                out.append("".join(map(_add, hit[1], map(str, vals))))
        out.append("\n")
    if cache is not None:
        cache.clear()
        cache.update(new)
    return "".join(out).encode()


def _to_prometheus(f: Family) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    cls = CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily
    fam = cls(f.name, f.doc, labels=list(f.labels))
    for lv, v in f.samples:
        fam.add_metric(list(lv), v)
    return fam


class BrokerCollector:
    """A ``prometheus_client`` collector reading ``broker``'s state at each scrape.

    Register it in a registry of your own process
    (``prometheus_client.REGISTRY.register(BrokerCollector(broker))``) to
    expose broker state next to your application's metrics.  Each
    ``collect()`` is one :meth:`mqlite.Broker.stats` call (one read
    transaction; no group joined); concurrent scrapes are serialised.
    ``describe()`` returns nothing, so registering does not read the broker.
    For large brokers :func:`serve` is faster: it renders the exposition
    text directly (see :func:`render`).

    ``dead_letter_topics``: topics whose dead-letter depth is exposed besides
    the queue groups' DLQs (which are found on their own), e.g. the
    ``dead_letter=`` topics of an App's stream subscribers.  ``ValueError`` for
    a bad topic name, ``TypeError`` for a bare string.
    """

    #: Label texts kept between scrapes before the cache is dropped (topics come and go).
    MAX_CACHED_LABELS = 1_000_000

    def __init__(self, broker: Broker, dead_letter_topics: Iterable[str] = ()) -> None:
        _require_prometheus()
        if isinstance(dead_letter_topics, (str, bytes)):
            raise TypeError("dead_letter_topics must be an iterable of topic names, not one "
                            f"string: wrap it in a list ([{dead_letter_topics!r}])")
        self._broker = broker
        self._dlqs = tuple(dead_letter_topics)
        for t in self._dlqs:
            validate_topic_name(t)
        self._lock = threading.Lock()
        self._labels: dict[Any, Any] = {}
        self._render_cache: dict[Any, Any] = {}

    def describe(self) -> list[Any]:
        return []

    def families(self, *, label_values: bool = True) -> list[Family]:
        """The current families (one stats snapshot), mqlite's own representation."""
        with self._lock:
            return self._families(label_values)

    def exposition(self) -> bytes:
        """One scrape as Prometheus text (what :func:`serve` answers)."""
        with self._lock:
            return render(self._families(False), self._render_cache)

    def _families(self, label_values: bool) -> list[Family]:
        # The cyclic garbage collector is paused meanwhile: a scrape of a large
        # broker allocates ~10^5 short-lived objects, and the collections they
        # triggered were measured to double the scrape time on a loaded machine.
        was = gc.isenabled()
        gc.disable()
        try:
            t0 = time.perf_counter()
            s = self._broker.stats(dead_letter_topics=self._dlqs)
            if len(self._labels) > self.MAX_CACHED_LABELS:
                self._labels.clear()
            return stats_families(s, time.perf_counter() - t0, label_values=label_values,
                                  label_cache=self._labels)
        finally:
            if was:
                gc.enable()

    def collect(self) -> Iterator[Any]:
        for f in self.families():
            yield _to_prometheus(f)


class _Handler(BaseHTTPRequestHandler):
    collector: BrokerCollector
    registry: Any

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served")
            return
        try:
            body = self.collector.exposition()
            if self.registry is not None:
                from prometheus_client import generate_latest

                body += generate_latest(self.registry)
        except Exception as exc:  # noqa: BLE001 - a scrape error is reported, not fatal
            msg = f"mqlite metrics: {type(exc).__name__}: {exc}\n".encode()
            self.send_response(500)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def serve(broker: Broker, port: int, addr: str = "127.0.0.1",
          registry: Any = None, dead_letter_topics: Iterable[str] = ()
          ) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``broker``'s metrics on ``http://addr:port/metrics`` from a daemon thread.

    Parameters
    ----------
    port
        TCP port, 0 to 65535 (0 picks a free one: read ``server.server_port``).
    addr
        Address to bind: 127.0.0.1 by default (the broker's state is not for
        the network unless you say so: ``"0.0.0.0"``).
    registry
        A ``prometheus_client`` registry appended to each scrape (handler
        metrics, your own); ``None``: broker metrics only.  Pass
        ``prometheus_client.REGISTRY`` to include the process's defaults.
    dead_letter_topics
        More dead-letter topics to report the depth of (see
        :class:`BrokerCollector`).

    Returns ``(server, thread)``; ``server.shutdown()`` stops it.

    Raises
    ------
    ValueError
        Bad port.
    OSError
        The address cannot be bound (e.g. the port is in use).
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
    collector = BrokerCollector(broker, dead_letter_topics)
    handler = type("MqliteMetricsHandler", (_Handler,),
                   {"collector": collector, "registry": registry})
    server = ThreadingHTTPServer((addr, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="mqlite-metrics", daemon=True)
    thread.start()
    return server, thread
