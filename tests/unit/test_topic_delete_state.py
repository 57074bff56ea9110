"""Deleting a topic removes every offset and queue entry of its partitions (issue 10, defect 13).

Stream-group committed offsets, queue cursors and pending (in-flight) entries
are keyed by partition id or topic; a recreated topic gets new ids, so
anything left behind would be garbage nobody can reach or delete.
"""

from __future__ import annotations

import mqlite
from mqlite import TopicPartition as TP


def _keys(b: mqlite.Broker) -> dict[str, set[bytes]]:
    env = b._engine.env
    out: dict[str, set[bytes]] = {}
    with env.read_txn() as txn:
        for name in ("offsets", "pending"):
            cur = txn.cursor(db=env.dbs[name])
            out[name] = {bytes(k) for k in cur.iternext(keys=True, values=False)}
    return out


def _use(b: mqlite.Broker, topic: str) -> None:
    b.send_batch(topic, [b"%d" % i for i in range(6)], partition=0)
    b.send_batch(topic, [b"%d" % i for i in range(6)], partition=1)
    with b.consumer(topic, group=f"g-{topic}", commit="manual") as c:
        got: list[mqlite.Message] = []
        while len(got) < 12:
            got += c.poll(timeout=5)
        c.commit()
    q = b.queue(topic, f"w-{topic}")
    ds = q.receive(8, timeout=5)
    assert ds
    q.ack(ds[:3])  # some acked (cursor moves), the rest stay pending
    q.close()


def test_delete_topic_leaves_no_offsets_cursors_or_pending(broker: mqlite.Broker) -> None:
    broker.create_topic("keep", partitions=2)
    broker.create_topic("t", partitions=2)
    _use(broker, "keep")
    before = _keys(broker)
    _use(broker, "t")
    during = _keys(broker)
    assert during["offsets"] > before["offsets"]
    assert during["pending"] > before["pending"]
    broker.delete_topic("t")
    assert _keys(broker) == before  # "keep" untouched, nothing of "t" left
    # A recreated topic starts with nothing committed or pending.
    broker.create_topic("t", partitions=2)
    with broker.consumer("t", group="g-t", commit="manual") as c:
        assert c.committed([TP("t", 0), TP("t", 1)]) == {TP("t", 0): None, TP("t", 1): None}
    assert _keys(broker) == before
