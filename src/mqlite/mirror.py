"""``mqlite mirror DIR kafka://...``: copy topics to Kafka, partition by partition.

Each source partition ``p`` is copied to partition ``p`` of a target topic
of the same name and partition count (created if missing), in offset order,
with keys, values, headers and timestamps (``CreateTime``) unchanged.  Keys
land where the embedded backend put them, which is also where Kafka's
producers put them (murmur2), so keyed producers can switch over.

Offset mapping and resuming
---------------------------
Kafka assigns its own offsets, so the mirror records, per partition, a list
of *segments* ``[source_offset, target_offset]``: a run of consecutive
source offsets starting at ``source_offset`` was written from
``target_offset`` on.  Source offsets are dense, so one segment normally
covers a whole partition; a new one starts only where the source skipped
(retention deleted messages between runs).  The mapping is stored in
``DIR/mirror/<hash of the URL>.json`` (0600, replaced atomically) and is
written *before* the messages it describes are produced.

Resuming needs no checkpoint of progress: the producer is idempotent
(librdkafka ``enable.idempotence``: in order, no duplicates from retries),
so what reached the target is always a prefix of what was sent, and the
target's end offset ``E`` says how far a partition got.  A restart resumes
at ``source_offset + (E - target_offset)`` of the last segment: a mirror
killed at any point (even ``SIGKILL``) and restarted leaves the target
identical to the source, with no duplicate and no gap.  Nothing else may
write to the target topics while they are mirrored.

:func:`translate` maps a committed source offset to the target's, and
``--groups`` commits the translated offsets of source consumer groups to
Kafka, so consumers can move over where they left off.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqlite.broker import Broker
from mqlite.errors import MqliteError
from mqlite.types import TopicPartition

__all__ = ["MirrorError", "MirrorProgress", "MirrorState", "add_mirror_command", "mirror",
           "translate"]

#: Records read from the source per step (and the granularity of progress reports).
CHUNK = 5000


class MirrorError(MqliteError):
    """The target does not match what the mirror state says (or the source went back)."""


@dataclass
class MirrorProgress:
    """One progress report: ``done`` of ``total`` records of ``topic``'s partition copied."""

    topic: str
    partition: int
    done: int
    total: int
    copied_total: int


