"""D50: the commit ring's apply step in Cython (``_core.RingApply``, csrc/ringop.h).

The compiled parse of an append slot agrees with the Python one on every
payload, good or bad (truncated, mutated, malformed by hand); the compiled
apply leaves a transaction exactly as ``Engine._take_ring_py`` does (records,
partition states, slot results, the ticket entry), with dedup ids, other slot
kinds, stored results of a dead committer and space refusals in the mix.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _ring_takes import fill as _fill
from _ring_takes import take_both

import mqlite
from mqlite import _core
from mqlite import _engine as engine_mod
from mqlite._storage import tickets
from mqlite.config import DEFAULT_MAX_MESSAGE_BYTES
from mqlite.errors import CorruptRecordError, StorageFullError

_PY_ERRORS = (struct.error, UnicodeDecodeError, ValueError, CorruptRecordError)


def _refuse_over(monkeypatch: Any, env: Any, limit: int) -> None:
    """Make ``env``'s space check refuse any append of more than ``limit`` bytes."""

    def check_space(txn: Any, nbytes: int = 0, tier: str = "") -> None:
        if nbytes > limit:
            raise StorageFullError("full")

    monkeypatch.setattr(env, "check_space", check_space)
    monkeypatch.setattr(env, "space_budget", 0)


@pytest.fixture
def lazy(tmp_broker_dir: Path) -> Iterator[mqlite.Broker]:
    """A broker under ``"lazy"`` (the ring's modes), closed after the test."""
    b = mqlite.open(tmp_broker_dir, durability="lazy")
    yield b
    b.close()


