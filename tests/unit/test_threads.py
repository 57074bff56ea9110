"""Several threads of one process writing through one broker (write-path cache)."""

from __future__ import annotations

import threading

import mqlite


def test_concurrent_thread_sends_keep_offsets_dense(tmp_broker_dir):
    n, threads = 3000, 4
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t", partitions=2)

        def work(i: int) -> None:
            for k in range(n):
                if k % 10 == 0:
                    b.send_batch("t", [b"%d-%d-b" % (i, k)] * 3, partition=k % 2)
                else:
                    b.send("t", b"%d-%d" % (i, k), partition=k % 2)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        msgs = b.consumer("t").poll(max_records=10**6, timeout=0)
        expected = threads * (n + 2 * (n // 10))
        assert len(msgs) == expected
        by_part: dict[int, list[int]] = {}
        for m in msgs:
            by_part.setdefault(m.partition, []).append(m.offset)
        for offs in by_part.values():
            assert offs == list(range(len(offs)))
        desc = b.describe_topic("t")
        assert [p.end_offset for p in desc.partitions] == [len(by_part[0]), len(by_part[1])]
