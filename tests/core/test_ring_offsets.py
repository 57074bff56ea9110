"""D73: members' offset commits applied by the ring's committer in compiled code.

``RingApply.take`` applies an offset-commit slot itself (its msgpack read in C,
fenced against the stored group state, the offsets written as msgspec encodes
``OffsetValue``); ``mqlite.groups.member._apply_ring_offsets`` is the reference.
On every payload, good, fenced, malformed or mutated, the compiled take leaves the
same slot results and the same offsets (up to the commit time) as
``Engine._take_ring_py``; payloads outside the forms it reads go to the Python
handler with nothing written.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _ring_takes import fill as _fill
from _ring_takes import take_both

import mqlite
from mqlite import _core
from mqlite import _engine as engine_mod
from mqlite._storage.offsets import OffsetValue
from mqlite.groups import member as member_mod

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(OffsetValue)
KIND = bytes((member_mod.RING_KIND_OFFSETS,))


# -- the stored value: msgspec's bytes -----------------------------------------------------

_INTS = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
         2**32, 2**53, 2**63 - 1]
_NEG = [-1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63]


@pytest.mark.parametrize("n", _INTS + _NEG)
def test_an_offset_value_has_msgspecs_bytes_for_every_integer_form(n: int) -> None:
    off = abs(n) if n != -2**63 else 2**63 - 1
    for fields in ((off, "m", 7, 1_700_000_000_000), (off, "m", n, n), (0, "", n, 0)):
        assert _core.ring_offset_value(*fields) == _enc.encode(OffsetValue(*fields)), fields


@pytest.mark.parametrize("length", [0, 1, 31, 32, 255, 256, 65535, 65536])
def test_an_offset_value_has_msgspecs_bytes_for_every_string_form(length: int) -> None:
    for mid in ("x" * length, ("\u00e9" * length)[:length]):
        assert (_core.ring_offset_value(5, mid, 3, 9)
                == _enc.encode(OffsetValue(5, mid, 3, 9)))


def test_registering_checks_its_arguments() -> None:
    for kind in (0, 256):
        with pytest.raises(ValueError):
            _core.register_ring_offsets(kind, lambda *a: None)
    with pytest.raises(TypeError):
        _core.register_ring_offsets(1, "not callable")


# -- the apply: compiled vs the Python reference in the same transaction -------------------

@pytest.fixture
def group(tmp_broker_dir: Path) -> Iterator[tuple[mqlite.Broker, list[Any]]]:
    """A ``"lazy"`` broker, topics "t" (3 partitions) and "u" (1), and group "g" of two
    members of "t" that own their partitions; closed after the test."""
    b = mqlite.open(tmp_broker_dir, durability="lazy")
    b.create_topic("t", partitions=3)
    b.create_topic("u")
    for i in range(6):
        b.send("t", b"m", partition=i % 3)
    cs = [b.consumer("t", group="g", commit="manual") for _ in range(2)]
    for _ in range(3):
        for c in cs:
            c.poll(100, timeout=0.01)
    assert sorted(len(c._group.owned) for c in cs) == [1, 2]
    yield b, cs
    for c in cs:
        c.close()
    b.close()


def _op(group: str, mid: str, lock: str, offs: list[tuple[Any, ...]]) -> bytes:
    """A member's payload; an offset of three fields gets partition id -1 (unchecked)."""
    return KIND + _enc.encode([group, mid, lock, [list(o) if len(o) != 3 else [*o, -1]
                                                  for o in offs]])


def _pid(b: mqlite.Broker, topic: str, partition: int) -> int:
    with b._engine.env.read_txn() as txn:
        pid: int = b._engine.topic(txn, topic).pids[partition]
    return pid


def _offsets(eng: Any, txn: Any) -> dict[bytes, tuple[bytes, int | None]]:
    """The offsets database: key -> (value with its timestamp zeroed, the timestamp)."""
    out: dict[bytes, tuple[bytes, int | None]] = {}
    with txn.cursor(db=eng.env.dbs["offsets"]) as cur:
        for k, v in cur:
            raw = bytes(v)
            try:
                ov = _dec.decode(raw)
            except msgspec.DecodeError:
                out[bytes(k)] = (raw, None)
                continue
            assert _enc.encode(ov) == raw  # the canonical bytes, whichever path wrote them
            ts = ov.timestamp_ms
            ov.timestamp_ms = 0
            out[bytes(k)] = (_enc.encode(ov), ts)
    return out


