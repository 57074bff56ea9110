"""Test helper: run the examples' shop services as real processes (both backends' suites).

``shop_services`` starts payments (with ``--workers``), notifications,
analytics and the DLQ monitor through ``mqlite run`` with a health port each,
waits until every one answers ready, and kills whatever is left on exit;
``publish_orders`` runs the order generator and returns how many of its orders
are declined (its random draws replayed).
"""

from __future__ import annotations

import functools
import os
import random
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _polling import wait_until

import mqlite

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SRC = str(Path(mqlite.__file__).resolve().parent.parent)


def example_env(**extra: str) -> dict[str, str]:
    """The environment the example modules run in (they import each other and mqlite)."""
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(EXAMPLES), SRC, env.get("PYTHONPATH", "")]),
               **extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status == 200
    except OSError:  # not listening yet, or 503 (HTTPError is an OSError)
        return False


@contextmanager
def shop_services(env: dict[str, str], payment_workers: int, timeout: float,
                  payments_extra: tuple[str, ...] = ()
                  ) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The four services, each ready (signal handlers installed) before this yields.

    Order: payments (with ``payments_extra`` options), notifications,
    analytics, dlq_monitor.  Processes still running on exit are killed with
    their process group.
    """
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for target, extra in (("payments:app", ["--workers", str(payment_workers),
                                                *payments_extra]),
                              ("notifications:app", []), ("analytics:app", []),
                              ("dlq_monitor:app", [])):
            ports.append(free_port())
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "mqlite", "run", target, *extra, "--health-port",
                 str(ports[-1])], cwd=EXAMPLES, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True))
        for port in ports:
            wait_until(functools.partial(healthy, port), timeout, f"service on {port} ready")
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
            if p.stdout is not None:
                p.stdout.close()


def publish_orders(env: dict[str, str], n: int, timeout: float) -> int:
    """Run the order generator (seed 7, 5% flaky, 1% declined); the declined count."""
    gen = subprocess.run([sys.executable, "order_service.py", "--orders", str(n), "--seed", "7",
                          "--flaky", "0.05", "--declined", "0.01"],
                         cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=timeout,
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
    return declined


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[str]:
    """SIGTERM every service; their outputs once each exited 0 (asserted)."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), outs
    return outs


def wait_analytics_caught_up(b: object, timeout: float) -> dict[int, int]:
    """Wait until the ``analytics`` group committed every non-empty ``order-created``
    partition to its end (``b``: a broker of either backend); those end offsets."""
    ends = {p.partition: p.end_offset
            for p in b.describe_topic("order-created").partitions}  # type: ignore[attr-defined]
    want = {k: v for k, v in ends.items() if v}
    wait_until(lambda: b.committed_offsets(  # type: ignore[attr-defined]
        "analytics", "order-created") == want, timeout, "analytics to commit every order")
    return want
