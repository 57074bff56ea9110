"""The ``mqlite`` command line: inspect and operate a broker directory.

Examples::

    mqlite create data/ orders --partitions 6 --retention-ms 86400000   # creates data/
    mqlite topics data/
    mqlite send data/ orders 'hello' --key k1
    mqlite tail data/ orders -n 20
    mqlite describe data/ orders
    mqlite groups data/ ; mqlite group data/ payments     # stream and queue groups
    mqlite group reset-offsets data/ payments --topic orders --to-earliest
    mqlite topic alter data/ orders --partitions 12 --retention-ms 3600000
    mqlite queue data/ emails mailers       # ready / in-flight / delayed / DLQ, oldest age
    mqlite peek data/ orders --offset 100 -n 5        # or --timestamp ISO, --key K
    mqlite top data/                        # live rates and lag (--once: one frame)
    mqlite metrics data/ --port 9100        # Prometheus on http://127.0.0.1:9100/metrics
    mqlite ui data/ --port 8180 [--allow-actions]   # web console on http://127.0.0.1:8180/
    mqlite backup data/ backup/             # hot, consistent, compacted copy
    mqlite dlq list data/ emails.dlq ; mqlite dlq redrive data/ emails.dlq
    mqlite dlq redrive data/ emails.dlq --reason timeout --from-partition 0 --limit 100
    mqlite verify data/            # deep CRC check, exit status 1 on damage
    mqlite mirror data/ kafka://host:9092 [--topics T ...] [--follow]   # copy to Kafka
    mqlite run service:app --workers 3 --health-port 8081   # run a mqlite.App
    mqlite run service:app --workers 3 --metrics-port 9100  # ... with Prometheus metrics

Every command takes ``--json`` for machine-readable output, before or after
the command name (``mqlite --json topics data/`` or ``mqlite topics data/
--json``); ``--durability`` likewise.  Only ``create`` creates a missing
broker directory; the other commands refuse one.  Exit status: 0 ok, 1
verification found damage, 2 usage or mqlite error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["main"]


def _fmt_bytes(v: bytes | None) -> str:
    if v is None:
        return "null"
    try:
        s = v.decode()
        return s if s.isprintable() else repr(v)
    except UnicodeDecodeError:
        return repr(v)


def _console() -> Console:
    # Not a terminal (a pipe, a test): wide lines rather than wrapped table cells.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False,
                   soft_wrap=False)


def _table(rows: list[list[Any]], header: list[str], title: str | None = None) -> Table:
    t = Table(*header, title=title, title_justify="left", header_style="bold")
    for r in rows:
        t.add_row(*["-" if c is None else str(c) for c in r])
    return t


def _out(args: argparse.Namespace, data: Any, render: Any) -> None:
    """``--json``: ``data`` as JSON; else ``render`` (text or rich renderables) on stdout."""
    if args.json:
        print(json.dumps(json.loads(msgspec.json.encode(data)), indent=2))
    elif isinstance(render, str):
        print(render)
    else:
        _console().print(render)


def _age(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    s = max(0, now_ms - ms) / 1000
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m" if s < 7200 else f"{s / 3600:.1f}h"


def _parse_time_ms(text: str) -> int:
    """UNIX ms from digits, or an ISO 8601 date/time (UTC when it names no zone)."""
    if text.isdigit():
        return int(text)
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r}; give ISO 8601 (2026-01-31T12:00:00Z, "
                         "UTC unless it names a zone) or UNIX milliseconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return int(when.timestamp() * 1000)


def _open(args: argparse.Namespace, create: bool = False) -> Any:
    import mqlite

    return mqlite.open(args.path, durability=args.durability, create=create)


def cmd_topics(args: argparse.Namespace) -> int:
    with _open(args) as b:
        names = b.topics()
        rows = []
        for n in names:
            d = b.describe_topic(n)
            rows.append([n, len(d.partitions), d.messages, d.bytes])
    cols = ["topic", "partitions", "messages", "bytes"]
    _out(args, [dict(zip(cols, r, strict=True)) for r in rows],
         _table(rows, ["topic", "partitions", "messages", "bytes"]) if rows else "(no topics)")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    with _open(args) as b:
        d = b.describe_topic(args.topic)
    rows = [[p.partition, p.start_offset, p.end_offset, p.messages, p.bytes,
             p.oldest_timestamp_ms, p.newest_timestamp_ms] for p in d.partitions]
    table = _table(rows, ["partition", "start", "end", "messages", "bytes", "oldest_ms",
                          "newest_ms"], title=f"topic {d.name}  config {d.config}")
    _out(args, {"name": d.name, "config": d.config,
                "partitions": [p._asdict() for p in d.partitions]}, table)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    with _open(args, create=True) as b:
        b.create_topic(args.topic, partitions=args.partitions, retention_ms=args.retention_ms,
                       retention_bytes=args.retention_bytes,
                       retention_messages=args.retention_messages, cleanup=args.cleanup,
                       exist_ok=args.exist_ok)
    _out(args, {"created": args.topic}, f"created topic {args.topic}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _open(args) as b:
        b.delete_topic(args.topic)
    _out(args, {"deleted": args.topic}, f"deleted topic {args.topic}")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    with _open(args) as b:
        md = b.send(args.topic, args.value.encode(),
                    key=None if args.key is None else args.key.encode(),
                    partition=args.partition)
    _out(args, md._asdict(), f"{md.topic}[{md.partition}]@{md.offset}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    with _open(args) as b:
        c = b.consumer(args.topic)
        if args.n is not None:
            ends = c.end_offsets(c.assignment())
            for tp, end in ends.items():
                c.seek(tp, max(0, end - args.n))
        try:
            while True:
                msgs = c.poll(max_records=1000, timeout=1.0 if args.follow else 0)
                for m in msgs:
                    if args.json:
                        print(json.dumps({"topic": m.topic, "partition": m.partition,
                                          "offset": m.offset, "timestamp_ms": m.timestamp_ms,
                                          "key": _fmt_bytes(m.key), "value": _fmt_bytes(m.value),
                                          "headers": [[k, _fmt_bytes(v)] for k, v in m.headers]}))
                    else:
                        print(f"{m.partition}@{m.offset} key={_fmt_bytes(m.key)} "
                              f"{_fmt_bytes(m.value)}")
                if not msgs and not args.follow:
                    break
        except KeyboardInterrupt:
            pass
    return 0


def cmd_groups(args: argparse.Namespace) -> int:
    with _open(args) as b:
        st = b.stats()
    data: list[dict[str, Any]] = []
    # every row has dead_letter_topics ({subscribed topic: DLQ topic}) and dead_letters
    # (their depth): a queue group's from its policy, a stream group's as its App records it
    for g in st.groups:
        data.append({"group": g.group, "kind": "stream", "topics": g.topics,
                     "members": g.members, "generation": g.generation, "lag": g.total_lag,
                     "dead_letter_topics": g.dead_letter_topics,
                     "dead_letters": g.dead_letters})
    for q in st.queues:
        data.append({"group": q.group, "kind": "queue", "topics": [q.topic],
                     "members": q.consumers, "ready": q.ready, "inflight": q.inflight,
                     "delayed": q.delayed, "dead_letter_topic": q.dead_letter_topic,
                     "dead_letter_topics": {} if q.dead_letter_topic is None else
                     {q.topic: q.dead_letter_topic},
                     "dead_letters": q.dead_letters})
    rows = []
    for d in data:
        dlqs = sorted(set(d["dead_letter_topics"].values()))
        rows.append([d["group"], d["kind"], ",".join(d["topics"]), d["members"], d.get("lag"),
                     d.get("ready"), d.get("inflight"),
                     d["dead_letters"] if dlqs or d["kind"] == "queue" else None,
                     ",".join(dlqs) or None])
    _out(args, data, _table(rows, ["group", "kind", "topics", "members", "lag", "ready",
                                   "in-flight", "dlq", "dlq topic"]) if rows else "(no groups)")
    return 0


def cmd_group(args: argparse.Namespace) -> int:
    from mqlite.groups.admin import missing_stream_group

    with _open(args) as b:
        d = b.describe_group(args.group)
        queue_topics: list[str] = []
        if not (d.members or d.partitions):
            queue_topics = [q.topic for q in b.stats().queues if q.group == args.group]
        why = missing_stream_group(args.group, args.path, d, b.groups(), queue_topics)
        depth: dict[str, int] = {}
        if why is None and d.dead_letter_topics:
            depth = b.stats(dead_letter_topics=set(d.dead_letter_topics.values())).dead_letters
    if why is not None:
        raise ValueError(why)
    rows = [[m.member_id, m.pid, m.status, ",".join(f"{t}[{p}]" for t, p in m.owned)]
            for m in d.members]
    lag = [[f"{p.partition.topic}[{p.partition.partition}]", p.committed, p.end_offset, p.lag,
            p.owner or "-"] for p in d.partitions]
    parts: list[Any] = [
        _table(rows, ["member", "pid", "status", "owns"],
               title=f"group {d.group} generation {d.generation} assignor {d.assignor} "
                     f"state {d.state}"),
        _table(lag, ["partition", "committed", "end", "lag", "owner"])]
    if d.dead_letter_topics:
        parts.append(_table([[t, q, depth.get(q, 0)] for t, q in d.dead_letter_topics.items()],
                            ["topic", "dead-letter topic", "dead letters"],
                            title="failures go to (as recorded by the group's subscribers)"))
    _out(args, d, Group(*parts))
    return 0


def cmd_reset_offsets(args: argparse.Namespace) -> int:
    to: Any
    if args.to_earliest:
        to = "earliest"
    elif args.to_latest:
        to = "latest"
    elif args.to_offset is not None:
        to = args.to_offset
    else:
        to = _dt.datetime.fromtimestamp(_parse_time_ms(args.to_datetime) / 1000,
                                        tz=_dt.UTC)
    with _open(args) as b:
        new = b.reset_offsets(args.group, args.topic, to, partitions=args.partition,
                              force=args.force)
    rows = [[args.topic, p, off] for p, off in sorted(new.items())]
    _out(args, {"group": args.group, "topic": args.topic,
                "offsets": {str(p): o for p, o in sorted(new.items())}},
         _table(rows, ["topic", "partition", "committed"],
                title=f"group {args.group}: offsets reset"))
    return 0


def cmd_topic_alter(args: argparse.Namespace) -> int:
    kw: dict[str, Any] = {}
    for name in ("retention_ms", "retention_bytes", "retention_messages"):
        v = getattr(args, name)
        if v is not None:
            kw[name] = None if v == "none" else _int_arg(v, "--" + name.replace("_", "-"))
    if args.partitions is None and not kw:
        raise ValueError("nothing to change: give --partitions and/or --retention-ms, "
                         "--retention-bytes, --retention-messages")
    with _open(args) as b:
        cfg = b.alter_topic(args.topic, partitions=args.partitions, **kw)
    _out(args, {"topic": args.topic, "config": cfg.to_dict()},
         f"topic {args.topic}: {cfg.to_dict()}")
    return 0


def _int_arg(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} takes an integer or 'none', got {text!r}") from None


def cmd_queue(args: argparse.Namespace) -> int:
    with _open(args) as b:
        q = b.queue_stats(args.topic, args.group)
    if q is None:
        raise ValueError(f"topic {args.topic!r} has no queue group {args.group!r} (it is "
                         "created by its first broker.queue(...) or set_queue_policy)")
    now = int(time.time() * 1000)
    rows = [["ready", q.ready], ["in-flight", q.inflight], ["delayed (nacked)", q.delayed],
            ["consumed", q.consumed], ["consumers", q.consumers],
            ["dead-letter topic", q.dead_letter_topic or "-"],
            ["dead letters", q.dead_letters], ["max deliveries", q.max_deliveries],
            ["oldest ready message age", _age(q.oldest_ready_timestamp_ms, now)],
            ["oldest in-flight delivery age", _age(q.oldest_pending_ms, now)]]
    _out(args, q, _table(rows, ["", "value"], title=f"queue {q.topic} / {q.group}"))
    return 0


def _headers_text(headers: Any) -> str:
    return ", ".join(f"{k}={_fmt_bytes(v)}" for k, v in headers or ())


def cmd_peek(args: argparse.Namespace) -> int:
    from mqlite import TopicPartition

    msgs: list[Any] = []
    with _open(args) as b:
        d = b.describe_topic(args.topic)
        nparts = len(d.partitions)
        if args.key is not None:
            key = args.key.encode()
            # Every partition unless one is named: after partitions were added, a key's
            # older messages sit in the partition its hash chose then.
            parts = range(nparts) if args.partition is None else [args.partition]
            total = sum(d.partitions[p].end_offset - d.partitions[p].start_offset
                        for p in parts)
            with Progress(TextColumn("scanning {task.description}"), BarColumn(),
                          TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                          console=Console(stderr=True), transient=True,
                          disable=args.json or not sys.stderr.isatty()) as bar:
                task = bar.add_task(args.topic, total=total)
                for part in parts:
                    info = d.partitions[part]
                    pos = info.start_offset
                    while pos < info.end_offset and len(msgs) < args.n:
                        chunk = b.read(args.topic, part, pos, 1000)
                        if not chunk:
                            break
                        msgs.extend(m for m in chunk if m.key == key)
                        bar.advance(task, chunk[-1].offset + 1 - pos)
                        pos = chunk[-1].offset + 1
            msgs = msgs[:args.n]
        else:
            parts = range(nparts) if args.partition is None else [args.partition]
            for p in parts:
                if args.timestamp is not None:
                    c = b.consumer(None)
                    try:
                        tp = TopicPartition(args.topic, p)
                        hit = c.offsets_for_times({tp: _parse_time_ms(args.timestamp)})[tp]
                    finally:
                        c.close()
                    if hit is None:
                        continue
                    start = hit.offset
                elif args.offset is not None:
                    start = args.offset
                else:
                    start = d.partitions[p].start_offset
                msgs.extend(b.read(args.topic, p, max(start, d.partitions[p].start_offset),
                                   args.n))
    data = [{"topic": m.topic, "partition": m.partition, "offset": m.offset,
             "timestamp_ms": m.timestamp_ms, "key": _fmt_bytes(m.key),
             "value": _fmt_bytes(m.value),
             "headers": [[k, _fmt_bytes(v)] for k, v in m.headers or ()]} for m in msgs]
    rows = [[m["partition"], m["offset"],
             _dt.datetime.fromtimestamp(m["timestamp_ms"] / 1000, tz=_dt.UTC)
             .isoformat(timespec="milliseconds"), m["key"], m["value"][:80],
             _headers_text(msgs[i].headers)[:80]] for i, m in enumerate(data)]
    _out(args, data, _table(rows, ["partition", "offset", "time (UTC)", "key", "value",
                                   "headers"], title=f"{args.topic}")
         if rows else "(no messages)")
    return 0


def _top_frame(prev: Any, cur: Any) -> Any:
    """Tables of one ``mqlite top`` frame: rates between two snapshots, lag, queues."""
    dt = max(0.001, (cur.taken_ms - prev.taken_ms) / 1000) if prev is not None else None
    before: dict[str, int] = {}
    if prev is not None:
        for p in prev.partitions:
            before[p.topic] = before.get(p.topic, 0) + p.end_offset
    ends: dict[str, list[int]] = {}
    for p in cur.partitions:
        e = ends.setdefault(p.topic, [0, 0, 0])
        e[0] += p.end_offset
        e[1] += p.end_offset - p.start_offset
        e[2] += p.bytes
    topics = []
    for t, (end, msgs, size) in sorted(ends.items()):
        rate = None if dt is None or t not in before else (end - before[t]) / dt
        topics.append({"topic": t, "messages": msgs, "bytes": size, "end": end,
                       "in_per_s": None if rate is None else round(rate, 1)})
    prev_done: dict[tuple[str, str], int] = {}
    if prev is not None:
        for g in prev.groups:
            for x in g.lag:
                k = (g.group, x.topic)
                prev_done[k] = prev_done.get(k, 0) + (x.committed or 0)
        for q in prev.queues:
            prev_done[(q.group, q.topic)] = q.consumed
    groups = []
    for g in cur.groups:
        per: dict[str, list[int]] = {}
        for x in g.lag:
            e = per.setdefault(x.topic, [0, 0])
            e[0] += x.lag
            e[1] += x.committed or 0
        for t, (lag, done) in sorted(per.items()):
            k = (g.group, t)
            rate = None if dt is None or k not in prev_done else (done - prev_done[k]) / dt
            groups.append({"group": g.group, "kind": "stream", "topic": t, "members": g.members,
                           "lag": lag, "out_per_s": None if rate is None else round(rate, 1)})
    for q in cur.queues:
        k = (q.group, q.topic)
        rate = None if dt is None or k not in prev_done else (q.consumed - prev_done[k]) / dt
        groups.append({"group": q.group, "kind": "queue", "topic": q.topic,
                       "members": q.consumers, "lag": q.ready + q.inflight + q.delayed,
                       "ready": q.ready, "inflight": q.inflight,
                       "out_per_s": None if rate is None else round(rate, 1)})
    data = {"taken_ms": cur.taken_ms, "topics": topics, "groups": groups,
            "dead_letters": cur.dead_letters, "scheduled": cur.scheduled}
    render = Group(
        _table([[t["topic"], t["messages"], t["bytes"], t["in_per_s"]] for t in topics],
               ["topic", "messages", "bytes", "in/s"], title="topics"),
        _table([[g["group"], g["kind"], g["topic"], g["members"], g["lag"], g["out_per_s"]]
                for g in groups], ["group", "kind", "topic", "members", "lag", "out/s"],
               title="groups (queue lag = ready + in-flight + delayed)"),
        _table([[t, n] for t, n in cur.dead_letters.items()], ["dead-letter topic", "depth"],
               title="dead letters"))
    return data, render


def cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0 or args.interval > 3600:
        raise ValueError(f"--interval is seconds, > 0 and <= 3600, got {args.interval}")
    with _open(args) as b:
        prev = b.stats()
        if args.once:
            time.sleep(args.interval)  # two snapshots, so rates can be shown
            data, render = _top_frame(prev, b.stats())
            _out(args, data, render)
            return 0
        if args.json:
            raise ValueError("mqlite top --json needs --once (one JSON frame)")
        _, render = _top_frame(None, prev)
        try:
            with Live(render, console=_console(), refresh_per_second=4, screen=False) as live:
                while True:
                    time.sleep(args.interval)
                    cur = b.stats()
                    live.update(_top_frame(prev, cur)[1])
                    prev = cur
        except KeyboardInterrupt:
            pass
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from mqlite.metrics import serve

    stop = threading.Event()
    with _open(args) as b:
        try:
            server, _ = serve(b, args.port, args.addr,
                              dead_letter_topics=args.dead_letter_topic or ())
        except OSError as exc:
            raise ValueError(f"cannot serve metrics on {args.addr}:{args.port}: "
                             f"{exc.strerror or exc}; pick another --port (0 picks a free "
                             f"one)") from None
        print(f"serving metrics of {b.path} on http://{args.addr}:{server.server_port}/metrics",
              flush=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        try:
            stop.wait()
        finally:
            server.shutdown()
            server.server_close()
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        from mqlite.ui import run_console
    except ImportError as exc:
        raise ValueError(f"the web console needs the [ui] extra (pip install 'mqlite[ui]'): "
                         f"{exc}") from None
    with _open(args) as b:
        return run_console(b, host=args.addr, port=args.port, allow_actions=args.allow_actions,
                           refresh=args.refresh)


def cmd_backup(args: argparse.Namespace) -> int:
    dest = os.path.abspath(args.dest)
    out: dict[str, Any] = {}
    with _open(args) as b:
        used = max(1, b.space()["used_bytes"])

        def work() -> None:
            try:
                out["size"] = b.backup(dest)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                out["error"] = exc

        t0 = time.monotonic()
        worker = threading.Thread(target=work, name="mqlite-backup")
        with Progress(TextColumn("backup"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True,
                      disable=args.json or not sys.stderr.isatty()) as bar:
            task = bar.add_task("copy", total=used)
            worker.start()
            while worker.is_alive():
                worker.join(0.1)
                try:
                    bar.update(task, completed=min(used, os.path.getsize(
                        os.path.join(dest, "data.mdb"))))
                except OSError:
                    pass
        if "error" in out:
            raise out["error"]
    secs = time.monotonic() - t0
    _out(args, {"dest": dest, "bytes": out["size"], "seconds": round(secs, 3)},
         f"backup of {args.path} written to {dest}: {out['size']} bytes in {secs:.2f} s "
         f"(restore: open it, e.g. mqlite topics {dest})")
    return 0


def _origin(dl: Any) -> str:
    """``topic[partition]@offset`` a dead letter came from (``?`` for a missing header)."""
    if dl.original_topic is None:
        return "-"
    part = "?" if dl.original_partition is None else dl.original_partition
    off = "?" if dl.original_offset is None else dl.original_offset
    return f"{dl.original_topic}[{part}]@{off}"


#: Largest value of ``mqlite dlq --limit`` and of the offsets / partitions it filters on.
_MAX_I63 = 2**63 - 1


def _dlq_filter(args: argparse.Namespace) -> Any:
    """The ``where`` predicate of the ``dlq`` filter options (``None``: no filter given).

    ``--reason TEXT``: the recorded reason contains TEXT (case-sensitive);
    ``--from-topic T``: the original topic is T; ``--from-partition N``: the
    original partition is N; ``--from-offset-min A`` / ``--from-offset-max B``:
    the original offset is within [A, B].  All given ones must hold.  A letter
    without the header a filter reads does not match it.  The predicate is
    :class:`mqlite.DeadLetterFilter`, shared with the console.

    Raises
    ------
    ValueError
        ``--limit`` below 1, a negative partition or offset, ``A > B``, or an
        empty ``--reason`` / ``--from-topic``.
    """
    from mqlite.queue.deadletters import dead_letter_filter

    if not 1 <= args.limit <= _MAX_I63:
        raise ValueError(f"--limit is a number of dead letters, at least 1, got {args.limit}")
    return dead_letter_filter(reason=args.reason, from_topic=args.from_topic,
                              from_partition=args.from_partition,
                              from_offset_min=args.from_offset_min,
                              from_offset_max=args.from_offset_max,
                              label=lambda name: "--" + name.replace("_", "-"))


def cmd_dlq(args: argparse.Namespace) -> int:
    where = _dlq_filter(args)
    with _open(args) as b:
        if args.action == "list":
            letters = b.dead_letters(args.topic, limit=args.limit, where=where)
            rows = [[f"{dl.partition}@{dl.offset}", _origin(dl), dl.original_group,
                     dl.delivery_count, dl.reason, (dl.last_error or "")[:40]]
                    for dl in letters]
            _out(args, [{"partition": dl.partition, "offset": dl.offset,
                         "original_topic": dl.original_topic,
                         "original_partition": dl.original_partition,
                         "original_offset": dl.original_offset,
                         "original_group": dl.original_group,
                         "delivery_count": dl.delivery_count, "reason": dl.reason,
                         "last_error": dl.last_error,
                         "dead_lettered_ms": dl.dead_lettered_ms} for dl in letters],
                 _table(rows, ["at", "from (topic[partition]@offset)", "group", "deliveries",
                               "reason", "error"])
                 if rows else "(no dead letters)")
        elif args.action == "redrive":
            n = _redrive_with_progress(args, b, where)
            _out(args, {"redriven": n}, f"redrove {n} message(s)")
        else:
            n = b.purge_dead_letters(args.topic, where)
            _out(args, {"purged": n}, f"purged {n} message(s)")
    return 0


#: Dead letters redriven per transaction by ``mqlite dlq redrive`` (progress steps).
_REDRIVE_CHUNK = 500


def _redrive_with_progress(args: argparse.Namespace, b: Any, where: Any) -> int:
    """Redrive up to ``--limit`` letters that ``where`` accepts (``None``: all) in
    chunks, with a progress bar on a terminal.

    Each chunk is one ``broker.redrive`` call (one write transaction, each letter
    marked done with its copy), so an interrupted run leaves no letter redriven twice.
    The filter is applied before the limit: ``--limit`` counts matching letters.
    The chunks share one :class:`mqlite.DeadLetterCursor`, so each starts where the
    last stopped: N letters are read about once, not once per chunk (D83).
    """
    import mqlite

    show = not args.json and sys.stderr.isatty()
    total: int | None = None
    if show and where is None:  # the depth is a cheap count; with a filter the bar pulses
        depth = b.stats(dead_letter_topics=[args.topic]).dead_letters.get(args.topic, 0)
        total = min(args.limit, depth)
    cursor = mqlite.DeadLetterCursor()
    done = 0
    with Progress(TextColumn("redrive"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                  disable=not show) as bar:
        task = bar.add_task("redrive", total=total)
        while done < args.limit:
            n = b.redrive(args.topic, where=where,
                          limit=min(_REDRIVE_CHUNK, args.limit - done), cursor=cursor)
            if n == 0:
                break
            done += n
            bar.update(task, completed=done if total is None else min(done, total))
    return done


def cmd_verify(args: argparse.Namespace) -> int:
    from mqlite.verify import verify_in_child

    rep = verify_in_child(args.path)
    lines = [(f"{rep.path}: {rep.topics} topics, {rep.partitions} partitions, {rep.batches} "
             f"batches, {rep.records} records, {rep.bytes} bytes")]
    for p in rep.problems:
        where = "" if p.topic is None else f"{p.topic}[{p.partition}]" + (
            "" if p.offset is None else f"@{p.offset}") + ": "
        lines.append(f"CORRUPT {where}{p.message}")
    lines.append("OK" if rep.ok else f"{len(rep.problems)} problem(s) found")
    _out(args, rep, "\n".join(lines))
    return 0 if rep.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    """``mqlite run module:app``: run a service App until SIGTERM / SIGINT (mqlite.app.run)."""
    import logging

    from mqlite.app.app import load_app

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    app = load_app(args.app)
    if args.graceful_timeout is not None:
        if not 0 <= args.graceful_timeout <= 3600:
            raise ValueError("--graceful-timeout is in seconds: 0 to 3600")
        app.graceful_timeout = args.graceful_timeout
    return app.run(workers=args.workers, health_port=args.health_port,
                   health_host=args.health_host, metrics_port=args.metrics_port,
                   metrics_host=args.metrics_host)


def _add_app_commands(sub: Any) -> None:
    """The service-framework commands (``run``); ``dlq`` works on App dead letters too."""
    sp = sub.add_parser("run", help="run a service App (module:attribute) until SIGTERM")
    sp.add_argument("app", help="module:attribute of the mqlite.App, e.g. service:app")
    sp.add_argument("--workers", type=int, default=1,
                    help="worker processes sharing the groups (1-256, default 1)")
    sp.add_argument("--health-port", type=int,
                    help="serve GET /health on this port (200 ready, 503 not)")
    sp.add_argument("--health-host", default="127.0.0.1", help="address of the health server")
    sp.add_argument("--metrics-port", type=int,
                    help="serve Prometheus /metrics on this port: broker state and the "
                         "handler metrics of all workers (0-65535)")
    sp.add_argument("--metrics-host", default="127.0.0.1",
                    help="address of the metrics server")
    sp.add_argument("--graceful-timeout", type=float,
                    help="seconds running handlers get to finish on SIGTERM (0-3600)")
    sp.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    sp.set_defaults(fn=cmd_run, json=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mqlite", description="Inspect and operate an mqlite broker.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--durability", default="sync", choices=["sync", "lazy", "none"],
                   help="this process's durability mode (not stored in the directory)")
    # The same two options after the command name too ("mqlite topics data/ --json"):
    # SUPPRESS keeps a subcommand from resetting what was given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    common.add_argument("--durability", choices=["sync", "lazy", "none"],
                        default=argparse.SUPPRESS,
                        help="this process's durability mode (not stored in the directory)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn: Any, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, parents=[common])
        sp.add_argument("path", help="broker directory")
        sp.set_defaults(fn=fn)
        return sp

    add("topics", cmd_topics, "list topics")
    add("describe", cmd_describe, "describe a topic").add_argument("topic")
    sp = add("create", cmd_create, "create a topic")
    sp.add_argument("topic")
    sp.add_argument("--partitions", type=int, default=1)
    sp.add_argument("--retention-ms", type=int)
    sp.add_argument("--retention-bytes", type=int)
    sp.add_argument("--retention-messages", type=int)
    sp.add_argument("--cleanup", default="delete", choices=["delete", "consumed"])
    sp.add_argument("--exist-ok", action="store_true")
    add("delete", cmd_delete, "delete a topic").add_argument("topic")
    sp = add("send", cmd_send, "send one UTF-8 message")
    sp.add_argument("topic")
    sp.add_argument("value")
    sp.add_argument("--key")
    sp.add_argument("--partition", type=int)
    sp = add("tail", cmd_tail, "print messages of a topic")
    sp.add_argument("topic")
    sp.add_argument("-n", type=int, help="only the last N per partition")
    sp.add_argument("-f", "--follow", action="store_true")
    add("groups", cmd_groups, "list stream and queue consumer groups")
    add("group", cmd_group, "describe a consumer group").add_argument("group")
    sp = add("group-reset-offsets", cmd_reset_offsets,
             "set a stream group's committed offsets (also: mqlite group reset-offsets ...)")
    sp.add_argument("group")
    sp.add_argument("--topic", required=True)
    how = sp.add_mutually_exclusive_group(required=True)
    how.add_argument("--to-earliest", action="store_true", help="the log start")
    how.add_argument("--to-latest", action="store_true", help="the log end")
    how.add_argument("--to-offset", type=int, metavar="N",
                     help="offset N (clamped to the stored range)")
    how.add_argument("--to-datetime", metavar="ISO",
                     help="first message at or after this time (ISO 8601, UTC unless it names "
                          "a zone; or UNIX ms)")
    sp.add_argument("--partition", type=int, action="append",
                    help="only this partition (repeatable; default all)")
    sp.add_argument("--force", action="store_true",
                    help="reset even while members are alive (they may commit over it)")
    sp = add("topic-alter", cmd_topic_alter,
             "change retention / add partitions (also: mqlite topic alter ...)")
    sp.add_argument("topic")
    sp.add_argument("--partitions", type=int, help="new count, >= the current one")
    sp.add_argument("--retention-ms", help="milliseconds, or 'none' to keep forever")
    sp.add_argument("--retention-bytes", help="bytes per partition, or 'none'")
    sp.add_argument("--retention-messages", help="messages per partition, or 'none'")
    sp = add("queue", cmd_queue, "depths of a queue group (ready, in-flight, delayed, DLQ)")
    sp.add_argument("topic")
    sp.add_argument("group")
    sp = add("peek", cmd_peek, "show messages by offset, time or key (no group, no commit)")
    sp.add_argument("topic")
    sp.add_argument("--partition", type=int)
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--offset", type=int, help="from this offset (each partition)")
    where.add_argument("--timestamp", metavar="TIME",
                       help="from the first message at or after TIME (ISO 8601 or UNIX ms)")
    where.add_argument("--key", help="messages with this key (UTF-8); scans the partitions")
    sp.add_argument("-n", type=int, default=10, help="at most N messages per partition "
                    "(with --key: in all)")
    sp = add("top", cmd_top, "live view of rates, lag and queue depths")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    sp.add_argument("--once", action="store_true",
                    help="print one frame (two snapshots --interval apart) and exit")
    sp = add("metrics", cmd_metrics, "serve Prometheus metrics of the broker's state")
    sp.add_argument("--port", type=int, default=9100, help="TCP port (0: any free one)")
    sp.add_argument("--addr", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)")
    sp.add_argument("--dead-letter-topic", action="append", metavar="TOPIC",
                    help="also export the dead-letter depth of TOPIC (repeatable; queue "
                         "groups' DLQs are found on their own, an App's stream DLQs are not)")
    sp = add("ui", cmd_ui, "web console: topics, groups, queues, DLQs, live rates and lag")
    sp.add_argument("--port", type=int, default=8180, help="TCP port (0: any free one)")
    sp.add_argument("--addr", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--allow-actions", action="store_true",
                    help="enable redrive / purge / reset-offsets; each needs the token "
                         "printed at start")
    sp.add_argument("--refresh", type=float, default=2.0,
                    help="seconds between live refreshes of open pages (0.25-60)")
    sp = add("backup", cmd_backup, "hot, consistent, compacted copy into a new directory")
    sp.add_argument("dest", help="new or empty directory; restore = open it")
    sp = sub.add_parser("dlq", help="dead-letter tools", parents=[common])
    sp.add_argument("action", choices=["list", "redrive", "purge"])
    sp.add_argument("path")
    sp.add_argument("topic", help="the dead-letter topic")
    sp.add_argument("--limit", type=int, default=1000,
                    help="list / redrive at most N letters (after the filters; default 1000)")
    filt = sp.add_argument_group(
        "filters", "only letters matching all of these (list, redrive and purge)")
    filt.add_argument("--reason", metavar="TEXT",
                      help="the recorded reason contains TEXT (case-sensitive)")
    filt.add_argument("--from-topic", metavar="TOPIC", help="came from this topic")
    filt.add_argument("--from-partition", type=int, metavar="N",
                      help="came from partition N (>= 0) of its original topic")
    filt.add_argument("--from-offset-min", type=int, metavar="A",
                      help="original offset >= A (>= 0)")
    filt.add_argument("--from-offset-max", type=int, metavar="B",
                      help="original offset <= B (>= A)")
    sp.set_defaults(fn=cmd_dlq)
    add("verify", cmd_verify, "deep-check every stored batch (exit 1 on damage)")
    from mqlite.mirror import add_mirror_command

    add_mirror_command(sub, common)
    _add_app_commands(sub)
    return p


#: Two-word commands, spelled as users of kafka-consumer-groups / kafka-topics expect.
_TWO_WORD = {("group", "reset-offsets"): "group-reset-offsets", ("topic", "alter"): "topic-alter"}


def _join_two_word(argv: list[str]) -> list[str]:
    for i in range(len(argv) - 1):
        name = _TWO_WORD.get((argv[i], argv[i + 1]))
        if name is not None and all(a.startswith("-") or a in ("sync", "lazy", "none")
                                    for a in argv[:i]):
            return argv[:i] + [name] + argv[i + 2:]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mqlite`` command."""
    from mqlite.errors import MqliteError

    args = _parser().parse_args(_join_two_word(list(sys.argv[1:] if argv is None else argv)))
    try:
        return int(args.fn(args))
    except (MqliteError, ValueError, TypeError) as exc:
        print(f"mqlite: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

