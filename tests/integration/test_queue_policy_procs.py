"""A queue group's policy is shared by consumers in different processes (issue 9, part 7).

Each child is a small command loop driven over stdin/stdout: the parent
sends one JSON command and waits for its one-line JSON answer, so the
processes take turns without sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mqlite

CHILD = r"""
import json, sys
import mqlite
broker = mqlite.open(sys.argv[1], durability="none")
q = None
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    try:
        if op == "open":
            q = broker.queue("jobs", "w", **cmd["kw"])
            out = {"max_deliveries": q.max_deliveries, "dlq": q.dead_letter_topic}
        elif op == "receive_nack":
            ds = q.receive(max_messages=1, timeout=cmd.get("timeout", 10))
            for d in ds:
                q.nack(d)
            out = {"got": [[d.value.decode(), d.delivery_count] for d in ds]}
        elif op == "close":
            q.close()
            out = {}
        else:
            raise ValueError(op)
    except Exception as exc:
        out = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out), flush=True)
    if op == "close":
        break
broker.close()
"""


class Child:
    def __init__(self, path: Path) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)

    def ask(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            assert self.p.stderr is not None
            raise AssertionError(f"child exited {self.p.wait(10)}: {self.p.stderr.read()}")
        return json.loads(line)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[tuple[Path, list[Child]]]:
    made: list[Child] = []
    try:
        yield tmp_path / "b", made
    finally:
        for c in made:
            if c.p.poll() is None:
                c.p.kill()
            c.p.wait(10)
            for f in (c.p.stdin, c.p.stdout, c.p.stderr):
                if f is not None:
                    f.close()


def test_policy_is_the_groups_across_processes(children: tuple[Path, list[Child]]) -> None:
    path, made = children
    with mqlite.open(path, durability="none") as b:
        b.create_topic("jobs")
        b.send("jobs", b"m")
    a, c = Child(path), Child(path)
    made += [a, c]
    assert a.ask("open", kw={"max_deliveries": 2, "dead_letter_topic": "jobs-dlq"}) == {
        "max_deliveries": 2, "dlq": "jobs-dlq"}
    # a conflicting consumer in another process is refused with the typed error
    r = c.ask("open", kw={"max_deliveries": 1})
    assert r["error"] == "QueueConfigConflictError"
    assert "max_deliveries=2" in r["message"] and "set_queue_policy" in r["message"]
    # one that passes no policy adopts the stored one
    assert c.ask("open", kw={}) == {"max_deliveries": 2, "dlq": "jobs-dlq"}
    assert a.ask("receive_nack") == {"got": [["m", 1]]}   # retried
    assert c.ask("receive_nack") == {"got": [["m", 2]]}   # c applies the group's limit
    assert a.ask("receive_nack", timeout=0) == {"got": []}
    assert a.ask("close") == {} and c.ask("close") == {}
    for ch in (a, c):
        assert ch.p.wait(30) == 0, ch.p.stderr.read() if ch.p.stderr else ""
    with mqlite.open(path, durability="none") as b:
        assert [m.value for m in b.read("jobs-dlq")] == [b"m"]
        assert b.queue_policy("jobs", "w") == mqlite.QueuePolicy(2, "jobs-dlq", None)
