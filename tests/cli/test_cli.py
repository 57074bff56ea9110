"""The mqlite command line, run as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import mqlite


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mqlite", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"mqlite {args} -> {proc.returncode}: {proc.stderr}")
    return proc


def test_create_send_tail_describe(tmp_broker_dir):
    path = str(tmp_broker_dir)
    run("create", path, "orders", "--partitions", "3")
    run("send", path, "orders", "hello", "--key", "foobar")
    out = json.loads(run("--json", "describe", path, "orders").stdout)
    assert [p["messages"] for p in out["partitions"]] == [0, 0, 1] or \
        sum(p["messages"] for p in out["partitions"]) == 1
    lines = run("--json", "tail", path, "orders").stdout.strip().splitlines()
    assert [json.loads(line)["value"] for line in lines] == ["hello"]
    topics = json.loads(run("--json", "topics", path).stdout)
    assert topics == [{"topic": "orders", "partitions": 3, "messages": 1, "bytes": topics[0]["bytes"]}]
    run("delete", path, "orders")
    assert json.loads(run("--json", "topics", path).stdout) == []


def test_errors_exit_2_with_message(tmp_broker_dir):
    path = str(tmp_broker_dir)
    run("create", path, "t")
    proc = run("describe", path, "missing", check=False)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    proc = run("create", path, "bad/name", check=False)
    assert proc.returncode == 2
    assert "invalid topic name" in proc.stderr


def test_verify_reports_flipped_byte(tmp_broker_dir):
    path = str(tmp_broker_dir)
    marker = b"VERIFY-MARKER-" * 40
    with mqlite.open(path, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"before")
        b.send("t", marker)
    assert run("verify", path).returncode == 0
    data_file = tmp_broker_dir / "data.mdb"
    raw = bytearray(data_file.read_bytes())
    at = raw.find(marker)
    assert at > 0
    raw[at + 100] ^= 0x20
    data_file.write_bytes(bytes(raw))
    proc = run("--json", "verify", path, check=False)
    assert proc.returncode == 1
    rep = json.loads(proc.stdout)
    assert rep["problems"][0]["topic"] == "t"
    assert rep["problems"][0]["offset"] == 1
    assert "CRC" in rep["problems"][0]["message"] or "crc" in rep["problems"][0]["message"]


def test_dlq_and_groups_commands(tmp_broker_dir):
    path = str(tmp_broker_dir)
    with mqlite.open(path, durability="none") as b:
        b.create_topic("jobs")
        b.send("jobs", b"poison")
        q = b.queue("jobs", "workers", max_deliveries=1, dead_letter_topic="jobs.dlq")
        (d,) = q.receive(max_messages=1, timeout=1)
        d.nack(error="boom")
        q.close()
    listed = json.loads(run("--json", "dlq", "list", path, "jobs.dlq").stdout)
    assert listed[0]["original_topic"] == "jobs" and listed[0]["last_error"] == "boom"
    assert json.loads(run("--json", "dlq", "redrive", path, "jobs.dlq").stdout) == {"redriven": 1}
    assert json.loads(run("--json", "dlq", "list", path, "jobs.dlq").stdout) == []
    groups = json.loads(run("--json", "groups", path).stdout)  # queue groups are listed too
    assert [(g["group"], g["kind"], g["topics"]) for g in groups] == [("workers", "queue",
                                                                       ["jobs"])]
    assert groups[0]["dead_letters"] == 0 and groups[0]["ready"] == 1  # the redriven copy