def _apply_both(b: mqlite.Broker, slots: list[tuple[int, int]]) -> list[Any]:
    """The compiled and the Python take of the same FILLED slots, each in a write
    transaction then aborted: what each returned, the slots' results, the offsets
    (timestamps zeroed) and whether each timestamp is the time of the take."""
    outs = []
    for taken, before, results, t0, t1 in take_both(b, slots, _offsets):
        stamps = {k: ts for k, (_v, ts) in before.items()}
        offs = {k: v for k, (v, _ts) in before.items()}
        outs.append((taken, results, offs, stamps, t0, t1))
    return outs


def _check_alike(b: mqlite.Broker, slots: list[tuple[int, int]]) -> Any:
    (ct, cres, coffs, cst, c0, c1), (pt, pres, poffs, _pst, _p0, _p1) = _apply_both(b, slots)
    assert ct == pt
    assert cres == pres
    assert coffs == poffs
    with b._engine.env.read_txn() as txn:
        stored = _offsets(b._engine, txn)
    for k, ts in cst.items():  # what the compiled take wrote, at the time of the take
        if stored.get(k, (None, None))[1] != ts:
            assert c0 <= ts <= c1, (k, ts)
    return cres


def _ids(c: Any) -> tuple[str, str, Any]:
    m = c._group
    return m.member_id, m._lock_name, m.owned


def test_the_compiled_apply_writes_what_the_python_one_writes(
        group: tuple[mqlite.Broker, list[Any]]) -> None:
    b, cs = group
    (m0, l0, own0), (m1, l1, own1) = (_ids(c) for c in cs)
    t0, t1 = own0[0], own1[0]
    eng = b._engine
    maxb = eng.topic_cached("t").config["max_message_bytes"]
    send = engine_mod.Engine.ring_payload("t", 0, 1000, maxb, _core.encode_batches(
        (b"x" * 100,), None, None, 1000, max_message_bytes=maxb), None)
    not_mine = (t1.topic, t1.partition)
    plan = [
        _op("g", m0, l0, [(t0.topic, t0.partition, 5)]),          # good
        send,
        _op("g", m1, l1, [(t1.topic, t1.partition, 2**40)]),      # good, a large offset
        _op("g", m0, l0, [(t0.topic, t0.partition, 6), (*not_mine, 1)]),  # one not owned
        _op("g", m0, "stale-lock", [(t0.topic, t0.partition, 7)]),  # another incarnation
        _op("g", "gone", l0, [(t0.topic, t0.partition, 7)]),      # not a member
        _op("nogroup", m0, l0, [(t0.topic, t0.partition, 7)]),    # no such group
        _op("g", m0, l0, [("nope", 0, 7)]),                       # no such topic
        _op("g", m0, l0, [("u", 0, 7)]),                          # a topic not assigned
        _op("g", m0, l0, [(t0.topic, 9, 7)]),                     # no such partition
        _op("g", m0, l0, [(t0.topic, -1, 7)]),                    # a negative partition
        _op("g", m0, l0, [(t0.topic, t0.partition, 2**64 - 1)]),  # uint64: the Python path
        _op("g", m0, l0, [(t0.topic, t0.partition, -3)]),         # negative: the Python path
        _op("g", m0, l0, []),                                     # nothing to commit
        _op("g", m0, l0, [(t0.topic, t0.partition, 8), (t0.topic, t0.partition, 9)]),
        KIND + _enc.encode(["g", m0, l0, [[t0.topic, t0.partition, 1]], "extra"]),
        KIND + _enc.encode(["g", m0, l0, [[t0.topic, t0.partition, 1]]]) + b"\x00",
        KIND + _enc.encode({"group": "g"}),
        KIND + _enc.encode(["g", m0, l0, [[t0.topic, t0.partition, 1.5]]]),
        KIND,
        # D91: the partition id the offset was read from
        _op("g", m0, l0, [(t0.topic, t0.partition, 13, _pid(b, t0.topic, t0.partition))]),
        _op("g", m0, l0, [(t0.topic, t0.partition, 14, _pid(b, t0.topic, t0.partition) + 99)]),
        KIND + _enc.encode(["g", m0, l0, [[t0.topic, t0.partition, 1]]]),  # before D91
    ]
    if len(own0) > 1:
        t2 = own0[1]
        plan.append(_op("g", m0, l0, [(t0.topic, t0.partition, 11),
                                      (t2.topic, t2.partition, 12)]))
    slots = [_fill(b, p) for p in plan]
    res = _check_alike(b, slots)
    ok, retry = engine_mod._ST_OK, engine_mod._ST_RETRY
    assert [res[i][0] for i, _t in slots[:3]] == [ok, ok, ok]
    assert all(res[i][0] == retry for i, _t in slots[3:11]), [res[i] for i, _t in slots]
    assert res[slots[11][0]][0] == ok  # msgspec reads a uint64: the Python path writes it
    assert [res[i][0] for i, _t in slots[20:23]] == [ok, retry, retry]