def _payload(topic: str, part: int, values: list[list[bytes]], dkey: bytes | None = None,
             ts: int = 1000, maxb: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    bs = [_core.encode_batches(v, None, None, ts, max_message_bytes=maxb)[0] for v in values]
    return engine_mod.Engine.ring_payload(topic, part, ts, maxb, bs, dkey)


def _both(payload: bytes) -> tuple[Any, Any]:
    """(Python parse or its error type, compiled parse or its error type).  The
    engine parses a payload as an append only when its kind byte says so."""
    py: Any = ValueError
    if payload[:1] == bytes((engine_mod.RING_KIND_APPEND,)):
        try:
            py = engine_mod._parse_append(payload)
        except _PY_ERRORS as exc:
            py = type(exc)
    try:
        c: Any = _core.parse_ring_append(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        c = type(exc)
    return py, c


GOOD = [
    _payload("orders", 0, [[b"x" * 100]]),
    _payload("orders", 2, [[b"a", b"b"], [b"c"]], dkey=b"orders\0id-1"),
    _payload("t\u00e9", 0, [[b""]], dkey=b""),
    _payload("t", 7, [[b"v%d" % i] for i in range(40)]),  # more batches than one guess
]


@pytest.mark.parametrize("payload", GOOD)
def test_the_compiled_parse_equals_the_python_one(payload: bytes) -> None:
    py, c = _both(payload)
    assert isinstance(py, tuple)
    assert c == py


@pytest.mark.parametrize("payload", GOOD[:2])
def test_every_truncation_is_refused_by_both(payload: bytes) -> None:
    for n in range(len(payload)):
        py, c = _both(payload[:n])
        assert not isinstance(py, tuple), n
        assert c in (ValueError, UnicodeDecodeError), n


def test_bad_payloads_are_refused_by_both() -> None:
    good = GOOD[0]
    head = bytearray(good[:23])
    bad = {
        "empty": b"",
        "one byte": b"\x00",
        "header only": bytes(head),
        "not an append": b"\x01" + good[1:],
        "negative partition": good[:5] + struct.pack(">i", -1) + good[9:],
        "no batch": good[:21] + b"\x00\x00" + good[23:29],
        "a byte after the batches": good + b"\x00",
        "batch length past the end": good[:29] + struct.pack(">I", 10_000) + good[33:],
        "bad batch magic": good[:33] + b"\x07" + good[34:],
        "topic not UTF-8": good[:23] + b"\xff" + good[24:],
    }
    for what, payload in bad.items():
        py, c = _both(payload)
        assert not isinstance(py, tuple), what
        assert c in (ValueError, UnicodeDecodeError), what
    with pytest.raises(ValueError, match="truncated"):
        _core.parse_ring_append(b"\x00" * 10)
    with pytest.raises(TypeError):
        _core.parse_ring_append("not bytes")


def test_mutated_payloads_parse_alike(rng: random.Random) -> None:
    for _ in range(3000):
        p = bytearray(rng.choice(GOOD))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(p))
            p[i] = rng.randrange(256) if rng.random() < 0.7 else p[i] ^ 0x80
        py, c = _both(bytes(p))
        if isinstance(py, tuple):
            assert c == py
        else:
            assert c in (ValueError, UnicodeDecodeError)


# -- the apply: compiled vs the Python reference in the same transaction ---------------

def _snapshot(eng: Any, txn: Any) -> dict[str, Any]:
    dbs = eng.env.dbs
    out: dict[str, Any] = {}
    for name in ("records", "partitions"):
        with txn.cursor(db=dbs[name]) as cur:
            out[name] = [(bytes(k), bytes(v)) for k, v in cur]
    with txn.cursor(db=dbs["meta"]) as cur:
        metas = [(bytes(k), bytes(v)) for k, v in cur]
    # one ticket entry per commit; item order inside it is not part of the format
    out["tickets"] = sorted(
        (k[:5], sorted(tickets._ITEM.iter_unpack(v))) if k.startswith(b"comb:") else (k, v)
        for k, v in metas if k.startswith(b"comb"))
    out["other meta"] = [kv for kv in metas if not kv[0].startswith(b"comb")]
    return out


def _apply_both(b: mqlite.Broker, slots: list[tuple[int, int]]) -> tuple[Any, Any]:
    """Run the compiled and the Python apply on the same FILLED slots, each in a write
    transaction that is then aborted; what each returned, wrote and answered."""
    def observe(eng: Any, txn: Any) -> Any:
        return _snapshot(eng, txn), eng._taken_sends

    compiled, python = take_both(b, slots, observe)
    c, p = ((taken, snap, results, sends)
            for taken, (snap, sends), results, _t0, _t1 in (compiled, python))
    return c, p


def test_the_compiled_apply_writes_what_the_python_one_writes(lazy: mqlite.Broker) -> None:
    b = lazy
    b.create_topic("t", partitions=2)
    b.create_topic("u", retention_messages=3)
    for v in (b"p1", b"p2"):
        b.send("t", v, partition=1)
    eng = b._engine
    maxb = eng.topic_cached("t").config["max_message_bytes"]

    def pl(topic: str, part: int, values: list[bytes], dedup: str | None = None,
           m: int = maxb) -> bytes:
        dkey = None if dedup is None else eng.dedup_key(topic, dedup)
        return _payload(topic, part, [values], dkey, maxb=m)

    plan = [pl("t", 0, [b"a1"]), pl("t", 1, [b"b1", b"b2"]), pl("t", 0, [b"a2", b"a3"]),
            pl("t", 0, [b"a4"], "d1"), pl("u", 0, [b"u1"]), pl("u", 0, [b"u2", b"u3"]),
            pl("t", 0, [b"dup"], "d1"), pl("nope", 0, [b"x"]), pl("t", 5, [b"no part"]),
            pl("t", 0, [b"old cap"], m=maxb - 1), b"\x00garbage", b"\x09unknown kind",
            b"", pl("u", 0, [b"u4"]), pl("t", 1, [b"b3"])]
    slots = [_fill(b, p, gather=i % 3 != 0) for i, p in enumerate(plan)]
    compiled, python = _apply_both(b, slots)
    assert compiled == python
    taken, snap, results, sends = compiled
    assert taken == slots
    assert sends == sum(1 for p in plan if p[:1] == b"\x00")
    assert len(snap["tickets"]) == 1
    assert results[slots[3][0]] == results[slots[6][0]]  # the dedup hit
    assert results[slots[7][0]][0] == engine_mod._ST_NO_TOPIC
    for k in (8, 9, 10, 11, 12):
        assert results[slots[k][0]][0] == engine_mod._ST_RETRY, k


def test_stored_results_are_handed_out_not_applied_again(lazy: mqlite.Broker) -> None:
    b = lazy
    b.create_topic("t")
    eng = b._engine
    slots = [_fill(b, _payload("t", 0, [[b"v%d" % i]])) for i in range(4)]
    # a committer that died after its commit, before DONE, recorded these two
    with eng.write() as txn:
        tickets.record_many(txn, eng.env.dbs, [(slots[1][1], (0, 0, 7, 1000)),
                                               (slots[2][1], (2, 0, 0, 0))])
        tickets.record_many(txn, eng.env.dbs, [(1, (0, 0, 0, 0))])  # no slot needs it
    compiled, python = _apply_both(b, slots)
    assert compiled == python
    _taken, snap, results, _sends = compiled
    assert results[slots[1][0]] == (0, 0, 7, 1000)
    assert results[slots[2][0]] == (2, 0, 0, 0)
    assert results[slots[0][0]] == (0, 0, 0, 1000)
    assert results[slots[3][0]] == (0, 0, 1, 1000)  # right after slot 0's record
    assert len(snap["records"]) == 2
    # the old entry holding slots 1 and 2 stays (they are still FILLED), the
    # stale one is pruned, the new one holds slots 0 and 3
    assert sorted(t for _k, items in snap["tickets"] for t, *_ in items) == sorted(
        [slots[1][1], slots[2][1], slots[0][1], slots[3][1]])


def test_entries_of_the_first_format_and_malformed_ones(lazy: mqlite.Broker) -> None:
    b = lazy
    b.create_topic("t")
    eng = b._engine
    meta = eng.env.dbs["meta"]
    slots = [_fill(b, _payload("t", 0, [[b"v%d" % i]])) for i in range(2)]
    with eng.write() as txn:  # D27's one entry per ticket: one live, one stale
        txn.put(b"comb/" + slots[0][1].to_bytes(8, "big"),
                struct.pack(">iqqq", 0, 0, 41, 1000), db=meta)
        txn.put(b"comb/" + (5).to_bytes(8, "big"), struct.pack(">iqqq", 0, 0, 1, 1), db=meta)
        txn.put(b"comb:" + bytes(12), b"short", db=meta)  # malformed: pruned
        txn.put(b"comb/" + bytes(3), b"", db=meta)  # malformed: pruned
    compiled, python = _apply_both(b, slots)
    assert compiled == python
    _taken, snap, results, _sends = compiled
    assert results[slots[0][0]] == (0, 0, 41, 1000)
    assert results[slots[1][0]] == (0, 0, 0, 1000)
    assert [k for k, _v in snap["tickets"]] == [
        b"comb/" + slots[0][1].to_bytes(8, "big"), b"comb:"]


def test_a_run_refused_for_space_is_applied_slot_by_slot(lazy: mqlite.Broker,
                                                        monkeypatch: Any) -> None:
    b = lazy
    b.create_topic("t")
    eng = b._engine
    env = eng.env
    small = _payload("t", 0, [[b"s"]])
    big = _payload("t", 0, [[b"B" * 3000]])
    slots = [_fill(b, p) for p in (small, big, small, small)]

    _refuse_over(monkeypatch, env, 2000)  # the run as a whole, and the big slot alone
    compiled, python = _apply_both(b, slots)
    assert compiled == python
    results = compiled[2]
    assert [results[i][:3] for i, _t in slots] == [
        (0, 0, 0), (engine_mod._ST_FULL, 0, 0), (0, 0, 1), (0, 0, 2)]


def test_a_lone_slot_refused_for_space_gets_storage_full(lazy: mqlite.Broker,
                                                        monkeypatch: Any) -> None:
    """A run of one slot that the space check refuses is refused (D35's Python apply
    appended it unchecked: it re-checked only runs of several slots)."""
    b = lazy
    b.create_topic("t", partitions=2)
    eng = b._engine
    env = eng.env
    slots = [_fill(b, _payload("t", 0, [[b"B" * 3000]])), _fill(b, _payload("t", 1, [[b"s"]]))]

    _refuse_over(monkeypatch, env, 2000)
    compiled, python = _apply_both(b, slots)
    assert compiled == python
    results = compiled[2]
    assert results[slots[0][0]] == (engine_mod._ST_FULL, 0, 0, 0)
    assert results[slots[1][0]] == (0, 1, 0, 1000)
    assert len(compiled[1]["records"]) == 1


def test_a_withdrawn_or_empty_ring_writes_nothing(lazy: mqlite.Broker) -> None:
    b = lazy
    b.create_topic("t")
    eng = b._engine
    i, t = _fill(b, _payload("t", 0, [[b"v"]]))
    assert eng.env.combiner.withdraw(i, t)
    compiled, python = _apply_both(b, [])
    assert compiled == python
    assert compiled[0] is None


def test_the_ticket_entry_has_the_storage_layout(lazy: mqlite.Broker) -> None:
    b = lazy
    b.create_topic("t")
    eng = b._engine
    env = eng.env
    slots = [_fill(b, _payload("t", 0, [[b"v%d" % i]], ts=2000 + i)) for i in range(3)]
    txn = env.write_txn()
    try:
        eng._take_ring(txn, env.combiner)
        with txn.cursor(db=env.dbs["meta"]) as cur:
            got = [(bytes(k), bytes(v)) for k, v in cur if bytes(k).startswith(b"comb")]
    finally:
        env.abort(txn)
    txn = env.write_txn()
    try:
        tickets.record_many(txn, env.dbs, [(t, (0, 0, n, 2000 + n))
                                           for n, (_i, t) in enumerate(slots)])
        with txn.cursor(db=env.dbs["meta"]) as cur:
            want = [(bytes(k), bytes(v)) for k, v in cur if bytes(k).startswith(b"comb")]
    finally:
        env.abort(txn)
    assert got == want


def test_a_bad_partition_state_raises_as_the_python_path_does(lazy: mqlite.Broker) -> None:
    b = lazy
    b.create_topic("t", partitions=2)
    eng = b._engine
    env = eng.env
    pids = eng.topic_cached("t").pids
    slots = [_fill(b, _payload("t", p, [[b"v"]])) for p in (0, 1)]
    bad = {"short": bytes(47), "end below start": struct.pack(">QQQqqQ", 5, 4, 0, -1, -1, 0),
           "above 2**63 - 1": struct.pack(">QQQqqQ", 0, 1 << 63, 0, -1, -1, 0)}
    for what, state in bad.items():
        for take in (eng._take_ring, eng._take_ring_py):
            txn = env.write_txn()
            try:
                txn.put(pids[1].to_bytes(4, "big"), state, db=env.dbs["partitions"])
                env.state_cache.clear()
                with pytest.raises(CorruptRecordError):
                    take(txn, env.combiner)
            finally:
                env.abort(txn)
            for i, t in slots:  # no answer was written: still FILLED, no result
                assert env.combiner.word(i) == (t, _core.FILLED), what
                assert env.combiner.result(i) == (0, 0, 0, 0), what
    compiled, python = _apply_both(b, slots)  # the stored states are fine
    assert compiled == python


def test_take_checks_its_arguments(lazy: mqlite.Broker) -> None:
    b = lazy
    eng = b._engine
    txn = eng.env.write_txn()
    try:
        with pytest.raises(TypeError):
            eng.ring_apply.take(eng, txn, object(), 64)
        with pytest.raises(TypeError):
            eng.ring_apply.take(eng, txn, eng.env.combiner, "64")
    finally:
        eng.env.abort(txn)


def _wrote_both(b: mqlite.Broker) -> list[tuple[bool, bool]]:
    """(taken is not None, _taken_wrote) of the compiled and the Python apply."""
    eng = b._engine
    env = eng.env
    out = []
    for take in (eng._take_ring, eng._take_ring_py):
        eng._taken_wrote = None  # type: ignore[assignment]  # each apply must set it
        txn = env.write_txn()
        try:
            taken = take(txn, env.combiner)
            out.append((taken is not None, eng._taken_wrote))
        finally:
            env.abort(txn)
    return out


def test_the_apply_says_whether_its_transaction_wrote(lazy: mqlite.Broker) -> None:
    """D62: ``_ring_commit`` skips the empty-commit check (``info()``) only for a
    transaction that recorded or pruned a ticket entry; slots whose results a dead
    committer had recorded write nothing, so the check must still run for them."""
    b = lazy
    b.create_topic("t")
    eng = b._engine
    slots = [_fill(b, _payload("t", 0, [[b"v%d" % i]])) for i in range(2)]
    assert _wrote_both(b) == [(True, True), (True, True)]  # fresh appends: a ticket entry
    with eng.write() as txn:  # a committer that died after its commit, before DONE
        tickets.record_many(txn, eng.env.dbs, [(slots[0][1], (0, 0, 7, 1000)),
                                               (slots[1][1], (0, 0, 8, 1000))])
    assert _wrote_both(b) == [(True, False), (True, False)]  # handed out, nothing written


def test_a_ring_commit_that_wrote_skips_the_empty_commit_check(
        lazy: mqlite.Broker, monkeypatch: Any) -> None:
    b = lazy
    b.create_topic("t")
    b.send("t", b"warm")
    eng = b._engine
    env = eng.env
    seen: list[bool] = []
    commit = env.commit

    def spy(txn: Any, wake: str | None = None, *, wrote: bool = False) -> None:
        seen.append(wrote)
        commit(txn, wake, wrote=wrote)

    monkeypatch.setattr(env, "commit", spy)
    i, t = _fill(b, _payload("t", 0, [[b"v"]]))
    comb = env.combiner
    assert comb.trylock()
    try:
        eng._lead(comb, [i], [(t, _core.DONE)])
    finally:
        comb.unlock()
    assert seen == [True]
    assert comb.result(i)[0] == 0
    comb.release(i, t)
    assert [m.value for m in b.consumer("t").poll(10, timeout=1)] == [b"warm", b"v"]
