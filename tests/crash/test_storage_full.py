"""Storage full: a tiny map filled past its high-water mark.

Sends of every kind (``send``, ``send_batch``, producer futures, exchange
``publish``) fail with :class:`StorageFullError`, a retriable
:class:`MqliteError`; consumers keep working (stream poll and commit, a new
group member joining, queue receive / ack / nack, ``delete_topic``,
retention); once space is freed sends succeed again; and nothing is
corrupted: ``verify`` passes and every send that returned is readable.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import mqlite
from mqlite import StorageFullError, TopicPartition
from mqlite._storage.env import MapExhaustedError
from mqlite.verify import verify_in_child

MAP = 2 << 20  # the smallest maps are the fastest to fill; 1 MiB is the floor
VALUE = 4000


def _fill(b: mqlite.Broker, topics: list[str], rng: random.Random
          ) -> dict[tuple[str, int, int], bytes]:
    """Send until refused; return every message whose send returned."""
    acked: dict[tuple[str, int, int], bytes] = {}
    for i in range(10_000):
        t = topics[i % len(topics)]
        v = b"%d|" % i + rng.randbytes(rng.randrange(VALUE // 2, VALUE))
        try:
            md = b.send(t, v)
        except StorageFullError as exc:
            assert isinstance(exc, mqlite.MqliteError) and exc.retriable
            assert "map_size" in str(exc)
            return acked
        acked[(t, md.partition, md.offset)] = v
    raise AssertionError("a 2 MiB map never filled")


def _assert_readable(b: mqlite.Broker, acked: dict[tuple[str, int, int], bytes]) -> None:
    for (t, p, o), v in acked.items():
        got = b.read(t, p, o, max_records=1)
        assert got and got[0].offset == o and got[0].value == v, (t, p, o)


def _assert_sound(path: Path) -> None:
    rep = verify_in_child(str(path), timeout=60)
    assert rep.ok, rep.problems


@pytest.fixture
def full(tmp_broker_dir: Path, rng: random.Random):
    b = mqlite.open(tmp_broker_dir, durability="none", map_size=MAP)
    b.create_topic("log", partitions=2)
    b.create_topic("jobs", cleanup="consumed")
    acked = _fill(b, ["log", "jobs"], rng)
    yield b, acked
    b.close()


def test_every_send_path_refused_above_high_water_mark(full, tmp_broker_dir: Path) -> None:
    b, acked = full
    assert len(acked) > 100
    space = b._engine.env.space()
    # Refused when the next message (charged twice its size plus a page) would cross it.
    assert space["high_water_bytes"] - 3 * VALUE - 4096 < space["used_bytes"] <= space[
        "high_water_bytes"]
    for i in range(1000):  # top up with small messages until even those are refused
        try:
            md = b.send("log", b"s%d" % i)
        except StorageFullError:
            break
        acked[("log", md.partition, md.offset)] = b"s%d" % i
    else:
        raise AssertionError("small sends were never refused")
    with pytest.raises(StorageFullError):
        b.send("log", b"x" * VALUE)
    with pytest.raises(StorageFullError):
        b.send_batch("log", [b"y" * 100] * 10)
    with b.producer() as p:
        fut = p.send("log", b"z" * VALUE)
        with pytest.raises(StorageFullError):
            fut.result(timeout=10)
    b.declare_exchange("ex", "fanout")
    b.bind("ex", "log")
    with pytest.raises(StorageFullError):
        b.publish("ex", "any", b"w" * VALUE)
    # Retrying while still full keeps failing cleanly, and nothing partial was stored.
    ends = {p.partition: p.end_offset for p in b.describe_topic("log").partitions}
    for _ in range(3):
        with pytest.raises(StorageFullError):
            b.send("log", b"again")
    assert {p.partition: p.end_offset for p in b.describe_topic("log").partitions} == ends
    _assert_readable(b, acked)
    b.close()
    _assert_sound(tmp_broker_dir)


def test_consumers_drain_a_full_broker_and_sends_resume(full, tmp_broker_dir: Path) -> None:
    b, acked = full
    log_msgs = {k: v for k, v in acked.items() if k[0] == "log"}
    job_msgs = {k: v for k, v in acked.items() if k[0] == "jobs"}
    # A stream group member joins (writes group state) and consumes, commits.
    with b.consumer("log", group="readers", commit="manual") as c:
        seen: dict[tuple[str, int, int], bytes | None] = {}
        while len(seen) < len(log_msgs):
            msgs = c.poll(max_records=100, timeout=2.0)
            assert msgs, "a full broker stopped delivering"
            seen.update({("log", m.partition, m.offset): m.value for m in msgs})
        c.commit()
        assert seen == log_msgs
        assert b.committed_offsets("readers", "log") == {
            tp.partition: o for tp, o in c.positions().items()}
    # Still full: consuming a plain log frees nothing by itself.
    with pytest.raises(StorageFullError):
        b.send("log", b"still full")
    # Queue consumers receive, nack and ack everything.
    with b.queue("jobs", "workers") as q:
        got = q.receive(max_messages=10, timeout=2.0)
        assert got
        q.nack(got[:3], delay=0.0)
        q.ack(got[3:])
        done = {("jobs", d.partition, d.offset): d.value for d in got[3:]}
        while len(done) < len(job_msgs):
            ds = q.receive(max_messages=50, timeout=2.0)
            assert ds, "a full broker stopped delivering queue messages"
            q.ack(ds)
            done.update({("jobs", d.partition, d.offset): d.value for d in ds})
        assert done == job_msgs
        assert q.lag() == 0
    # cleanup="consumed": what the queue group acked is deleted; sends work again.
    b.apply_retention("jobs")
    assert b.describe_topic("jobs").partitions[0].messages == 0
    md = b.send("jobs", b"after retention")
    assert b.read("jobs", md.partition, md.offset)[0].value == b"after retention"
    # Fill again, then delete the big topic: space comes back.
    more = _fill(b, ["jobs"], random.Random(1))
    b.delete_topic("log")
    assert "log" not in b.topics()
    b.create_topic("log2")
    md = b.send("log2", b"after delete")
    assert b.read("log2", 0, md.offset)[0].value == b"after delete"
    _assert_readable(b, {k: v for k, v in more.items()})
    b.close()
    _assert_sound(tmp_broker_dir)


def test_batch_larger_than_the_headroom(tmp_broker_dir: Path, rng: random.Random) -> None:
    """Below the mark, one batch bigger than all free space: refused whole, broker intact."""
    b = mqlite.open(tmp_broker_dir, durability="sync", map_size=MAP)
    b.create_topic("t")
    acked = {}
    for i in range(150):  # ~600 KB of the 2 MiB map
        v = b"%d|" % i + rng.randbytes(VALUE)
        md = b.send("t", v)
        acked[("t", md.partition, md.offset)] = v
    end = b.describe_topic("t").partitions[0].end_offset
    with pytest.raises(StorageFullError):
        b.send_batch("t", [rng.randbytes(VALUE) for _ in range(400)])  # ~1.6 MB
    assert b.describe_topic("t").partitions[0].end_offset == end  # all or nothing
    md = b.send("t", b"small still fits")
    acked[("t", md.partition, md.offset)] = b"small still fits"
    with b.consumer("t", group="g") as c:
        n = 0
        while batch := c.poll(max_records=500, timeout=0.2):
            n += len(batch)
        assert n == len(acked)
    assert b.committed_offsets("g", "t") == {0: end + 1}
    _assert_readable(b, acked)
    b.close()
    _assert_sound(tmp_broker_dir)


def test_full_broker_reopens_full_and_readable(full, tmp_broker_dir: Path) -> None:
    """The state survives a reopen: still refused, still readable, tracked by partition."""
    b, acked = full
    b.close()
    with mqlite.open(tmp_broker_dir, durability="none") as b2:
        assert b2._engine.env.map_size == MAP  # the stored map size, not the 64 GiB default
        with pytest.raises(StorageFullError):
            b2.send("log", b"x" * VALUE, partition=1)
        _assert_readable(b2, acked)
        c = b2.consumer("log")
        c.seek(TopicPartition("log", 0), 0)
    _assert_sound(tmp_broker_dir)


def _grow_without_map_size(path: str, n: int) -> None:
    with mqlite.open(path, durability="none") as b:
        try:
            for i in range(n):
                b.send("t", b"%d|" % i + b"g" * VALUE)
        except StorageFullError:
            raise SystemExit(2) from None


def test_reopen_without_map_size_keeps_the_map_for_other_processes(children,
                                                                   tmp_broker_dir: Path) -> None:
    """Regression: a process opening with the default map_size grew the map to 64 GiB, and
    once it wrote past 2 MiB every other process failed with MDB_MAP_RESIZED."""
    b = mqlite.open(tmp_broker_dir, durability="none", map_size=MAP)
    b.create_topic("t")
    b.send("t", b"first")
    p = children.start("grow", _grow_without_map_size, str(tmp_broker_dir), 1000)
    p.join(60)
    assert p.exitcode == 2  # StorageFullError: the child is held to the 2 MiB map too
    assert b._engine.env.map_size == MAP
    assert b.read("t", 0, 0, max_records=1)[0].value == b"first"
    with pytest.raises(StorageFullError):
        b.send("t", b"x" * VALUE)
    b.close()
    _assert_sound(tmp_broker_dir)


# -- issue 10 defect 7: a full map can always be drained, at every map size --------------

SMALL_MAPS = [1 << 20, 2 << 20, 8 << 20]


def _used(b: mqlite.Broker) -> dict[str, int]:
    return b._engine.env.space()


@pytest.mark.parametrize("map_size", SMALL_MAPS)
def test_sends_stop_at_the_high_water_mark(tmp_broker_dir: Path, rng: random.Random,
                                           map_size: int) -> None:
    """Regression: the space check ran every 64 writes or 1 MiB, so small maps overshot
    the 90% mark to 95-98% and left no room for draining writes."""
    b = mqlite.open(tmp_broker_dir, durability="none", map_size=map_size)
    b.create_topic("log", partitions=3)
    _fill(b, ["log"], rng)
    space = _used(b)
    assert space["high_water_bytes"] - 16 * 4096 < space["used_bytes"] <= space[
        "high_water_bytes"], space
    b.close()


@pytest.mark.parametrize("map_size", SMALL_MAPS)
def test_a_full_map_can_always_be_drained(tmp_broker_dir: Path, rng: random.Random,
                                          map_size: int) -> None:
    """Regression: receives and new groups were not held back, filled the map to 100%, and
    then ack, delete_topic and close failed.  Now they stop at 95%, and acks, nacks, offset
    commits, joins of existing groups, deletes and close are always admitted."""
    b = mqlite.open(tmp_broker_dir, durability="none", map_size=map_size)
    b.create_topic("jobs", cleanup="consumed")
    b.create_topic("log")
    b.consumer("log", group="readers").close()  # a stream group that exists before the map fills
    acked = _fill(b, ["jobs", "log"], rng)
    jobs = {k: v for k, v in acked.items() if k[0] == "jobs"}
    queues: list[mqlite.Queue] = []
    held: list[list[mqlite.Delivery]] = []
    refused = None
    # Many groups receiving without acking: pending state grows until refused at 95%.
    # (LMDB's own map-full, MapExhaustedError, can come first while a reader thread pins
    # freed pages; that passes when the reader ends, so such a step is tried again.)
    g = 0
    q = None
    while refused is None and g < 10_000:
        try:
            if q is None:
                q = b.queue("jobs", f"g{g}", visibility_timeout=600.0)
                queues.append(q)
            while ds := q.receive(max_messages=1, timeout=0):
                held.append(ds)
            q, g = None, g + 1
        except MapExhaustedError:
            continue
        except StorageFullError as exc:
            refused = exc
    assert refused is not None and "95%" in str(refused)
    space = _used(b)
    assert space["used_bytes"] <= space["grow_water_bytes"], space
    # Every other growing write is refused now too, with the same typed error.
    with pytest.raises(StorageFullError):
        b.create_topic("more")
    with pytest.raises(StorageFullError):
        b.queue("jobs", "one-more-group")
    with pytest.raises(StorageFullError):
        b.consumer("log", group="new-stream-group")
    with pytest.raises(StorageFullError):
        b.send("log", b"x")
    # Draining writes all work: a member of an existing stream group joins and commits ...
    with b.consumer("log", group="readers", commit="manual") as c:
        assert c.poll(max_records=10, timeout=5.0)
        c.commit()
    assert b.committed_offsets("readers", "log")
    # ... nacks and acks of everything held, then close, then delete_topic.
    for ds in held[: len(held) // 2]:
        ds[0].nack(delay=0.0)
    for ds in held[len(held) // 2:]:
        ds[0].ack()
    for q in queues:
        q.close()
    b.delete_topic("log")
    assert "log" not in b.topics()
    # Space is back: sends, new groups and topics are admitted again.
    b.create_topic("after")
    md = b.send("after", b"after the drain")
    assert b.read("after", 0, md.offset)[0].value == b"after the drain"
    with b.queue("jobs", "fresh") as q:
        got = 0
        while ds := q.receive(max_messages=100, timeout=0):
            assert all(("jobs", d.partition, d.offset) in jobs for d in ds)
            q.ack(ds)
            got += len(ds)
        assert got == len(jobs)
    b.close()
    _assert_sound(tmp_broker_dir)


def _send_until_refused(path: str, tag: int, go: str) -> None:
    import os
    import time
    with mqlite.open(path, durability="none") as b:
        while not os.path.exists(go):  # a start line shared by every writer
            time.sleep(0.001)
        for i in range(100_000):
            try:
                b.send("t", b"%d-%d|" % (tag, i) + b"w" * (VALUE // 2 + 97 * i % VALUE))
            except StorageFullError:
                raise SystemExit(2) from None


def test_writers_in_several_processes_stop_at_the_mark(children, tmp_broker_dir: Path,
                                                       tmp_path: Path) -> None:
    """Each process's space budget covers only its own consecutive writes: writers
    interleaving from three processes together stop at the high-water mark too."""
    b = mqlite.open(tmp_broker_dir, durability="none", map_size=MAP)
    b.create_topic("t", partitions=3)
    go = tmp_path / "go"
    ps = [children.start(f"w{k}", _send_until_refused, str(tmp_broker_dir), k, str(go))
          for k in range(3)]
    go.touch()
    for p in ps:
        p.join(120)
        assert p.exitcode == 2, p.exitcode
    space = _used(b)
    assert space["used_bytes"] <= space["high_water_bytes"], space
    b.close()
    _assert_sound(tmp_broker_dir)


def test_draining_writes_wait_out_a_reader_that_pins_freed_pages(
        tmp_broker_dir: Path, rng: random.Random, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (CI, load average 170): pages a write frees are reused only once no
    reader sees the snapshot they belonged to.  A reader thread preempted inside its read
    transaction made a run of nacks take fresh pages until LMDB's map ran out.  Draining
    writes now retry until the reader is gone."""
    import threading

    import mqlite._engine as engine_mod

    b = mqlite.open(tmp_broker_dir, durability="none", map_size=1 << 20)
    b.create_topic("jobs", cleanup="consumed")
    _fill(b, ["jobs"], rng)
    q = b.queue("jobs", "workers", visibility_timeout=600.0)
    held: list[mqlite.Delivery] = []
    while ds := q.receive(max_messages=1, timeout=0):  # one entry each: many small writes
        held.extend(ds)
    assert len(held) > 50
    pinned, unpin = threading.Event(), threading.Event()

    def reader() -> None:
        with b._engine.read():
            pinned.set()
            unpin.wait(60)

    t = threading.Thread(target=reader)
    t.start()
    assert pinned.wait(30)
    real_sleep = engine_mod.time.sleep
    retried = []

    def sleep(seconds: float) -> None:  # the first retry ends the pin, as a reader would
        retried.append(seconds)
        unpin.set()
        real_sleep(seconds)

    monkeypatch.setattr(engine_mod.time, "sleep", sleep)
    try:
        for d in held:
            d.nack(delay=0.0)
    finally:
        unpin.set()
        t.join(30)
    assert retried, "the pinned reader never exhausted the map: the test lost its point"
    got = 0
    while ds := q.receive(max_messages=100, timeout=0):
        q.ack(ds)
        got += len(ds)
    assert got >= len(held)
    q.close()
    b.close()
    _assert_sound(tmp_broker_dir)