@dataclass
class MirrorState:
    """The offset mapping: ``{topic: {partition: [[source_offset, target_offset], ...]}}``."""

    path: Path
    url: str
    segments: dict[str, dict[int, list[list[int]]]] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], url: str) -> MirrorState:
        """The state of mirroring broker ``directory`` to ``url`` (empty on the first run)."""
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        path = Path(directory) / "mirror" / f"{digest}.json"
        state = cls(path, url)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return state
        except (OSError, ValueError) as exc:
            raise MirrorError(f"unreadable mirror state {path}: {exc}; delete it only together "
                              "with the target topics") from exc
        state.segments = {t: {int(p): [list(map(int, s)) for s in segs]
                              for p, segs in parts.items()}
                          for t, parts in raw.get("segments", {}).items()}
        return state

    def save(self) -> None:
        """Write the state atomically (temp file, fsync, rename), mode 0600."""
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        data = json.dumps({"url": self.url, "segments": {
            t: {str(p): segs for p, segs in parts.items()}
            for t, parts in self.segments.items()}}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def partition(self, topic: str, partition: int) -> list[list[int]]:
        return self.segments.setdefault(topic, {}).setdefault(partition, [])


def translate(state: MirrorState, topic: str, partition: int, source_offset: int) -> int | None:
    """The target offset of ``source_offset`` (a committed offset: the next to read).

    ``None`` when the partition was never mirrored or the offset lies before
    the first mirrored message.  An offset past the mirrored end maps past the
    target's end too (the consumer waits there for what the mirror copies next).
    """
    segs = state.segments.get(topic, {}).get(partition, [])
    best = None
    for s, t in segs:
        if s <= source_offset:
            best = (s, t)
    if best is None:
        return None
    return best[1] + (source_offset - best[0])


def _resume_point(state: MirrorState, topic: str, partition: int, target_end: int,
                  source_start: int, source_end: int) -> int:
    segs = state.partition(topic, partition)
    if not segs:
        if target_end != 0:
            raise MirrorError(
                f"target {topic}[{partition}] already holds {target_end} offsets but this "
                "directory has no mirror state for it: mirror into an empty topic (delete it "
                f"on the target), or keep {state.path} from the run that filled it")
        segs.append([source_start, 0])
        state.save()
        return source_start
    s, t = segs[-1]
    if target_end < t:
        raise MirrorError(f"target {topic}[{partition}] ends at {target_end}, before offset {t} "
                          "recorded by an earlier run: the target topic was truncated or "
                          "recreated; delete it and the mirror state to start over")
    nxt = s + (target_end - t)
    if nxt > source_end:
        raise MirrorError(f"target {topic}[{partition}] holds more than the source (next source "
                          f"offset {nxt} > end {source_end}): was the source topic recreated?")
    if nxt < source_start:  # retention removed what was next: a new segment
        segs.append([source_start, target_end])
        state.save()
        nxt = source_start
    return nxt


class _Copier:
    """Produces source records to the same partition; tracks the first delivery error."""

    def __init__(self, target: Any) -> None:
        from mqlite.kafka.producer import KafkaProducer

        self.producer: KafkaProducer = target.producer(linger_ms=5)
        self.error: BaseException | None = None
        self._on_delivery = self._delivered

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None and self.error is None:
            from mqlite.kafka._errors import to_mqlite

            self.error = to_mqlite(err, "mirror")

    def put(self, m: Any) -> None:
        self.producer.produce(m.topic, m.value, m.key, m.headers or None, m.partition,
                              m.timestamp_ms, self._on_delivery)

    def flush(self) -> None:
        self.producer.flush()
        if self.error is not None:
            raise self.error


def _target_end(target: Any, topic: str, partition: int) -> int:
    c = target.consumer()
    try:
        return int(c.end_offsets([TopicPartition(topic, partition)])[
            TopicPartition(topic, partition)])
    finally:
        c.close()


def mirror(source: Broker, target: Any, state: MirrorState, topics: Sequence[str] | None = None,
           *, follow: bool = False, progress: Callable[[MirrorProgress], None] | None = None,
           stop: threading.Event | None = None) -> int:
    """Copy ``topics`` (default: all) of ``source`` to the Kafka broker ``target``.

    Returns the number of records copied by this call.  With ``follow`` it
    then keeps copying new records until ``stop`` is set.

    Raises
    ------
    MirrorError
        The target disagrees with the recorded mapping (see the module docstring).
    TopicNotFoundError
        A named topic does not exist in the source.
    MqliteError
        Kafka errors, mapped (``TimeoutError``, ``BackendError``, ...).
    """
    names = list(topics) if topics else source.topics()
    for t in names:
        n = source.partitions_for(t)
        cfg = source.topic_config(t)
        # the embedded backend keeps forever what has no retention; Kafka would apply its
        # default (7 days by timestamp) and delete old mirrored records at once
        target.create_topic(t, n, exist_ok=True, config={
            "retention.ms": str(cfg.retention_ms or -1),
            "retention.bytes": str(cfg.retention_bytes or -1),
            "max.message.bytes": str(cfg.max_message_bytes)})
        if target.partitions_for(t) != n:
            raise MirrorError(f"target topic {t!r} has {target.partitions_for(t)} partitions, "
                              f"the source {n}: mirroring keeps partition numbers, so they must "
                              "match; delete the target topic or add partitions to it")
    copier = _Copier(target)
    copied = 0
    nexts: dict[TopicPartition, int] = {}
    try:
        for t in names:
            desc = source.describe_topic(t)
            for p in desc.partitions:
                tp = TopicPartition(t, p.partition)
                end_t = _target_end(target, t, p.partition)
                pos = _resume_point(state, t, p.partition, end_t, p.start_offset, p.end_offset)
                total = p.end_offset - p.start_offset
                while pos < p.end_offset:
                    if stop is not None and stop.is_set():
                        return copied
                    msgs = source.read(t, p.partition, pos, CHUNK)
                    if not msgs:
                        break
                    pos = _copy(copier, state, source, target, tp, pos, msgs)
                    copied += len(msgs)
                    copier.flush()
                    if progress is not None:
                        progress(MirrorProgress(t, p.partition, pos - p.start_offset, total,
                                                copied))
                nexts[tp] = pos
        copier.flush()
        if follow:
            copied += _follow(source, target, state, copier, nexts, stop, progress, copied)
    finally:
        copier.producer.close()
    return copied


def _copy(copier: _Copier, state: MirrorState, source: Broker, target: Any, tp: TopicPartition,
          pos: int, msgs: Iterable[Any]) -> int:
    for m in msgs:
        if m.offset != pos:  # the source skipped (retention): record where the run restarts
            copier.flush()
            state.partition(tp.topic, tp.partition).append(
                [m.offset, _target_end(target, tp.topic, tp.partition)])
            state.save()
        copier.put(m)
        pos = m.offset + 1
    return pos


def _follow(source: Broker, target: Any, state: MirrorState, copier: _Copier,
            nexts: dict[TopicPartition, int], stop: threading.Event | None,
            progress: Callable[[MirrorProgress], None] | None, copied: int) -> int:
    c = source.consumer()
    c.assign(list(nexts))
    for tp, off in nexts.items():
        c.seek(tp, off)
    n = 0
    try:
        while stop is None or not stop.is_set():
            msgs = c.poll(max_records=CHUNK, timeout=0.5)
            by_tp: dict[TopicPartition, list[Any]] = {}
            for m in msgs:
                by_tp.setdefault(TopicPartition(m.topic, m.partition), []).append(m)
            for tp, ms in by_tp.items():
                nexts[tp] = _copy(copier, state, source, target, tp, nexts[tp], ms)
                n += len(ms)
            if msgs:
                copier.flush()
                if progress is not None:
                    last = msgs[-1]
                    progress(MirrorProgress(last.topic, last.partition, nexts[
                        TopicPartition(last.topic, last.partition)], -1, copied + n))
    finally:
        c.close()
    return n


# -- the command -------------------------------------------------------------------------------
def _printer(stream: Any) -> Callable[[MirrorProgress], None]:
    tty = stream.isatty()
    last = [0.0]

    def show(p: MirrorProgress) -> None:
        now = time.monotonic()
        if tty and now - last[0] < 0.1 and p.done != p.total:
            return
        last[0] = now
        of = "" if p.total < 0 else f"/{p.total} ({100.0 * p.done / max(1, p.total):.1f}%)"
        line = f"mirror: {p.topic}[{p.partition}] {p.done}{of}  copied {p.copied_total}"
        stream.write(("\r" + line + "\x1b[K") if tty else line + "\n")
        stream.flush()
    return show


def cmd_mirror(args: argparse.Namespace) -> int:
    """``mqlite mirror DIR URL [--topics T ...] [--follow] [--groups G ...]``."""
    import signal

    import mqlite
    from mqlite.kafka import open as open_kafka

    stop = threading.Event()

    def on_signal(_sig: int, _frame: Any) -> None:
        stop.set()

    if args.follow:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    client_options = dict(kv.split("=", 1) for kv in args.option or [])
    with mqlite.open(args.path, durability=args.durability, create=False) as source, \
            open_kafka(args.url, client_options=client_options) as target:
        state = MirrorState.load(args.path, args.url)
        t0 = time.monotonic()
        n = mirror(source, target, state, args.topics, follow=args.follow,
                   progress=None if args.quiet else _printer(sys.stderr), stop=stop)
        took = time.monotonic() - t0
        committed = 0
        for g in args.groups or []:
            for t in (args.topics or source.topics()):
                src = source.committed_offsets(g, t)
                todo = {TopicPartition(t, p): translate(state, t, p, o) for p, o in src.items()}
                ok = {tp: o for tp, o in todo.items() if o is not None}
                if ok:
                    target.commit_offsets(g, ok)
                    committed += len(ok)
    if not args.quiet and sys.stderr.isatty():
        sys.stderr.write("\n")
    summary = {"copied": n, "seconds": round(took, 3), "state": str(state.path),
               "group_offsets_committed": committed}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"mirrored {n} record(s) in {took:.2f} s; offset mapping in {state.path}"
              + (f"; committed {committed} translated group offset(s)" if committed else ""))
    return 0


def add_mirror_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``mirror`` on the ``mqlite`` command's subparsers."""
    sp = sub.add_parser("mirror", parents=[common],
                        help="copy topics to Kafka, same partitions (resumable)")
    sp.add_argument("path", help="broker directory (the source)")
    sp.add_argument("url", help="target cluster, kafka://host:port[,host:port...]")
    sp.add_argument("--topics", nargs="+", help="topics to copy (default: all)")
    sp.add_argument("--follow", action="store_true",
                    help="keep copying new messages until SIGINT/SIGTERM")
    sp.add_argument("--groups", nargs="+",
                    help="also commit these consumer groups' translated offsets on Kafka")
    sp.add_argument("--option", "-X", action="append",
                    help="librdkafka property for the target, KEY=VALUE (repeatable)")
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    sp.set_defaults(fn=cmd_mirror)
