"""Operations commands of the CLI (issue 13): groups, group reset-offsets, topic alter,
queue, peek, top, metrics, backup.  By subprocess, and in-process through ``main``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import mqlite
from mqlite.cli import main


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mqlite", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"mqlite {args} -> {proc.returncode}: {proc.stderr}")
    return proc


def jrun(*args: str) -> Any:
    return json.loads(run(*args, "--json").stdout)


@pytest.fixture
def filled(tmp_broker_dir: Path) -> str:
    path = str(tmp_broker_dir)
    with mqlite.open(path, durability="none") as b:
        b.create_topic("orders", 3)
        for i in range(30):
            b.send("orders", b"v%d" % i, key=b"k%d" % (i % 5), headers=[("trace", b"t%d" % i)],
                   timestamp_ms=1_700_000_000_000 + i * 1000)
        c = b.consumer("orders", group="billing")
        c.poll(max_records=30, timeout=5.0)
        c.commit()
        c.close()
        q = b.queue("orders", "workers", max_deliveries=1, dead_letter_topic="orders.dlq")
        got = q.receive(max_messages=4, timeout=5.0)
        got[0].ack()
        got[1].nack(error="boom")  # max_deliveries=1: dead-lettered
        q.close()
    return path


def test_groups_lists_stream_and_queue_groups(filled: str) -> None:
    groups = jrun("groups", filled)
    by = {(g["group"], g["kind"]): g for g in groups}
    assert set(by) == {("billing", "stream"), ("workers", "queue")}
    assert by[("billing", "stream")]["lag"] == 0
    w = by[("workers", "queue")]
    assert (w["ready"], w["inflight"], w["dead_letters"], w["topics"]) == (28, 0, 1, ["orders"])
    text = run("groups", filled).stdout
    assert "billing" in text and "workers" in text and "stream" in text and "queue" in text


def test_group_of_an_unknown_or_queue_group_is_an_error_not_an_empty_group(filled: str) -> None:
    # D82: an unknown name used to be shown as an empty stream group, exit 0
    for extra in ((), ("--json",)):
        proc = run("group", filled, "nobody", *extra, check=False)
        assert proc.returncode == 2 and proc.stdout == ""
        assert f"no group 'nobody' on this broker; `mqlite groups {filled}` lists them" \
            in proc.stderr
    # a queue group: says so and points to `mqlite queue`
    proc = run("group", filled, "workers", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "'workers' is a queue group (of topic orders), not a stream group" in proc.stderr
    assert f"`mqlite queue {filled} orders workers`" in proc.stderr
    # a stream group still describes; so does one that only has committed offsets
    assert jrun("group", filled, "billing")["group"] == "billing"
    jrun("group", "reset-offsets", filled, "audit", "--topic", "orders", "--to-earliest")
    d = jrun("group", filled, "audit")
    assert d["members"] == [] and {p["committed"] for p in d["partitions"]} == {0}


def test_reset_offsets_every_way(filled: str) -> None:
    out = jrun("group", "reset-offsets", filled, "billing", "--topic", "orders", "--to-earliest")
    assert out == {"group": "billing", "topic": "orders", "offsets": {"0": 0, "1": 0, "2": 0}}
    with mqlite.open(filled) as b:
        ends = {str(p.partition): p.end_offset for p in b.describe_topic("orders").partitions}
    out = jrun("group", "reset-offsets", filled, "billing", "--topic", "orders", "--to-latest")
    assert out["offsets"] == ends
    out = jrun("group", "reset-offsets", filled, "billing", "--topic", "orders",
               "--to-offset", "1", "--partition", "2")
    assert out["offsets"] == {"2": 1}
    # every message of partition p has a timestamp; the 10th message overall is at +10 s
    out = jrun("group", "reset-offsets", filled, "billing", "--topic", "orders",
               "--to-datetime", "2023-11-14T22:13:30Z")  # 1_700_000_010_000 ms
    with mqlite.open(filled) as b:
        for p, off in out["offsets"].items():
            msgs = b.read("orders", int(p), 0, 100)
            want = next((m.offset for m in msgs if m.timestamp_ms >= 1_700_000_010_000),
                        len(msgs))
            assert off == want
        assert b.committed_offsets("billing", "orders") == \
            {int(p): o for p, o in out["offsets"].items()}
    # live members: refused unless --force
    with mqlite.open(filled) as b:
        c = b.consumer("orders", group="billing")
        c.poll(timeout=5.0)
        proc = run("group", "reset-offsets", filled, "billing", "--topic", "orders",
                   "--to-earliest", check=False)
        assert proc.returncode == 2 and "live member" in proc.stderr and "--force" in proc.stderr
        run("group", "reset-offsets", filled, "billing", "--topic", "orders", "--to-earliest",
            "--force")
        c.close()
    proc = run("group", "reset-offsets", filled, "billing", "--topic", "orders", check=False)
    assert proc.returncode == 2  # one of --to-* is required (argparse usage error)
    proc = run("group", "reset-offsets", filled, "billing", "--topic", "orders",
               "--to-datetime", "yesterday", check=False)
    assert proc.returncode == 2 and "ISO 8601" in proc.stderr


def test_topic_alter(filled: str) -> None:
    out = jrun("topic", "alter", filled, "orders", "--partitions", "5", "--retention-ms",
               "60000")
    assert out["config"]["partitions"] == 5
    assert out["config"]["retention_ms"] == 60000
    out = jrun("topic", "alter", filled, "orders", "--retention-ms", "none")
    assert out["config"]["retention_ms"] is None
    with mqlite.open(filled) as b:
        assert b.partitions_for("orders") == 5
    for bad in (["--partitions", "2"], [], ["--retention-ms", "soon"]):
        proc = run("topic", "alter", filled, "orders", *bad, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("mqlite: error:"), bad


def test_queue_command(filled: str) -> None:
    q = jrun("queue", filled, "orders", "workers")
    assert (q["ready"], q["inflight"], q["consumed"], q["dead_letters"]) == \
        (28, 0, 2, 1)
    assert q["dead_letter_topic"] == "orders.dlq"
    assert q["oldest_ready_timestamp_ms"] >= 1_700_000_000_000
    text = run("queue", filled, "orders", "workers").stdout
    assert "ready" in text and "28" in text and "oldest ready message age" in text
    proc = run("queue", filled, "orders", "nobody", check=False)
    assert proc.returncode == 2 and "no queue group" in proc.stderr


def test_peek_by_offset_timestamp_and_key(filled: str) -> None:
    msgs = jrun("peek", filled, "orders", "--partition", "0", "--offset", "1", "-n", "2")
    assert [m["offset"] for m in msgs] == [1, 2]
    assert msgs[0]["headers"][0][0] == "trace"
    msgs = jrun("peek", filled, "orders", "--timestamp", "1700000025000", "-n", "100")
    assert sorted(m["timestamp_ms"] for m in msgs) == \
        [1_700_000_000_000 + i * 1000 for i in range(25, 30)]
    msgs = jrun("peek", filled, "orders", "--key", "k3", "-n", "100")
    assert sorted(m["value"] for m in msgs) == \
        sorted(f"v{i}" for i in range(30) if i % 5 == 3)
    text = run("peek", filled, "orders", "--key", "k3").stdout
    assert "trace=t3" in text


def test_top_once(filled: str) -> None:
    frame = jrun("top", filled, "--once", "--interval", "0.05")
    topics = {t["topic"]: t for t in frame["topics"]}
    assert topics["orders"]["messages"] == 30 and topics["orders"]["in_per_s"] == 0
    kinds = {(g["group"], g["kind"]) for g in frame["groups"]}
    assert kinds == {("billing", "stream"), ("workers", "queue")}
    assert frame["dead_letters"] == {"orders.dlq": 1}
    assert "topics" in run("top", filled, "--once", "--interval", "0.05").stdout
    assert run("top", filled, "--json", check=False).returncode == 2


def test_in_process_main(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "queue", filled, "orders", "workers"]) == 0
    assert json.loads(capsys.readouterr().out)["ready"] == 28
    assert main(["topic", "alter", filled, "orders", "--partitions", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["partitions"] == 4
    assert main(["group", "reset-offsets", filled, "billing", "--topic", "orders",
                 "--to-earliest"]) == 0
    assert "offsets reset" in capsys.readouterr().out
    assert main(["queue", filled, "missing", "workers"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_metrics_command_on_a_busy_port_is_a_clear_error(filled: str, capsys) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["metrics", filled, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err and "--port" in err
    assert "Traceback" not in err


def test_metrics_command_serves_and_stops_on_sigterm(filled: str) -> None:
    with subprocess.Popen([sys.executable, "-m", "mqlite", "metrics", filled, "--port", "0",
                           "--dead-letter-topic", "later.dlq"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert "http://127.0.0.1:" in line, proc.stderr.read()  # type: ignore[union-attr]
            url = line.split()[-1]
            with urllib.request.urlopen(url, timeout=30) as r:
                fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
            lag = {s.labels["partition"]: s.value
                   for s in fams["mqlite_consumer_group_lag"].samples}
            assert lag == {"0": 0, "1": 0, "2": 0}
            ready = fams["mqlite_queue_messages_ready"].samples[0]
            assert ready.labels == {"topic": "orders", "group": "workers"}
            assert ready.value == 28
            dead = {s.labels["topic"]: s.value
                    for s in fams["mqlite_dead_letter_messages"].samples}
            assert len(dead) == 2 and dead.pop("later.dlq") == 0  # named, not created yet
            assert list(dead.values()) == [1]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


_PRODUCER = textwrap.dedent("""
    import os, sys, mqlite
    path, ready, stop = sys.argv[1:]
    with mqlite.open(path, durability="none") as b:
        i = 0
        while not os.path.exists(stop):
            with b.transaction() as tx:     # a and b always hold the same count
                tx.send("a", b"%d" % i)
                tx.send("b", b"%d" % i)
            i += 1
            if i == 200:
                open(ready, "w").close()
        print(i)
