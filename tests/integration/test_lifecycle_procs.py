"""A Queue in a forked child is not its parent's member (same rule as group consumers).

Real processes (``os.fork``), synchronised through pipes: the child reports
each step as one JSON line and waits for the parent's go-ahead; no sleeps.
"""

from __future__ import annotations

import json
import os
import time
import traceback
import warnings
from typing import Any

from _values import value

import mqlite


def _fork(child: Any) -> tuple[int, Any, Any, Any]:
    """Fork; run ``child(report, wait)`` there. Returns (pid, read_report, send_go, close)."""
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(up_r)
            os.close(down_w)
            up = os.fdopen(up_w, "w", buffering=1)
            down = os.fdopen(down_r)

            def report(obj: Any) -> None:
                up.write(json.dumps(obj) + "\n")

            child(report, down.readline)
        except BaseException:  # noqa: BLE001 - reported to the parent
            os.write(up_w, (json.dumps({"error": traceback.format_exc()}) + "\n").encode())
            code = 1
        finally:
            os._exit(code)  # never return into pytest; no close(): like a crash
    os.close(up_w)
    os.close(down_r)
    up = os.fdopen(up_r)
    down = os.fdopen(down_w, "w", buffering=1)

    def read() -> Any:
        line = up.readline()
        assert line, "child exited without reporting"
        msg = json.loads(line)
        assert "error" not in msg, msg.get("error")
        return msg

    def close() -> None:
        up.close()
        down.close()

    return pid, read, lambda: down.write("go\n"), close


def test_forked_child_cannot_act_as_the_parents_queue_member(tmp_broker_dir):
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        b.send_batch("t", [b"%d" % i for i in range(6)])
        q = b.queue("t", "g", visibility_timeout=300)
        mine = q.receive(1, timeout=0)  # the parent holds message 0
        assert [d.value for d in mine] == [b"0"]

        def child(report: Any, wait: Any) -> None:
            try:
                q.receive(5, timeout=0)
                report({"inherited": "received"})
            except mqlite.GroupError as exc:
                report({"inherited": str(exc)})
            q.close()  # in the child: forgets the object, leaves the parent's holds alone
            with mqlite.open(tmp_broker_dir, durability="none") as cb:
                own = cb.queue("t", "g", visibility_timeout=300)
                got = own.receive(5, timeout=0)
                report({"own": [value(d).decode() for d in got]})
                wait()  # then exit without closing: a crash as far as the group can tell

        pid, read, go, close_pipes = _fork(child)
        try:
            msg = read()
            assert "forked child" in msg["inherited"] and "create a new" in msg["inherited"]
            assert read()["own"] == ["1", "2", "3", "4", "5"]
            go()
        finally:
            close_pipes()
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        # The child's holds were its own member's: its death releases them at once,
        # long before their 300 s visibility timeout.
        t0 = time.monotonic()
        back: list[Any] = []
        while len(back) < 5 and time.monotonic() - t0 < 30:
            back += q.receive(5, timeout=30 - (time.monotonic() - t0))
        assert sorted(d.value for d in back) == [b"1", b"2", b"3", b"4", b"5"]
        assert all(d.delivery_count == 2 for d in back)
        # The parent's own hold survived the child's close() of the inherited object.
        mine[0].ack()
        q.ack(back)
        q.close()


def test_broker_close_in_a_forked_child_leaves_the_parents_producer_alone(tmp_broker_dir):
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        p = b.producer(linger_ms=60_000)  # records stay queued until a flush
        fut = p.send("t", b"parent")

        def child(report: Any, wait: Any) -> None:
            try:
                p.send("t", b"child")
                report({"send": "accepted"})
            except mqlite.ClosedError as exc:
                report({"send": str(exc)})
            b.close()  # must not wait for the parent's flusher, which this process lacks
            report({"closed": b.closed and p.closed})

        pid, read, _go, close_pipes = _fork(child)
        try:
            assert "forked child" in read()["send"]
            assert read()["closed"] is True
        finally:
            close_pipes()
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        p.flush()
        assert fut.result(0).offset == 0
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        assert [m.value for m in b.read("t")] == [b"parent"]
