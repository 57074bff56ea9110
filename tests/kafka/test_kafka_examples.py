"""The example shop (examples/) runs unchanged against ``kafka://`` (issue 15 acceptance).

``MQLITE_DIR=kafka://...`` is the only change: payments with 3 worker
processes (exactly-once through Kafka transactions, retries, a dead-letter
topic), notifications, analytics and the dead-letter monitor, as real
``mqlite run`` processes; counts as in the embedded flow
(tests/app/test_examples.py).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _polling import wait_until
from test_kafka_app import _read

pytest.importorskip("confluent_kafka")

import mqlite

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SRC = str(Path(mqlite.__file__).resolve().parent.parent)
TIMEOUT = 240.0
OPTS = {"log_level": 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status == 200
    except OSError:  # not listening yet, or 503 (HTTPError is an OSError)
        return False


def _read_until(b: Any, topic: str, n: int) -> list[mqlite.Message]:
    """Every committed message of ``topic`` once there are ``n`` (blocking polls)."""
    return _read(b, topic, n, TIMEOUT)


def test_shop_flow_on_kafka_with_3_payment_workers(kafka_url: str) -> None:
    n = 300
    env = dict(os.environ)
    env.update(MQLITE_DIR=kafka_url, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(EXAMPLES), SRC, env.get("PYTHONPATH", "")]))
    with mqlite.open(kafka_url, client_options=OPTS) as b:
        # a fresh cluster per session, but the test may run twice against an external one
        for t in ("order-created", "payment-processed", "notification-sent", "alerts",
                  "order-created.dlq"):
            if t in b.topics():
                b.delete_topic(t)
        for topic, parts in (("order-created", 6), ("payment-processed", 6),
                             ("notification-sent", 6), ("alerts", 1),
                             ("order-created.dlq", 1)):
            b.create_topic(topic, partitions=parts)
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    for target, extra in (("payments:app", ["--workers", "3"]), ("notifications:app", []),
                          ("analytics:app", []), ("dlq_monitor:app", [])):
        ports.append(_free_port())
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mqlite", "run", target, *extra, "--health-port",
             str(ports[-1])], cwd=EXAMPLES, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        _run_shop(kafka_url, env, n, procs, ports)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
            if p.stdout is not None:
                p.stdout.close()


def _run_shop(url: str, env: dict[str, str], n: int, procs: list[subprocess.Popen[bytes]],
              ports: list[int]) -> None:
    for port in ports:
        wait_until(lambda port=port: _healthy(port), TIMEOUT, f"service on {port} ready")
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
    with mqlite.open(url, client_options=OPTS) as b:
        paid = [msgspec.json.decode(m.value) for m in
                _read_until(b, "payment-processed", n - declined)]
        sent = _read_until(b, "notification-sent", n - declined)
        alerts = [msgspec.json.decode(m.value) for m in _read_until(b, "alerts", declined)]
        ends = {p.partition: p.end_offset for p in b.describe_topic("order-created").partitions}
        want = {k: v for k, v in ends.items() if v}
        wait_until(lambda: b.committed_offsets("analytics", "order-created") == want,
                   TIMEOUT, "analytics to commit every order")
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=TIMEOUT)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
        # exactly once per order (Kafka transactions), declined ones dead-lettered once
        paid = [msgspec.json.decode(m.value) for m in
                _read_until(b, "payment-processed", n - declined)]
        assert len(paid) == n - declined
        assert set(Counter(p["orderId"] for p in paid).values()) == {1}
        dls = _read_until(b, "order-created.dlq", declined)
        assert len(dls) == declined
        assert all(dict(d.headers)["x-delivery-count"] == b"1"
                   and dict(d.headers)["x-dead-letter-reason"] == b"rejected: card declined"
                   for d in dls)
        assert {p["orderId"] for p in paid} | {msgspec.json.decode(d.value)["orderId"]
                                               for d in dls} == set(range(n))
        assert len(sent) == n - declined
        assert len(alerts) == declined and all(a["error"] == "Reject: card declined"
                                               for a in alerts)
        assert b.committed_offsets("analytics", "order-created") == want
        assert f"analytics: {n} orders" in outs[2]