""")


def test_backup_while_a_producer_process_runs(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    path = str(tmp_path / "b")
    with mqlite.open(path, durability="none") as b:
        b.create_topic("a")
        b.create_topic("b")
        b.send_batch("a", [b"x" * 1000] * 2000)  # some bulk, then delete it: compaction
        b.delete_topic("a")
        b.create_topic("a")
    ready, stop = str(tmp_path / "ready"), str(tmp_path / "stop")
    with subprocess.Popen([sys.executable, "-c", _PRODUCER, path, ready, stop],
                          stdout=subprocess.PIPE, text=True) as prod:
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(ready):  # the producer's barrier file
                assert prod.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            out = jrun("backup", path, str(tmp_path / "copy"))
            Path(stop).touch()
            total = int(prod.communicate(timeout=60)[0])
        finally:
            if prod.poll() is None:
                prod.kill()
                prod.wait()
    copy = tmp_path / "copy"
    assert out["bytes"] == (copy / "data.mdb").stat().st_size
    assert oct(copy.stat().st_mode & 0o777) == "0o700"
    assert oct((copy / "data.mdb").stat().st_mode & 0o777) == "0o600"
    assert (copy / "data.mdb").stat().st_size < (tmp_path / "b" / "data.mdb").stat().st_size
    with mqlite.open(str(copy)) as c:  # restore = open the copy
        na = c.describe_topic("a").messages
        nb = c.describe_topic("b").messages
        assert na == nb and 200 <= na <= total  # one consistent snapshot of both topics
        assert [m.value for m in c.read("a", 0, 0, na)] == [b"%d" % i for i in range(na)]
        c.send("a", b"after restore")  # a working broker
    proc = run("backup", path, str(copy), check=False)
    assert proc.returncode == 2 and "not empty" in proc.stderr


def test_dlq_redrive_in_chunks(tmp_broker_dir: Path) -> None:
    path = str(tmp_broker_dir)
    with mqlite.open(path, durability="none") as b:
        b.create_topic("jobs")
        b.send_batch("jobs", [b"%d" % i for i in range(1200)])
        q = b.queue("jobs", "w", max_deliveries=3, dead_letter_topic="jobs.dlq")
        got = q.receive(max_messages=1200, timeout=5.0)
        assert q.dead_letter(got) == 1200
        q.close()
    assert jrun("dlq", "redrive", path, "jobs.dlq", "--limit", "700") == {"redriven": 700}
    assert jrun("dlq", "redrive", path, "jobs.dlq", "--limit", "5000") == {"redriven": 500}
    with mqlite.open(path) as b:
        assert b.dead_letters("jobs.dlq") == []
        assert b.describe_topic("jobs").messages == 2400


def test_dlq_list_shows_where_each_letter_came_from(tmp_broker_dir: Path) -> None:
    path = str(tmp_broker_dir)
    with mqlite.open(path, durability="none") as b:
        b.create_topic("jobs", 3)
        for i in range(4):
            b.send("jobs", b"filler %d" % i, partition=2)
        b.send("jobs", b"poison", partition=2)  # jobs[2]@4
        q = b.queue("jobs", "w", max_deliveries=3, dead_letter_topic="jobs.dlq")
        got = q.receive(max_messages=10, timeout=5.0)
        poison = [d for d in got if d.value == b"poison"]
        q.ack([d for d in got if d.value != b"poison"])
        assert q.dead_letter(poison, reason="bad input") == 1
        q.close()
    (dl,) = jrun("dlq", "list", path, "jobs.dlq")
    assert (dl["original_topic"], dl["original_partition"], dl["original_offset"]) == \
        ("jobs", 2, 4)
    assert (dl["original_group"], dl["reason"], dl["partition"], dl["offset"]) == \
        ("w", "bad input", 0, 0)
    assert isinstance(dl["dead_lettered_ms"], int)
    text = run("dlq", "list", path, "jobs.dlq").stdout
    assert "jobs[2]@4" in text and "bad input" in text


def test_dlq_redrive_filters_apply_before_the_limit(tmp_broker_dir: Path) -> None:
    path = str(tmp_broker_dir)
    with mqlite.open(path, durability="none") as b:
        b.create_topic("jobs", 2)
        for p in (0, 1):
            b.send_batch("jobs", [b"p%d-%d" % (p, i) for i in range(6)], partition=p)
        q = b.queue("jobs", "w", max_deliveries=3, dead_letter_topic="jobs.dlq")
        got = sorted(q.receive(max_messages=12, timeout=5.0),
                     key=lambda d: (d.partition, d.offset))
        assert len(got) == 12
        # reasons: even offsets "smtp timeout", odd ones "invalid amount"
        assert q.dead_letter([d for d in got if d.offset % 2 == 0], reason="smtp timeout") == 6
        assert q.dead_letter([d for d in got if d.offset % 2], reason="invalid amount") == 6
        q.close()

    def listed(*extra: str) -> list[tuple[int, int]]:
        return sorted((d["original_partition"], d["original_offset"])
                      for d in jrun("dlq", "list", path, "jobs.dlq", *extra))

    assert listed("--reason", "timeout", "--from-partition", "1") == [(1, 0), (1, 2), (1, 4)]
    assert listed("--from-offset-min", "2", "--from-offset-max", "3",
                  "--from-topic", "jobs") == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert listed("--from-topic", "other") == []
    # the filter first, then --limit: 2 of the 3 matching letters (not 2 of the first 2)
    assert jrun("dlq", "redrive", path, "jobs.dlq", "--reason", "timeout",
                "--from-partition", "1", "--limit", "2") == {"redriven": 2}
    assert listed("--reason", "timeout", "--from-partition", "1") == [(1, 4)]
    with mqlite.open(path) as b:
        back = b.read("jobs", 1, 6, 10)
        assert [m.value for m in back] == [b"p1-0", b"p1-2"]  # to their original partition
    assert jrun("dlq", "redrive", path, "jobs.dlq", "--reason", "invalid") == {"redriven": 6}
    assert listed() == [(0, 0), (0, 2), (0, 4), (1, 4)]
    assert jrun("dlq", "purge", path, "jobs.dlq", "--from-partition", "0") == {"purged": 3}
    assert listed() == [(1, 4)]


@pytest.mark.parametrize(("extra", "says"), [
    (("--limit", "0"), "--limit is a number of dead letters, at least 1, got 0"),
    (("--from-partition", "-1"), "--from-partition is a partition number, at least 0, got -1"),
    (("--from-offset-max", "-2"), "--from-offset-max is an offset, at least 0, got -2"),
    (("--from-offset-min", "5", "--from-offset-max", "4"), "nothing would match"),
    (("--reason", ""), "--reason needs a non-empty value"),
    (("--from-partition", "x"), "invalid int value: 'x'"),
])
def test_dlq_bad_filter_values_are_clear_errors(tmp_broker_dir: Path, extra: tuple[str, ...],
                                                says: str) -> None:
    path = str(tmp_broker_dir)
    with mqlite.open(path, durability="none", create=True) as b:
        b.create_topic("jobs.dlq")
    proc = run("dlq", "redrive", path, "jobs.dlq", *extra, check=False)
    assert proc.returncode == 2 and says in proc.stderr and proc.stdout == ""