# -- D57: every append is counted before it writes, not only the sends ---------------------

BIG = 100_000  # one message charged 2 * BIG + a page: past 95% from a map filled to 90%


def _fill_log(b: mqlite.Broker, rng: random.Random) -> None:
    b.create_topic("log")
    _fill(b, ["log"], rng)
    space = _used(b)
    assert space["used_bytes"] > space["high_water_bytes"] - 16 * 4096, space


def _ends(b: mqlite.Broker, topic: str) -> dict[int, int]:
    return {p.partition: p.end_offset for p in b.describe_topic(topic).partitions}


def _only_the_tier(exc: StorageFullError) -> None:
    # A tier refusal, not LMDB's map running out in the middle of the write.
    assert type(exc) is StorageFullError, type(exc)


def test_redrive_of_a_full_broker_is_refused_and_changes_nothing(
        tmp_broker_dir: Path, rng: random.Random) -> None:
    """Regression (D54 "Left"): redrive appended without counting the space budget."""
    b = mqlite.open(tmp_broker_dir, durability="none", map_size=MAP)
    b.create_topic("jobs", partitions=2)
    with b.queue("jobs", "w", dead_letter_topic="jobs-dlq") as q:
        for i in range(5):
            b.send("jobs", b"job %d" % i + b"j" * 2000, key=b"k%d" % i)
        ds = q.receive(max_messages=5, timeout=5.0)
        assert len(ds) == 5
        assert q.dead_letter(ds, reason="bad") == 5
    letters = b.dead_letters("jobs-dlq")
    assert len(letters) == 5
    dlq_ends, job_ends = _ends(b, "jobs-dlq"), _ends(b, "jobs")
    _fill_log(b, rng)
    with pytest.raises(StorageFullError) as ei:
        b.redrive("jobs-dlq")
    _only_the_tier(ei.value)
    assert "nothing was redriven" in str(ei.value) and "map_size" in str(ei.value)
    with pytest.raises(StorageFullError):
        b.redrive("jobs-dlq", to_topic="log", limit=1)
    assert b.dead_letters("jobs-dlq") == letters
    assert _ends(b, "jobs-dlq") == dlq_ends and _ends(b, "jobs") == job_ends
    # Space back: the same redrive goes through, every letter to its own partition.
    b.delete_topic("log")
    assert b.redrive("jobs-dlq") == 5
    assert b.dead_letters("jobs-dlq") == []
    back = [m for p in range(2) for m in b.read("jobs", p, 0, max_records=100)]
    assert len(back) == 10
    b.close()
    _assert_sound(tmp_broker_dir)


