"""`mqlite mirror`: same partitions, same records, resumable after SIGKILL without duplicates.

The mirror runs as a real process (``python -m mqlite mirror``); the kill is
synchronised on its progress lines (stderr), not on time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import mqlite
from mqlite import TopicPartition as TP
from mqlite.mirror import MirrorState, translate

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def fill(path: Path, topic: str, partitions: int, n: int) -> None:
    with mqlite.open(path, durability="none") as b:
        b.create_topic(topic, partitions)
        step = 5000
        for i in range(0, n, step):
            js = range(i, min(n, i + step))
            b.send_batch(topic, [b"value-%d" % j for j in js],
                         keys=[None if j % 7 == 0 else b"key-%d" % j for j in js],
                         headers=[[("seq", b"%d" % j), ("seq", b"again")] if j % 3 else None
                                  for j in js],
                         timestamp_ms=[1_600_000_000_000 + j for j in js])


def records(b: Any, topic: str, partition: int) -> list[tuple[Any, ...]]:
    c = b.consumer()
    c.assign([TP(topic, partition)])
    end = c.end_offsets([TP(topic, partition)])[TP(topic, partition)]
    out: list[tuple[Any, ...]] = []
    while c.position(TP(topic, partition)) < end:
        out += [(m.key, m.value, m.headers, m.timestamp_ms) for m in c.poll(timeout=5.0)]
    c.close()
    return out


def assert_identical(src_dir: Path, url: str, topic: str) -> None:
    with mqlite.open(src_dir) as s, mqlite.open(url) as t:
        n = s.partitions_for(topic)
        assert t.partitions_for(topic) == n
        for p in range(n):
            want = records(s, topic, p)
            got = records(t, topic, p)
            assert len(got) == len(want), f"partition {p}: {len(got)} != {len(want)}"
            assert got == want, f"partition {p} differs"


def run_mirror(src: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mqlite", "mirror", str(src), url, *extra],
                          capture_output=True, text=True, env=ENV, timeout=600, check=False)


def test_mirror_copies_partitions_and_translates_groups(kafka_url: str, tmp_path: Path) -> None:
    topic = f"m-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    fill(src, topic, 3, 3000)
    with mqlite.open(src) as b:
        c = b.consumer(topic, group="billing", commit="manual")
        seen: list[mqlite.Message] = []
        while len(seen) < 100:
            seen += c.poll(max_records=100 - len(seen))
        c.commit()
        c.close()
        committed = b.committed_offsets("billing", topic)
    r = run_mirror(src, kafka_url, "--topics", topic, "--groups", "billing")
    assert r.returncode == 0, r.stderr
    assert "mirrored 3000 record(s)" in r.stdout
    assert_identical(src, kafka_url, topic)
    state = MirrorState.load(src, kafka_url)
    assert set(state.segments[topic]) == {0, 1, 2}
    assert (state.path.stat().st_mode & 0o777) == 0o600
    with mqlite.open(kafka_url) as k:
        assert k.committed_offsets("billing", topic) == {
            p: translate(state, topic, p, o) for p, o in committed.items()}
    again = run_mirror(src, kafka_url, "--topics", topic)  # nothing new: nothing copied
    assert again.returncode == 0 and "mirrored 0 record(s)" in again.stdout


def test_mirror_refuses_a_foreign_non_empty_target(kafka_url: str, tmp_path: Path) -> None:
    topic = f"m-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    fill(src, topic, 1, 10)
    with mqlite.open(kafka_url) as k:
        k.create_topic(topic, 1)
        k.send(topic, b"someone else's")
    r = run_mirror(src, kafka_url, "--topics", topic)
    assert r.returncode == 2 and "no mirror state" in r.stderr


@pytest.mark.parametrize("n", [pytest.param(60_000, id="60k"),
                               pytest.param(1_000_000, id="1M", marks=pytest.mark.slow)])
def test_mirror_killed_midway_resumes_without_duplicates(kafka_url: str, tmp_path: Path,
                                                         n: int) -> None:
    topic = f"m-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    fill(src, topic, 6, n)
    with subprocess.Popen([sys.executable, "-m", "mqlite", "mirror", str(src), kafka_url,
                           "--topics", topic], stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, text=True, env=ENV) as proc:
        assert proc.stderr is not None
        killed_at = None
        for line in proc.stderr:  # progress lines: "... copied N"
            if "copied" in line and int(line.rsplit(" ", 1)[1]) >= n // 3:
                killed_at = int(line.rsplit(" ", 1)[1])
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL
    with mqlite.open(kafka_url) as k:  # a partial copy: resumed below
        d = k.describe_topic(topic)
        assert killed_at <= d.messages < n
    r = run_mirror(src, kafka_url, "--topics", topic)
    assert r.returncode == 0, r.stderr
    assert_identical(src, kafka_url, topic)


def test_mirror_follow_copies_new_records_until_sigterm(kafka_url: str, tmp_path: Path) -> None:
    import queue
    import threading

    topic = f"m-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    fill(src, topic, 2, 100)
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen([sys.executable, "-m", "mqlite", "mirror", str(src), kafka_url,
                           "--topics", topic, "--follow"], stderr=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=ENV) as proc:
        assert proc.stderr is not None
        stderr = proc.stderr

        def pump() -> None:
            for x in stderr:
                lines.put(x)
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()

        def wait_copied(n: int) -> None:
            while True:
                line = lines.get(timeout=120)
                if "copied" in line and int(line.rsplit(" ", 1)[1]) >= n:
                    return

        wait_copied(100)  # the initial copy is done
        with mqlite.open(src) as b:
            b.send_batch(topic, [b"late-%d" % i for i in range(50)],
                         keys=[b"late-%d" % i for i in range(50)])
        wait_copied(150)  # followed
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        assert proc.stdout is not None
        out = proc.stdout.read()  # a few bytes: the summary line
        reader.join(60)
    assert proc.returncode == 0, out
    assert "mirrored 150 record(s)" in out
    assert_identical(src, kafka_url, topic)


def test_translate_follows_the_segments(tmp_path: Path) -> None:
    state = MirrorState.load(tmp_path, "kafka://h:1")
    assert translate(state, "t", 0, 5) is None  # never mirrored
    state.segments = {"t": {0: [[10, 0], [100, 90], [150, 120]]}}
    state.save()
    again = MirrorState.load(tmp_path, "kafka://h:1")
    assert again.segments == state.segments
    assert (again.path.stat().st_mode & 0o777) == 0o600
    assert translate(again, "t", 0, 5) is None  # before the first mirrored record
    assert translate(again, "t", 0, 10) == 0
    assert translate(again, "t", 0, 60) == 50
    assert translate(again, "t", 0, 100) == 90  # retention skipped 100 - 90 - 10 offsets
    assert translate(again, "t", 0, 170) == 140
    assert MirrorState.load(tmp_path, "kafka://other:1").segments == {}
