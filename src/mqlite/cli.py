"""The ``mqlite`` command line: inspect and operate a broker directory.

Examples::

    mqlite create data/ orders --partitions 6 --retention-ms 86400000   # creates data/
    mqlite topics data/
    mqlite send data/ orders 'hello' --key k1
    mqlite tail data/ orders -n 20
    mqlite describe data/ orders
    mqlite groups data/ ; mqlite group data/ payments
    mqlite dlq list data/ emails.dlq ; mqlite dlq redrive data/ emails.dlq
    mqlite verify data/            # deep CRC check, exit status 1 on damage
    mqlite run service:app --workers 3 --health-port 8081   # run a mqlite.App

Every command takes ``--json`` for machine-readable output, before or after
the command name (``mqlite --json topics data/`` or ``mqlite topics data/
--json``); ``--durability`` likewise.  Only ``create`` creates a missing
broker directory; the other commands refuse one.  Exit status: 0 ok, 1
verification found damage, 2 usage or mqlite error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

__all__ = ["main"]


def _fmt_bytes(v: bytes | None) -> str:
    if v is None:
        return "null"
    try:
        s = v.decode()
        return s if s.isprintable() else repr(v)
    except UnicodeDecodeError:
        return repr(v)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(json.loads(msgspec.json.encode(data)), indent=2))
    else:
        print(text)


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
    text = f"topic {d.name}  config {d.config}\n" + _table(
        rows, ["partition", "start", "end", "messages", "bytes", "oldest_ms", "newest_ms"])
    _out(args, {"name": d.name, "config": d.config,
                "partitions": [p._asdict() for p in d.partitions]}, text)
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
        names = b.groups()
    _out(args, names, "\n".join(names) if names else "(no groups)")
    return 0


def cmd_group(args: argparse.Namespace) -> int:
    with _open(args) as b:
        d = b.describe_group(args.group)
    rows = [[m.member_id, m.pid, m.status, ",".join(f"{t}[{p}]" for t, p in m.owned)]
            for m in d.members]
    lag = [[f"{p.partition.topic}[{p.partition.partition}]", p.committed, p.end_offset, p.lag,
            p.owner or "-"] for p in d.partitions]
    text = (f"group {d.group} generation {d.generation} assignor {d.assignor}\n"
            + _table(rows, ["member", "pid", "status", "owns"]) + "\n\n"
            + _table(lag, ["partition", "committed", "end", "lag", "owner"]))
    _out(args, d, text)
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    with _open(args) as b:
        if args.action == "list":
            letters = b.dead_letters(args.topic, limit=args.limit)
            rows = [[dl.offset, dl.original_topic, dl.original_offset, dl.delivery_count,
                     dl.reason, (dl.last_error or "")[:40]] for dl in letters]
            _out(args, [{"offset": dl.offset, "original_topic": dl.original_topic,
                         "original_offset": dl.original_offset,
                         "delivery_count": dl.delivery_count, "reason": dl.reason,
                         "last_error": dl.last_error} for dl in letters],
                 _table(rows, ["offset", "from", "orig_offset", "deliveries", "reason", "error"])
                 if rows else "(no dead letters)")
        elif args.action == "redrive":
            n = b.redrive(args.topic, limit=args.limit)
            _out(args, {"redriven": n}, f"redrove {n} message(s)")
        else:
            n = b.purge_dead_letters(args.topic)
            _out(args, {"purged": n}, f"purged {n} message(s)")
    return 0


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
                   health_host=args.health_host)


def _add_app_commands(sub: Any) -> None:
    """The service-framework commands (``run``); ``dlq`` works on App dead letters too."""
    sp = sub.add_parser("run", help="run a service App (module:attribute) until SIGTERM")
    sp.add_argument("app", help="module:attribute of the mqlite.App, e.g. service:app")
    sp.add_argument("--workers", type=int, default=1,
                    help="worker processes sharing the groups (1-256, default 1)")
    sp.add_argument("--health-port", type=int,
                    help="serve GET /health on this port (200 ready, 503 not)")
    sp.add_argument("--health-host", default="127.0.0.1", help="address of the health server")
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
    add("groups", cmd_groups, "list consumer groups")
    add("group", cmd_group, "describe a consumer group").add_argument("group")
    sp = sub.add_parser("dlq", help="dead-letter tools", parents=[common])
    sp.add_argument("action", choices=["list", "redrive", "purge"])
    sp.add_argument("path")
    sp.add_argument("topic", help="the dead-letter topic")
    sp.add_argument("--limit", type=int, default=1000)
    sp.set_defaults(fn=cmd_dlq)
    add("verify", cmd_verify, "deep-check every stored batch (exit 1 on damage)")
    _add_app_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mqlite`` command."""
    from mqlite.errors import MqliteError

    args = _parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (MqliteError, ValueError, TypeError) as exc:
        print(f"mqlite: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

