"""The fast read paths under ``Broker.stats()`` (one pass over every partition state,
every group's offsets, a topic catalog kept between snapshots) and the
``dead_letter_topics`` option: each checked against the API that computes the
same thing another way, across processes, and on damaged records.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import pytest

import mqlite
from mqlite.errors import CorruptRecordError
from mqlite.metrics import BrokerCollector


def _lag_by_group(st: mqlite.BrokerStats) -> dict[str, dict[tuple[str, int], int | None]]:
    return {g.group: {(r.topic, r.partition): r.committed for r in g.lag} for g in st.groups}


def test_committed_offsets_of_every_group_match_the_api(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("a", 4)
        b.create_topic("b", 2)
        for t in ("a", "b"):
            b.send_batch(t, [b"x"] * 40)
        # a queue group on "a" keeps its cursors in the same database as the offsets
        q = b.queue("a", "work")
        assert q.receive(max_messages=7, timeout=5.0)
        groups = {"A": ("a", 3), "a.b": ("b", 5), "z-9": ("a", 1), "Zz_0": ("b", 2)}
        for g, (t, n) in groups.items():
            b.reset_offsets(g, t, to=n)
        st = b.stats()
        lag = _lag_by_group(st)
        assert set(groups) <= set(lag)
        for g, (t, _) in groups.items():
            want = b.committed_offsets(g, t)
            assert want
            assert {p: c for (tt, p), c in lag[g].items() if tt == t} == want
        assert not any(g.startswith("~") for g in lag)
        q.close()


def test_stats_follow_catalog_changes_made_by_another_process(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t", 2)
        b.create_topic("old", 1)
        before = b.stats()  # fills this process's catalog cache
        assert {(p.topic, p.partition) for p in before.partitions} == {
            ("t", 0), ("t", 1), ("old", 0)}
        script = textwrap.dedent(f"""
            import mqlite
            with mqlite.open({str(tmp_broker_dir)!r}, durability="none") as b:
                b.create_topic("new", 3)
                b.alter_topic("t", partitions=4)
                b.delete_topic("old")
                b.send("t", b"m", partition=3)
        """)
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        after = b.stats()
        got = {(p.topic, p.partition): p.end_offset for p in after.partitions}
        assert got == {("t", 0): 0, ("t", 1): 0, ("t", 2): 0, ("t", 3): 1,
                       ("new", 0): 0, ("new", 1): 0, ("new", 2): 0}
        assert got == {(t, p.partition): p.end_offset
                       for t in ("t", "new") for p in b.describe_topic(t).partitions}


def _poke(path: Path, db: bytes, key: bytes, value: bytes | None = None) -> bytes:
    """Replace (or with ``value=None`` only read) one raw record; returns the old value."""
    env = lmdb.open(str(path), max_dbs=64, subdir=True)
    try:
        handle = env.open_db(db, create=False)
        with env.begin(write=True) as txn:
            old = txn.get(key, db=handle)
            assert old is not None
            if value is not None:
                txn.put(key, value, db=handle)
            return bytes(old)
    finally:
        env.close()


def _stats_raise(path: Path, match: str) -> None:
    with mqlite.open(path, durability="none") as b, pytest.raises(CorruptRecordError,
                                                                  match=match):
        b.stats()


def test_damaged_state_or_offset_is_a_typed_error(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t", 1)
        b.send("t", b"m")
        b.reset_offsets("g", "t", to=1)
    env = lmdb.open(str(tmp_broker_dir), max_dbs=64, subdir=True)
    try:
        with env.begin() as txn:
            parts = env.open_db(b"partitions", txn=txn, create=False)
            (pkey,) = [bytes(k) for k, _ in txn.cursor(db=parts)]
            offs = env.open_db(b"offsets", txn=txn, create=False)
            (okey,) = [bytes(k) for k, _ in txn.cursor(db=offs)]
    finally:
        env.close()
    good = _poke(tmp_broker_dir, b"partitions", pkey, b"\x00" * 47)
    _stats_raise(tmp_broker_dir, "47 bytes")
    # end offset below start offset
    _poke(tmp_broker_dir, b"partitions", pkey, (5).to_bytes(8, "big") + (1).to_bytes(8, "big")
          + good[16:])
    _stats_raise(tmp_broker_dir, "end offset 1 < start 5")
    _poke(tmp_broker_dir, b"partitions", pkey, good)
    _poke(tmp_broker_dir, b"offsets", okey, b"\xc1")  # 0xc1: never used in msgpack
    _stats_raise(tmp_broker_dir, "committed offset of group 'g'")


def test_dead_letter_topics_option(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("jobs", 2)
        b.create_topic("jobs.dlq", 1)
        b.send_batch("jobs.dlq", [b"a", b"b", b"c"])
        assert b.stats().dead_letters == {}  # not a queue group's DLQ: not found alone
        st = b.stats(dead_letter_topics=["jobs.dlq", "missing.dlq"])
        assert st.dead_letters == {"jobs.dlq": len(b.dead_letters("jobs.dlq")),
                                   "missing.dlq": 0}
        assert st.dead_letters["jobs.dlq"] == 3
        assert b.purge_dead_letters("jobs.dlq") == 3
        assert b.stats(dead_letter_topics=("jobs.dlq",)).dead_letters == {"jobs.dlq": 0}
        with pytest.raises(TypeError, match="wrap it in a list"):
            b.stats(dead_letter_topics="jobs.dlq")
        with pytest.raises(ValueError):
            b.stats(dead_letter_topics=["../etc"])
        with pytest.raises(TypeError, match="wrap it in a list"):
            BrokerCollector(b, "jobs.dlq")
        with pytest.raises(ValueError):
            BrokerCollector(b, ["bad name"])
        text = BrokerCollector(b, ["jobs.dlq"]).exposition().decode()
        assert 'mqlite_dead_letter_messages{topic="jobs.dlq"} 0' in text
