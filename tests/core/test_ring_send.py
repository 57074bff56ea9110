"""D56: the commit ring's sender path in Cython (``_core.SendPath`` with a ring).

Under ``"sync"``/``"lazy"`` a common-case ``send`` (bytes or ``None`` value and
key, no headers, dedup id or timestamp) runs from ``Engine.send`` to its slot
fill and its wait in compiled code, with ``Engine.ring_submit``'s protocol; the
leader's step stays ``Engine._lead``.  These tests pin that it is taken, that its
slot payload and results are the Python path's, and its errors and exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import mqlite
from mqlite import _core
from mqlite import _engine as _engmod
from mqlite.errors import StorageFullError, TopicNotFoundError


def _fill(b: mqlite.Broker, topic: str, value: bytes, part: int = 0,
          maxb: int | None = None) -> tuple[int, int]:
    """Hand one send to the ring, as a sender waiting for the lock would."""
    eng = b._engine
    if maxb is None:
        maxb = eng.topic_fresh(topic).config["max_message_bytes"]
    batch = _core.encode_batches((value,), None, None, 1000, max_message_bytes=maxb)[0]
    comb = eng.env.combiner
    i = comb.claim(os.getpid())
    assert i >= 0
    return i, comb.fill(i, eng.ring_payload(topic, part, 1000, maxb, [batch], None))


def _no_python_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the Python ring path fail loudly: the compiled one must not use it."""

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the Python ring path ran")

    monkeypatch.setattr(_engmod.Engine, "ring_submit", boom)
    monkeypatch.setattr(_engmod.Engine, "_send_combined", boom)


