"""The examples run as real processes and produce the documented outcome."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

import mqlite
from mqlite import TopicPartition

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SRC = str(Path(mqlite.__file__).resolve().parent.parent)
TIMEOUT = 180.0


def _env(d: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MQLITE_DIR=str(d), MQLITE_DURABILITY="none", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(EXAMPLES), SRC, env.get("PYTHONPATH", "")]))
    return env


def _read_until(b: mqlite.Broker, topic: str, n: int) -> list[Any]:
    """Every message of ``topic`` once there are ``n`` (blocking polls, no sleeps)."""
    c = b.consumer(None)
    tps = [TopicPartition(topic, p) for p in range(b.partitions_for(topic))]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: list[Any] = []
    end = time.monotonic() + TIMEOUT
    try:
        while len(out) < n:
            assert time.monotonic() < end, f"{topic}: {len(out)} of {n} messages"
            out += [msgspec.json.decode(m.value) for m in c.poll(1000, timeout=1.0)]
    finally:
        c.close()
    return out


def test_shop_flow(tmp_broker_dir: Path) -> None:
    n = 400
    env = _env(tmp_broker_dir)
    gen = subprocess.run([sys.executable, "order_service.py", "--orders", str(n), "--seed", "7",
                          "--flaky", "0.05", "--declined", "0.01"],
                         cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                         check=False)
    assert gen.returncode == 0, gen.stderr
    rng = random.Random(7)
    declined = flaky = 0
    for _ in range(n):  # the generator's draws, replayed
        r = rng.random()
        rng.randrange(100)
        rng.uniform(5, 500)
        declined += r < 0.01
        flaky += 0.01 <= r < 0.06
    assert declined and flaky
    with mqlite.open(tmp_broker_dir, durability="none") as b:  # so the test can read them now
        for topic, parts in (("payment-processed", 6), ("notification-sent", 6), ("alerts", 1)):
            b.create_topic(topic, partitions=parts, exist_ok=True)
    procs = []
    try:
        for target, extra in (("payments:app", ["--workers", "2"]),
                              ("notifications:app", []), ("analytics:app", []),
                              ("dlq_monitor:app", [])):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "mqlite", "run", target, *extra], cwd=EXAMPLES, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True))
        with mqlite.open(tmp_broker_dir, durability="none") as b:
            paid = _read_until(b, "payment-processed", n - declined)
            sent = _read_until(b, "notification-sent", n - declined)
            alerts = _read_until(b, "alerts", declined)
            for p in procs:
                p.send_signal(signal.SIGTERM)
            outs = [p.communicate(timeout=TIMEOUT)[0].decode() for p in procs]
            assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
            # exactly once per order, declined ones in the DLQ after one attempt
            paid = _read_until(b, "payment-processed", n - declined)
            assert len(paid) == n - declined
            assert len(set(Counter(p["orderId"] for p in paid).values())) == 1
            dls = b.dead_letters("order-created.dlq")
            assert len(dls) == declined
            assert all(d.delivery_count == 1 and d.reason == "rejected: card declined"
                       for d in dls)
            assert {p["orderId"] for p in paid} | {msgspec.json.decode(d.message.value)["orderId"]
                                                   for d in dls} == set(range(n))
            assert sorted(s["orderId"] for s in sent) == sorted(p["orderId"] for p in paid)
            assert len(alerts) == declined and all(a["error"] == "Reject: card declined"
                                                   for a in alerts)
            ends = {p.partition: p.end_offset for p in b.describe_topic("order-created").partitions}
            assert b.committed_offsets("analytics", "order-created") == {
                k: v for k, v in ends.items() if v}
            assert f"analytics: {n} orders" in outs[2]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
            if p.stdout is not None:
                p.stdout.close()