def test_every_truncation_and_many_mutations_apply_alike(
        group: tuple[mqlite.Broker, list[Any]], rng: random.Random) -> None:
    b, cs = group
    m0, l0, own0 = _ids(cs[0])
    tp = own0[0]
    good = _op("g", m0, l0, [(tp.topic, tp.partition, 300)])
    comb = b._engine.env.combiner
    cands = [good[:n] for n in range(len(good))]
    for _ in range(150):
        p = bytearray(good)
        for _k in range(rng.randint(1, 3)):
            p[rng.randrange(1, len(p))] = rng.randrange(256)
        cands.append(bytes(p))
    for at in range(0, len(cands), 8):  # a few slots at a time: the ring is small
        slots = [_fill(b, p) for p in cands[at:at + 8]]
        _check_alike(b, slots)
        for i, t in slots:
            comb.withdraw(i, t)


def test_offset_slots_do_not_reach_the_python_handler(
        group: tuple[mqlite.Broker, list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled path is the one taken for a member's commit (D73's point); the
    handler still takes a payload the compiled path does not read."""
    b, cs = group
    m0, l0, own0 = _ids(cs[0])
    tp = own0[0]
    calls: list[bytes] = []
    real = engine_mod._RING_HANDLERS[member_mod.RING_KIND_OFFSETS]

    def spy(engine: Any, txn: Any, payload: bytes) -> tuple[int, int, int, int]:
        calls.append(payload)
        return real(engine, txn, payload)

    monkeypatch.setitem(engine_mod._RING_HANDLERS, member_mod.RING_KIND_OFFSETS, spy)
    odd = _op("g", m0, l0, [(tp.topic, tp.partition, 2**64 - 1)])
    slots = [_fill(b, _op("g", m0, l0, [(tp.topic, tp.partition, 4)])), _fill(b, odd)]
    env = b._engine.env
    txn = env.write_txn()
    try:
        b._engine._take_ring(txn, env.combiner)
    finally:
        env.abort(txn)
    assert calls == [odd]
    assert [env.combiner.result(i)[0] for i, _t in slots] == [engine_mod._ST_OK] * 2


def test_members_commits_through_the_ring_are_stored_and_fenced(
        group: tuple[mqlite.Broker, list[Any]]) -> None:
    """End to end in one process: each member's commit rides the ring (the compiled
    path) and is read back; a member that lost its partition is refused."""
    b, cs = group
    for c in cs:
        for tp in c._group.owned:
            c.commit({tp: 2})
    for c in cs:
        assert c.committed(c._group.owned) == {tp: 2 for tp in c._group.owned}
    with b._engine.env.read_txn() as txn:
        stored = _offsets(b._engine, txn)
    mids = {c._group.member_id for c in cs}
    assert len(stored) == 3
    assert {_dec.decode(v).member_id for v, _ts in stored.values()} == mids
    loser = cs[1]
    m = loser._group
    real = m._lock_name
    m._lock_name = real + "-old"  # an earlier incarnation: the stored state fences it
    m._head_key = None
    try:
        with pytest.raises(mqlite.CommitFailedError):
            loser.commit({m.owned[0]: 5})
    finally:
        m._lock_name = real
        m._head_key = None
    assert loser.committed([m.owned[0]]) == {m.owned[0]: 2}
