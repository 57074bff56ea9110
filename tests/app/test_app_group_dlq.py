"""An App stream subscriber's dead-letter topic is recorded in its group (D87), so other
processes (``mqlite groups`` / ``mqlite group``) show it; ``app.dead_letters(where=)`` and
``app.redrive(cursor=)``.  The cross-process test synchronises on the child's output lines
and on a topic it blocks on, never on sleeps."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

from _app_fixtures import AppProcs

import mqlite
from mqlite.app import TestApp
from mqlite.app.kafka_backend import KafkaBackend

TIMEOUT = 120.0

CHILD = """
import os
import mqlite

app = mqlite.App(os.environ["MQLITE_TEST_DIR"], durability="none")

@app.subscriber("orders", group="payments", retries=0, dead_letter="orders.dlq")
def pay(order: dict) -> None:
    if order["id"] == 1:
        raise mqlite.Reject("card declined")

app.start()
assert app.wait_ready(60)
app.wait_idle(60)
print("ready", flush=True)
c = app.broker.consumer("stop")   # blocks until the test sends to "stop"
while not c.poll(timeout=1.0):
    pass
c.close()
app.stop()
print("stopped", flush=True)
"""


def _until(p: subprocess.Popen[bytes], word: str, buf: bytearray) -> None:
    """Read the child's output (stdout and stderr: log lines too) up to a line ``word``.

    Reads the pipe's file descriptor (no buffered reader: ``select`` would not see lines
    it already holds); ``buf`` keeps what came after that line for the next call.
    """
    assert p.stdout is not None
    fd = p.stdout.fileno()
    while True:
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            if line.decode().strip() == word:
                return
        ready, _, _ = select.select([fd], [], [], TIMEOUT)
        assert ready, f"the App process did not say {word!r} in time"
        chunk = os.read(fd, 65536)
        assert chunk, f"the App process ended before saying {word!r}"
        buf += chunk


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mqlite", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc


def _stream_row(path: str) -> dict[str, Any]:
    rows = json.loads(_cli("groups", path, "--json").stdout)
    (row,) = [r for r in rows if r["group"] == "payments"]
    assert row["kind"] == "stream"
    return row


def test_an_apps_stream_dlq_is_shown_by_the_cli_in_another_process(app_procs: AppProcs) -> None:
    path = str(app_procs.dir)
    with mqlite.open(path, durability="none") as b:
        b.create_topic("orders")
        b.create_topic("stop")
        b.send("orders", b'{"id": 0}')
        b.send("orders", b'{"id": 1}')
    p = app_procs.python(CHILD)
    out = bytearray()
    _until(p, "ready", out)
    row = _stream_row(path)
    assert row["dead_letter_topics"] == {"orders": "orders.dlq"}
    assert (row["dead_letters"], row["members"]) == (1, 1)
    text = _cli("groups", path).stdout
    assert "orders.dlq" in text and "dlq topic" in text
    d = json.loads(_cli("group", path, "payments", "--json").stdout)
    assert d["dead_letter_topics"] == {"orders": "orders.dlq"}
    text = _cli("group", path, "payments").stdout
    assert "failures go to" in text and "orders.dlq" in text
    with mqlite.open(path, durability="none") as b:
        b.send("stop", b"now")
    _until(p, "stopped", out)
    assert p.wait(TIMEOUT) == 0
    # the App is gone; where its failures went is still shown, with the depth
    row = _stream_row(path)
    assert row["dead_letter_topics"] == {"orders": "orders.dlq"}
    assert (row["dead_letters"], row["members"]) == (1, 0)


def _run_app(path: Path, topic: str, dead_letter: str | None) -> None:
    app = mqlite.App(str(path), durability="none")

    @app.subscriber(topic, group="payments", dead_letter=dead_letter)
    def h(order: dict) -> None:
        pass

    app.start()
    assert app.wait_ready(60)
    app.stop()


def test_a_newer_subscriber_replaces_or_forgets_its_topics_entry(tmp_broker_dir: Path) -> None:
    _run_app(tmp_broker_dir, "orders", "orders.dlq")
    _run_app(tmp_broker_dir, "refunds", "refunds.dlq")  # same group, another topic: kept
    with mqlite.open(str(tmp_broker_dir)) as b:
        assert b.describe_group("payments").dead_letter_topics == {
            "orders": "orders.dlq", "refunds": "refunds.dlq"}
    _run_app(tmp_broker_dir, "orders", "orders.dlq.v2")  # a new version: the last one wins
    _run_app(tmp_broker_dir, "refunds", None)  # dead_letter= removed: forgotten
    with mqlite.open(str(tmp_broker_dir)) as b:
        (g,) = b.stats().groups
        assert g.dead_letter_topics == {"orders": "orders.dlq.v2"}


def test_queue_subscribers_record_nothing_in_a_stream_group(tmp_broker_dir: Path) -> None:
    app = mqlite.App(str(tmp_broker_dir), durability="none")

    @app.subscriber("jobs", group="workers", mode="queue", dead_letter="jobs.dlq")
    def h(job: dict) -> None:
        pass

    app.start()
    assert app.wait_ready(60)
    app.stop()
    with mqlite.open(str(tmp_broker_dir)) as b:
        st = b.stats()
        assert st.groups == []  # the queue policy holds it, as before
        assert [q.dead_letter_topic for q in st.queues] == ["jobs.dlq"]


def test_kafka_backend_records_nothing() -> None:
    # no cluster needed: the call must not touch the broker handle at all
    assert KafkaBackend.record_dead_letter(None, "g", ["t"], "t.dlq") is None  # type: ignore[arg-type, func-returns-value]


def test_app_dead_letters_where_and_redrive_cursor() -> None:
    app = mqlite.App("unused")
    handled: list[int] = []
    broken = True

    @app.subscriber("orders", group="pay", retries=0, dead_letter="orders.dlq")
    def h(order: dict) -> None:
        if broken:
            raise mqlite.Reject("declined" if order["id"] % 2 else "timeout")
        handled.append(order["id"])

    with TestApp(app) as t:
        for i in range(6):
            t.publish("orders", {"id": i})
        t.wait_idle()
        assert len(app.dead_letters("orders.dlq")) == 6
        odd = app.dead_letters("orders.dlq", where=mqlite.DeadLetterFilter(reason="declined"))
        assert sorted(dl.original_offset for dl in odd) == [1, 3, 5]
        assert len(app.dead_letters("orders.dlq", 2, where=lambda dl: True)) == 2
        broken = False
        cursor = mqlite.DeadLetterCursor()
        assert app.redrive("orders.dlq", limit=2, cursor=cursor) == 2
        assert app.redrive("orders.dlq", limit=2, cursor=cursor) == 2
        t.wait_idle()
        assert sorted(handled) == [0, 1, 2, 3]
        assert app.redrive("orders.dlq", cursor=cursor) == 2
        t.wait_idle()
        assert sorted(handled) == list(range(6))
        assert cursor.examined >= 6
