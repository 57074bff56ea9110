"""Power loss: crash images built from a trace of every write and sync of ``data.mdb``.

A killed process loses nothing the kernel already has (kill -9 tests cover
that); a power cut loses whatever the device had not made durable.  A child
runs a random workload under ``_iofault_shim.c`` with ``MQLITE_TRACE_FILE``
set: the shim appends every write to ``data.mdb`` (offset and bytes) and
every successful ``fdatasync``/``fsync`` to a trace, and the child prints,
after each send to the checked topic returned, how many trace records
existed then (``_procs_powerloss.py``).

A crash after trace record ``P`` leaves on disk (RELIABILITY.md):

* every write before the last sync at or before ``P`` (a sync makes all
  earlier writes to the file durable);
* every write through an ``O_DSYNC`` descriptor before ``P`` (LMDB writes
  the meta page that way under ``durability="sync"``);
* any subset of the other writes before ``P`` (the page cache may have
  flushed some of them, in any order).  Writes are kept or dropped whole.

For crash points at every sync barrier, just before it, and at random (at
most 160 per mode in CI, 1,500 in the ``slow`` runs; keep the images with
``MQLITE_KEEP_IMAGES=1``), an image is built with a random subset of the
undecided writes, then opened as a broker directory of its own.  Checks,
under ``"sync"`` and ``"lazy"``:

* the image opens, every batch passes its CRC (``verify``) and both topics
  read back without error;
* offsets are dense from 0 and every message read is one the child sent,
  byte for byte (its id and CRC32);
* ``"sync"``: every send that returned at or before ``P`` is present;
  ``"lazy"``: every send that returned before the last sync at or before
  ``P`` is present (its meta page is made durable by the next commit's sync:
  only the last commit(s) may roll back).  "Durable" below means the same;
* queue group ``w``: no message whose ack was durable is delivered again, and
  every message present is either acknowledged or delivered now (its dead
  owner's deliveries come back at once): nothing is stuck or lost;
* stream group ``g``: each committed offset is at least the last durable
  commit's and at most the partition's end;
* the image accepts a new send and reads it back.

Crash points while the broker was being created (before the first sync after
the topics exist) only have to open and work: LMDB writes a new file's meta
pages without a sync, and a file whose meta pages never reached the disk is
set aside by ``mqlite.open`` and started afresh (nothing in it was ever
acknowledged).

``"none"`` promises nothing across an OS crash and is not checked.

The ``combine`` rows add commits that carry other senders' operations: before
about half of the single sends, 1-5 more sends are handed to the commit ring
as another process would hand them, and the send that follows commits them
all in one transaction (``_procs_powerloss.py``); the same checks apply to
every one of them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import mqlite
from mqlite.verify import verify

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_procs_powerloss.py"
HEADER = struct.Struct("<cxxxIq")


class Trace:
    """The parsed trace: per record its kind (b"W", b"D", b"S"), offset and bytes."""

    def __init__(self, path: Path) -> None:
        self.kinds: list[bytes] = []
        self.offsets: list[int] = []
        self.data: list[bytes] = []
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            if pos + HEADER.size > len(raw):
                raise AssertionError(f"trace ends inside a header at byte {pos}")
            kind, length, off = HEADER.unpack_from(raw, pos)
            pos += HEADER.size
            if kind not in (b"W", b"D", b"S") or pos + length > len(raw):
                raise AssertionError(f"bad trace record at byte {pos}: {kind!r} {length}")
            self.kinds.append(kind)
            self.offsets.append(off)
            self.data.append(raw[pos:pos + length])
            pos += length
        self.syncs = [i for i, k in enumerate(self.kinds) if k == b"S"]

    def __len__(self) -> int:
        return len(self.kinds)

    def last_sync_before(self, p: int) -> int:
        """Index of the last sync among records [0, p), or -1."""
        best = -1
        for i in self.syncs:
            if i >= p:
                break
            best = i
        return best


class Workload:
    """What the child reported: per line the trace mark and what the call stored."""

    def __init__(self, lines: list[str]) -> None:
        self.ready = int(lines[0].split()[1])
        self.acks: list[tuple[int, dict[int, int]]] = []  # sends: id -> crc32
        self.qacks: list[tuple[int, list[int]]] = []      # queue acks: ids
        self.commits: list[tuple[int, dict[int, int]]] = []  # group g: partition -> offset
        for line in lines[1:-1]:
            kind, mark, *vals = line.split()
            if kind == "ACK":
                self.acks.append((int(mark), {int(i): int(c) for i, c in
                                              (v.split(":") for v in vals)}))
            elif kind == "QACK":
                self.qacks.append((int(mark), [int(v) for v in vals]))
            elif kind == "GCOMMIT":
                self.commits.append((int(mark), {int(p): int(o) for p, o in
                                                 (v.split(":") for v in vals)}))
            else:
                raise AssertionError(f"unexpected child line {line!r}")
        self.sent: dict[int, int] = {}
        for _, acked in self.acks:
            self.sent.update(acked)
        self.all_qacked = {i for _, ids in self.qacks for i in ids}

    def durable(self, durable_to: int) -> tuple[dict[int, int], set[int], dict[int, int]]:
        """Sends, queue acks and group commits whose call returned by record ``durable_to``."""
        sends: dict[int, int] = {}
        for mark, vals in self.acks:
            if mark <= durable_to:
                sends.update(vals)
        qacked = {i for mark, ids in self.qacks if mark <= durable_to for i in ids}
        committed: dict[int, int] = {}
        for mark, pos in self.commits:
            if mark <= durable_to:
                for part, off in pos.items():
                    committed[part] = max(committed.get(part, 0), off)
        return sends, qacked, committed


def run_workload(shim: Path, tmp: Path, durability: str, seed: int, ops: int,
                 combine: bool = False) -> tuple[Trace, Workload]:
    broker_dir = tmp / "live"
    trace_path = tmp / "trace.bin"
    env = dict(os.environ, LD_PRELOAD=str(shim), MQLITE_TRACE_FILE=str(trace_path))
    env.pop("MQLITE_COMBINE", None)
    cfg = {"path": str(broker_dir), "durability": durability, "ops": ops, "seed": seed,
           "combine": combine}
    proc = subprocess.run([sys.executable, str(CHILD), json.dumps(cfg)], env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"workload child failed ({proc.returncode}):\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert lines and lines[-1] == "DONE", proc.stdout[-2000:]
    return Trace(trace_path), Workload(lines)


def build_image(trace: Trace, p: int, rng: random.Random, dest: Path) -> None:
    """data.mdb as a power cut after record ``p`` could leave it (see module doc)."""
    last = trace.last_sync_before(p)
    dest.mkdir(mode=0o700)
    with open(dest / "data.mdb", "wb") as f:
        os.chmod(dest / "data.mdb", 0o600)
        for i in range(p):
            kind = trace.kinds[i]
            if kind == b"S":
                continue
            if i < last or kind == b"D" or rng.random() < 0.5:
                f.seek(trace.offsets[i])
                f.write(trace.data[i])


def check_image(image: Path, durability: str, work: Workload, durable_to: int) -> None:
    must_have, qacked, committed = work.durable(durable_to)
    sent = work.sent
    report = verify(str(image))
    assert report.ok, f"verify failed: {report.problems[:3]}"
    with mqlite.open(image, durability=durability) as b:
        seen: dict[int, int] = {}
        for part in range(b.partitions_for("t")):
            offset = 0
            while True:
                msgs = b.read("t", part, offset, max_records=1000)
                if not msgs:
                    break
                for m in msgs:
                    assert m.offset == offset, f"offsets not dense in t/{part}: {m.offset}"
                    offset += 1
                    assert m.value is not None
                    ident = int(m.value.split(b"-", 2)[1])
                    assert sent.get(ident) == zlib.crc32(m.value), \
                        f"message {ident} in t/{part} was never sent with these bytes"
                    assert ident not in seen, f"message {ident} stored twice"
                    seen[ident] = part
        b.read("c", 0, 0, max_records=1000)  # the churn topic reads back too
        missing = sorted(set(must_have) - set(seen))
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
        ends = {p: sum(1 for part in seen.values() if part == p) for p in (0, 1)}
        for part, off in b.committed_offsets("g", "t").items():
            assert committed.get(part, 0) <= off <= ends[part], \
                f"group g partition {part}: committed {off}, durable {committed.get(part)}, " \
                f"end {ends[part]}"
        for part, off in committed.items():
            assert b.committed_offsets("g", "t").get(part, 0) >= off, \
                f"group g lost its durable commit {off} on partition {part}"
        q = b.queue("t", group="w", visibility_timeout=600)
        delivered: list[int] = []
        while True:
            got = q.receive(1000, timeout=0)
            if not got:
                break
            for d in got:
                assert d.value is not None
                delivered.append(int(d.value.split(b"-", 2)[1]))
        q.close()
        assert len(delivered) == len(set(delivered)), "a message was delivered twice at once"
        again = sorted(set(delivered) & qacked)
        assert not again, f"durably acked messages delivered again: {again[:5]}"
        stuck = sorted(set(seen) - set(delivered) - work.all_qacked)
        assert not stuck, f"messages neither acked nor deliverable: {stuck[:5]}"
        md = b.send("t", b"t-999999999-after", partition=0)
        assert [m.value for m in b.read("t", 0, md.offset)] == [b"t-999999999-after"]


def check_early_image(image: Path, durability: str) -> None:
    """A crash while the broker was being created: nothing was acknowledged yet, so
    the image only has to open (empty, or with the topics made so far) and work."""
    with mqlite.open(image, durability=durability) as b:  # may set data.mdb aside
        assert set(b.topics()) <= {"t", "c"}
        b.create_topic("t", partitions=2, exist_ok=True)
        md = b.send("t", b"t-999999999-after", partition=0)
        assert [m.value for m in b.read("t", 0, md.offset)] == [b"t-999999999-after"]
    report = verify(str(image))
    assert report.ok, f"verify failed: {report.problems[:3]}"


def crash_points(trace: Trace, start: int, rng: random.Random, n_random: int) -> list[int]:
    """Right after and right before each sync at or after ``start``, the end, and random ones."""
    points = {len(trace)}
    for i in trace.syncs:
        if i >= start:
            points.add(i + 1)
            points.add(i)
    points.update(rng.randrange(start, len(trace) + 1) for _ in range(n_random))
    return sorted(p for p in points if p >= start)


@pytest.mark.parametrize(("durability", "ops", "max_points", "combine"), [
    ("sync", 120, 160, False),
    ("lazy", 120, 160, False),
    ("sync", 80, 80, True),
    ("lazy", 80, 80, True),
    pytest.param("sync", 1500, 1500, False, marks=pytest.mark.slow),
    pytest.param("lazy", 1500, 1500, False, marks=pytest.mark.slow),
    pytest.param("sync", 1500, 1500, True, marks=pytest.mark.slow),
    pytest.param("lazy", 1500, 1500, True, marks=pytest.mark.slow),
])
def test_crash_images_keep_every_synced_message(shim: Path, tmp_path: Path, rng: random.Random,
                                                durability: str, ops: int,
                                                max_points: int, combine: bool) -> None:
    trace, work = run_workload(shim, tmp_path, durability, rng.randrange(2**32), ops=ops,
                               combine=combine)
    assert trace.syncs, "the shim saw no sync of data.mdb: is LMDB still writing through libc?"
    assert any(k == b"W" for k in trace.kinds)
    if durability == "sync":
        assert any(k == b"D" for k in trace.kinds), "no O_DSYNC meta-page write under 'sync'"
    assert work.qacks and work.commits, "the workload acked nothing or committed nothing"
    # before the first sync after the topics exist, nothing was acknowledged: those
    # crash points (broker creation) get the lighter check_early_image
    first = next(i for i in trace.syncs if i >= work.ready - 1) + 1
    points = crash_points(trace, 0, rng, n_random=max_points // 4)
    if len(points) > max_points:  # bounded; each run samples other points (seeded)
        points = sorted(rng.sample(points, max_points))
    assert len(points) >= min(max_points, 100), f"only {len(points)} crash points"
    for n, p in enumerate(points):
        durable_to = p if durability == "sync" else trace.last_sync_before(p)
        image = tmp_path / f"image-{n}"
        build_image(trace, p, rng, image)
        try:
            if p < first:
                check_early_image(image, durability)
            else:
                check_image(image, durability, work, durable_to)
        except Exception as exc:
            raise AssertionError(f"crash image after trace record {p} of {len(trace)} "
                                 f"({durability}): {exc}") from exc
        finally:
            if os.environ.get("MQLITE_KEEP_IMAGES") != "1":
                shutil.rmtree(image, ignore_errors=True)