def _stored(b: mqlite.Broker, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    out = []
    for p in range(b.partitions_for(topic)):
        out += [(p, m.offset, m.key, m.value) for m in b._engine.read_partition(topic, p)]
    return out


_SENDS: list[tuple[bytes | None, bytes | None, int | None]] = [
    (b"a", None, None), (None, None, None), (b"", b"", None), (b"k1", b"key-1", None),
    (b"v" * 300, b"key-2", None), (b"p", None, 2), (b"p", b"key-3", 1), (b"rr", None, None),
    (b"rr", None, None), (None, b"key-1", None),
]


@pytest.mark.parametrize("mode", ["sync", "lazy"])
def test_ring_sends_equal_the_python_path(tmp_path: Path, mode: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each send finds a slot FILLED (so it goes through the ring and leads it): the
    compiled path and ``send_general``'s Python path store and return the same."""
    got: dict[str, Any] = {}
    for side in ("compiled", "python"):
        with mqlite.open(tmp_path / side, durability=mode) as b:
            b.create_topic("t", partitions=3)
            b.create_topic("one")
            eng = b._engine
            comb = eng.env.combiner
            b.send("t", b"warm")  # fills the topic cache (and commits alone)
            b.send("one", b"warm")
            results = []
            with monkeypatch.context() as m:
                if side == "compiled":
                    _no_python_ring(m)
                for topic in ("t", "one"):
                    for value, key, part in _SENDS:
                        if topic == "one" and part is not None:
                            part = 0
                        i, ticket = _fill(b, topic, b"handed")
                        if side == "compiled":
                            md = b.send(topic, value, key, partition=part)
                        else:
                            md = eng.send_general(topic, value, key, None, part)
                        assert comb.word(i) == (ticket, _core.DONE)  # led through the ring
                        handed = comb.result(i)
                        assert comb.release(i, ticket)
                        results.append((md.topic, md.partition, md.offset, handed[:3]))
            assert all(comb.word(i)[1] == _core.FREE for i in range(comb.nslots))
            got[side] = (results, _stored(b, "t"), _stored(b, "one"))
    assert got["compiled"] == got["python"]


def test_the_slot_payload_is_ring_payloads_bytes(tmp_path: Path) -> None:
    """A sender that cannot lead (another thread holds the ring's thread lock) fills
    its slot with exactly ``Engine.ring_payload``'s bytes, waits, and leads once the
    lock is free."""
    with mqlite.open(tmp_path / "b", durability="sync") as b:
        b.create_topic("t", partitions=4)
        b.send("t", b"warm", partition=0)
        eng = b._engine
        env = eng.env
        comb = env.combiner
        out: list[Any] = []
        th = threading.Thread(target=lambda: out.append(b.send("t", b"value", b"the-key")))
        with env.comb_lock:
            th.start()
            while comb.filled() == 0:
                comb.gather(0)
            (i, ticket), = comb.collect()
            payload = comb.payload(i)
            assert comb.word(i) == (ticket, _core.FILLED)
        th.join(60)
        topic, dkey, part, ts, maxb, batches, count = _engmod._parse_append(payload)
        assert (topic, dkey, count) == ("t", None, 1)
        assert part == _core.partition_for_key(b"the-key", 4)
        assert maxb == eng.topic_fresh("t").config["max_message_bytes"]
        assert payload == eng.ring_payload("t", part, ts, maxb, batches, None)
        assert batches == _core.encode_batches((b"value",), (b"the-key",), None, ts)
        md, = out
        assert (md.partition, md.offset, md.timestamp_ms) == (part, 1 if part == 0 else 0, ts)
        assert comb.word(i) == (ticket, _core.FREE)


def _delete_in_child(path: Path, topic: str) -> None:
    code = ("import sys, mqlite\n"
            "b = mqlite.open(sys.argv[1], durability='none')\n"
            "b.delete_topic(sys.argv[2])\nb.close()\n")
    subprocess.run([sys.executable, "-c", code, str(path), topic], check=True, timeout=120)


def test_topic_deleted_under_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b"
    with mqlite.open(path, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"cached")  # the topic record is in this process's cache
        maxb = b._engine.topic_cached("t").config["max_message_bytes"]
        _delete_in_child(path, "t")
        comb = b._engine.env.combiner
        i, ticket = _fill(b, "t", b"handed", maxb=maxb)
        with monkeypatch.context() as m:
            _no_python_ring(m)
            with pytest.raises(TopicNotFoundError, match="create_topic"):
                b.send("t", b"lost")
        assert comb.word(i) == (ticket, _core.DONE)
        assert comb.result(i)[0] == _engmod._ST_NO_TOPIC
        assert comb.release(i, ticket)
        assert all(comb.word(k)[1] == _core.FREE for k in range(comb.nslots))
        b.create_topic("t")
        assert b.send("t", b"again").offset == 0


def test_storage_full_through_the_ring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with mqlite.open(tmp_path / "b", durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"x")
        eng = b._engine
        env = eng.env
        comb = env.combiner

        def check_space(txn: Any, nbytes: int, what: str) -> None:
            raise StorageFullError(env.full_message())

        i, ticket = _fill(b, "t", b"handed")
        with monkeypatch.context() as m:
            _no_python_ring(m)
            m.setattr(env, "check_space", check_space)
            m.setattr(env, "space_budget", 0)
            with pytest.raises(StorageFullError) as exc:
                b.send("t", b"y")
            assert str(exc.value) == env.full_message()
        assert comb.result(i)[0] == _engmod._ST_FULL and comb.release(i, ticket)
        assert [m.value for m in eng.read_partition("t")] == [b"x"]
        assert all(comb.word(k)[1] == _core.FREE for k in range(comb.nslots))


def test_ring_cannot_take_it_sends_directly(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Too large for a slot, or no free slot: committed alone, once."""
    with mqlite.open(tmp_path / "b", durability="sync", map_size=1 << 26) as b:
        b.create_topic("t")
        b.send("t", b"0")
        comb = b._engine.env.combiner
        i, ticket = _fill(b, "t", b"handed")  # the ring is busy: no solo commit
        big = b"b" * (comb.slot_bytes + 1)
        with monkeypatch.context() as m:
            _no_python_ring(m)
            assert b.send("t", big).offset == 1  # committed before the waiting slot
        mine = []
        while (k := comb.claim(os.getpid())) >= 0:  # no free slot
            mine.append(k)
        with monkeypatch.context() as m:
            _no_python_ring(m)
            assert b.send("t", b"2").offset == 2
        for k in mine:
            comb.unclaim(k)
        assert comb.word(i) == (ticket, _core.FILLED)  # nobody led: the handed slot waits
        b.send("t", b"leads")
        assert comb.word(i)[1] == _core.DONE and comb.release(i, ticket)
        values = [m.value for m in b._engine.read_partition("t")]
        assert values == [b"0", big, b"2", b"handed", b"leads"]


def test_stale_max_message_bytes_retries_alone(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The committer refuses a payload encoded under another ``max_message_bytes``
    (``_ST_RETRY``): the sender commits it alone, with the same timestamp."""
    path = tmp_path / "b"
    with mqlite.open(path, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"0")  # caches the topic record
        old = b._engine.topic_cached("t").config["max_message_bytes"]
        code = ("import sys, mqlite\n"
                "b = mqlite.open(sys.argv[1], durability='none')\n"
                "b._engine.alter_topic('t', changes={'max_message_bytes': 5000})\n"
                "b.close()\n")
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)
        i, ticket = _fill(b, "t", b"handed", maxb=5000)
        direct: list[int] = []
        send_direct = _engmod.Engine._send_direct

        def spy(self: Any, *args: Any) -> Any:
            direct.append(args[6])  # ts
            return send_direct(self, *args)

        with monkeypatch.context() as m:
            _no_python_ring(m)
            m.setattr(_engmod.Engine, "_send_direct", spy)
            md = b.send("t", b"1")
        assert old != 5000 and direct == [md.timestamp_ms]
        assert comb_status(b, i, ticket) == _engmod._ST_OK
        values = [m.value for m in b._engine.read_partition("t")]
        assert values == [b"0", b"handed", b"1"] and md.offset == 2


def comb_status(b: mqlite.Broker, i: int, ticket: int) -> int:
    comb = b._engine.env.combiner
    assert comb.word(i) == (ticket, _core.DONE)
    st = comb.result(i)[0]
    assert comb.release(i, ticket)
    return int(st)


_HOLDER = """
import sys, mqlite
b = mqlite.open(sys.argv[1], durability="sync")
comb = b._engine.env.combiner
assert comb.trylock()
print("locked", flush=True)
sys.stdin.readline()
comb.unlock()
b.close()
"""


def _hold_ring_lock(path: Path) -> subprocess.Popen[str]:
    """A child process that holds the combining lock until :func:`_let_go`."""
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def _let_go(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("\n")
    holder.stdin.close()
    assert holder.wait(60) == 0
    holder.stdout.close()


def test_a_signal_while_waiting_withdraws_the_slot(tmp_path: Path) -> None:
    """An exception raised by a signal handler while the send waits (another process
    holds the combining lock) withdraws its slot: nothing is stored, the slot is FREE."""
    path = tmp_path / "b"

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted

    with mqlite.open(path, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"0")
        comb = b._engine.env.combiner
        _fill(b, "t", b"handed")  # the ring is busy: the send goes to a slot
        holder = _hold_ring_lock(path)
        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted):
                b.send("t", b"withdrawn")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            _let_go(holder)
        assert comb.filled() == 1  # only the handed slot
        b.send("t", b"after")  # leads the handed slot
        assert [m.value for m in b._engine.read_partition("t")] == [b"0", b"handed", b"after"]


_KILLED_SENDER = """
import sys, mqlite
b = mqlite.open(sys.argv[1], durability="sync")
b.send("t", b"warm")
print("warm", flush=True)
sys.stdin.readline()                       # the parent's other child holds the lock now
comb = b._engine.env.combiner
idx = comb.claim(99999999)                 # keep the ring busy: no solo commit
comb.fill(idx, b"\\x09")                    # an unknown kind: the committer refuses it
print("sending", flush=True)
b.send("t", b"orphan")                     # waits: the lock is held
print("returned", flush=True)
"""


def test_a_sender_killed_while_waiting(tmp_path: Path) -> None:
    """SIGKILLed in its wait: its FILLED slot is committed at most once by the next
    leader, and the slot is reclaimed."""
    path = tmp_path / "b"
    with mqlite.open(path, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"0")
        comb = b._engine.env.combiner
        p = subprocess.Popen([sys.executable, "-c", _KILLED_SENDER, str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdin is not None and p.stdout is not None
        assert p.stdout.readline().strip() == "warm"
        holder = _hold_ring_lock(path)
        try:
            p.stdin.write("\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "sending"
            while comb.filled() < 2:  # the junk slot and the orphan's
                comb.gather(0)
            p.kill()
            assert p.wait(60) == -signal.SIGKILL
            p.stdin.close()
            p.stdout.close()
        finally:
            _let_go(holder)
        b.send("t", b"next")  # leads: takes the orphan's slot (and the junk one)
        values = [m.value for m in b._engine.read_partition("t")]
        assert values == [b"0", b"warm", b"orphan", b"next"]
        comb.reclaim()
        assert comb.filled() == 0
        assert all(comb.word(k)[1] == _core.FREE for k in range(comb.nslots))


def test_pid_is_cached_and_current_after_fork(tmp_path: Path) -> None:
    assert _core.self_pid() == os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, b"1" if _core.self_pid() == os.getpid() else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)


def test_gathering_hint(tmp_path: Path) -> None:
    comb = _core.Combiner(str(tmp_path / "ring.shm"), 4, 128)
    assert comb.gathering() is False
    comb.close()
    with pytest.raises(ValueError, match="closed"):
        comb.gathering()
