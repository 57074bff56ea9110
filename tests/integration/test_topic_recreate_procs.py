"""Defect 13 of issue 10: a topic deleted (and recreated) by another process.

A process whose topic cache still names the old partition ids must see
``TopicNotFoundError`` (deleted) or use the new topic (recreated), never
``StorageError: partition id N has no state``.  The other process is driven
through a pipe, step by step (no sleeps).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import _procs_recreate
import pytest
from _children import stop_child

import mqlite
from mqlite import TopicPartition as TP

_CTX = multiprocessing.get_context("spawn")


class _Other:
    def __init__(self, path: str) -> None:
        self.conn, child = _CTX.Pipe()
        self.proc = _CTX.Process(target=_procs_recreate.churn, args=(path, child), daemon=True)
        self.proc.start()
        child.close()

    def do(self, cmd: Any) -> None:
        self.conn.send(cmd)
        assert self.conn.recv() == "ok"

    def close(self) -> None:
        stop_child(self.conn, self.proc)


@pytest.fixture
def world(tmp_broker_dir: Any) -> Iterator[tuple[mqlite.Broker, _Other]]:
    b = mqlite.open(tmp_broker_dir)
    b.create_topic("t", partitions=2)
    other = _Other(str(tmp_broker_dir))
    try:
        yield b, other
    finally:
        other.close()
        b.close()


def _ops(b: mqlite.Broker, c: mqlite.Consumer, p: mqlite.Producer
         ) -> dict[str, Callable[[], object]]:
    return {
        # first: right after the warm-up poll this member still owns t[1]
        "commit": lambda: c.commit({TP("t", 1): 1}),
        "send": lambda: b.send("t", b"x", partition=1),
        "send_key": lambda: b.send("t", b"x", key=b"k"),
        "send_batch": lambda: b.send_batch("t", [b"x", b"y"], partition=1),
        "send_batch_keys": lambda: b.send_batch("t", [b"x", b"y"], keys=[b"a", b"b"]),
        "producer": lambda: p.send("t", b"x", partition=1).result(timeout=30),
        "read": lambda: b.read("t", 1, 0),
        "describe": lambda: b.describe_topic("t"),
        "poll": lambda: c.poll(timeout=0),
        "position": lambda: c.position(TP("t", 1)),
        "end_offsets": lambda: c.end_offsets([TP("t", 1)]),
        "lag": lambda: c.lag(),
        "committed": lambda: c.committed(TP("t", 1)),
    }


def _orphans(b: mqlite.Broker) -> set[int]:
    """Partition ids of stored stream-group offsets that no topic has."""
    env = b._engine.env
    with env.read_txn() as txn:
        live = {pid for name in b.topics() for pid in b._engine.topic(txn, name).pids}
        cur = txn.cursor(db=env.dbs["offsets"])
        pids = {int.from_bytes(bytes(k)[-4:], "big")
                for k in cur.iternext(keys=True, values=False)
                if bytes(k)[:2] == b"g\x00" and len(k) == 6}  # group "g" (see _storage/offsets)
    return pids - live


def _warm(b: mqlite.Broker, c: mqlite.Consumer) -> None:
    b.send("t", b"w", partition=1)
    b.read("t", 1, 0)
    c.poll(timeout=0)


@pytest.mark.parametrize("between", [False, True])
@pytest.mark.parametrize("mode", ["delete", "recreate"])
def test_stale_cache_after_other_process_deletes(world: tuple[mqlite.Broker, _Other],
                                                 mode: str, between: bool) -> None:
    b, other = world
    with b.consumer("t", group="g", commit="manual") as c, b.producer() as p:
        for i, (name, op) in enumerate(_ops(b, c, p).items()):
            other.do("create")
            _warm(b, c)  # our caches now name the current partition ids
            other.do(mode)
            if between:
                # A write of ours that reads no topic record: our next write
                # transaction follows our own commit ("fresh") and used to trust
                # the stale cache.
                b.declare_exchange(f"x{i}")
            try:
                op()
            except mqlite.TopicNotFoundError:
                assert mode == "delete", name
            except mqlite.CommitFailedError:
                # the group rebalanced onto the recreated topic (Kafka: CommitFailedException)
                assert name == "commit" and mode == "recreate", name
            except mqlite.StorageError as exc:  # the defect
                pytest.fail(f"{name} after {mode}: {type(exc).__name__}: {exc}")
            assert not _orphans(b), f"{name} after {mode} left offsets of deleted partitions"


def test_free_running_churn_gives_only_typed_errors(world: tuple[mqlite.Broker, _Other]
                                                    ) -> None:
    b, other = world
    errors: dict[str, int] = {}
    with b.consumer("t", group="g", commit="manual") as c, b.producer() as p:
        ops = _ops(b, c, p)
        other.conn.send(("loop", 300))
        assert other.conn.recv() == "started"
        rounds = 0
        while not other.conn.poll() or rounds < 5:
            rounds += 1
            for name, op in ops.items():
                try:
                    op()
                except (mqlite.TopicNotFoundError, mqlite.CommitFailedError) as exc:
                    assert isinstance(exc, mqlite.TopicNotFoundError) or name == "commit"
                    errors[name] = errors.get(name, 0) + 1
                except mqlite.StorageError as exc:
                    pytest.fail(f"{name}: {type(exc).__name__}: {exc}")
        assert other.conn.recv() == "ok"


@pytest.mark.parametrize("group", [None, "g"])
def test_a_partition_recreated_by_another_process_is_read_from_its_start(
        world: tuple[mqlite.Broker, _Other], group: str | None) -> None:
    """D91: between two polls another process deletes and creates the topic again; the
    consumer's position 2 of the old t[1] must not skip the new t[1]'s first messages,
    and a commit of it must fail and write nothing onto the new partition."""
    b, other = world
    tp = TP("t", 1)
    with b.consumer("t" if group else None, group=group, commit="manual") as c:
        if group is None:
            c.assign([tp])
        b.send_batch("t", [b"old0", b"old1"], partition=1)
        got: list[mqlite.Message] = []
        for _ in range(50):
            got += c.poll(timeout=5)
            if len(got) == 2:
                break
        assert [(m.partition, m.offset) for m in got] == [(1, 0), (1, 1)]
        other.do("recreate")
        b.send_batch("t", [b"new0", b"new1", b"new2"], partition=1)
        if group is not None:
            with pytest.raises(mqlite.CommitFailedError, match="created again"):
                c.commit()
            assert c.committed(tp) is None
        new = c.poll(timeout=5)
        assert [(m.partition, m.offset, m.value) for m in new] == [
            (1, 0, b"new0"), (1, 1, b"new1"), (1, 2, b"new2")]
        if group is not None:
            c.commit()
            assert c.committed(tp) == 3