@pytest.mark.parametrize("how", ["nack", "dead_letter", "receive"])
def test_a_dead_letter_move_past_the_grow_mark_is_refused_and_changes_nothing(
        tmp_broker_dir: Path, rng: random.Random, how: str) -> None:
    """Regression: moves to the dead-letter topic (from ``nack`` at max deliveries,
    ``dead_letter``, and a ``receive`` that finds an entry at max deliveries) appended
    uncounted, into the headroom kept for draining writes."""
    b = mqlite.open(tmp_broker_dir, durability="none", map_size=MAP)
    b.create_topic("jobs")
    big = rng.randbytes(BIG)
    b.send("jobs", big)
    q = b.queue("jobs", "w", max_deliveries=1, dead_letter_topic="jobs-dlq",
                visibility_timeout=0.0 if how == "receive" else 600.0)
    [d] = q.receive(max_messages=1, timeout=5.0)
    _fill_log(b, rng)

    def move() -> object:
        if how == "nack":
            return q.nack(d)
        if how == "dead_letter":
            return q.dead_letter(d, reason="bad")
        return q.receive(max_messages=1, timeout=0)  # the entry is due: it moves

    for _ in range(2):
        with pytest.raises(StorageFullError) as ei:
            move()
        _only_the_tier(ei.value)
        assert "dead-letter topic 'jobs-dlq'" in str(ei.value), str(ei.value)
        assert "nothing was changed" in str(ei.value)
    assert b.dead_letters("jobs-dlq") == []
    assert _ends(b, "jobs-dlq") == {0: 0}
    [e] = q.pending()
    assert e["delivery_count"] == 1
    # Space back: the same move goes through.
    b.delete_topic("log")
    assert move() in (1, [])
    [dl] = b.dead_letters("jobs-dlq")
    assert dl.message.value == big and dl.original_offset == 0
    assert q.pending() == []
    q.close()
    b.close()
    _assert_sound(tmp_broker_dir)


def test_publish_counts_every_copy(tmp_broker_dir: Path, rng: random.Random) -> None:
    """Regression: ``publish`` charged one copy of the value however many topics it was
    routed to, and a publish inside a transaction charged nothing."""
    b = mqlite.open(tmp_broker_dir, durability="none", map_size=MAP)
    b.declare_exchange("fan", "fanout")
    names = [f"t{i}" for i in range(6)]
    for t in names:
        b.create_topic(t)
        b.bind("fan", t)
    value = rng.randbytes(200_000)  # one copy fits easily; six charged copies do not
    with pytest.raises(StorageFullError) as ei:
        b.publish("fan", "", value)
    _only_the_tier(ei.value)
    with pytest.raises(StorageFullError), b.transaction() as tx:
        tx.publish("fan", "", value)
    assert all(_ends(b, t) == {0: 0} for t in names)
    mds = b.publish("fan", "", value[:20_000])  # six small copies fit
    assert sorted(md.topic for md in mds) == names
    b.close()
    _assert_sound(tmp_broker_dir)
