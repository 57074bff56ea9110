"""A Prometheus scrape of the example shop while it runs (issue 13's acceptance).

The examples run as real processes, payments on two workers with
``--metrics-port``; the endpoint is scraped while the orders flow and once
everything is handled, and every value is checked against the API:
lag per partition (``Broker.stats()`` and ``committed_offsets``), queue ready
/ in-flight (a queue group the test holds messages in), the
stream DLQ's depth (``dead_letters()``) and the payments handler's counters
and histogram (the order generator's draws, replayed).  Synchronised on the
health and metrics endpoints (polling), never on sleeps.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import msgspec
from _polling import wait_until
from _shop import EXAMPLES, example_env, free_port, shop_services, stop_all
from test_app_metrics import Samples, _get, _scrape
from test_examples import TIMEOUT

import mqlite

N = 300


def _pay_counts(m: Samples) -> dict[str, float]:
    return {dict(lv)["status"]: v for (n, lv), v in m.items()
            if n == "mqlite_handler_messages_total" and dict(lv).get("handler") == "pay"}


def _draws(n: int) -> tuple[int, int]:
    """(declined, flaky) among the generator's ``n`` orders (its draws, replayed)."""
    rng = random.Random(7)
    declined = flaky = 0
    for _ in range(n):
        r = rng.random()
        rng.randrange(100)
        rng.uniform(5, 500)
        declined += r < 0.01
        flaky += 0.01 <= r < 0.06
    return declined, flaky


def test_scrape_of_the_running_shop_matches_the_api(tmp_broker_dir: Path) -> None:
    declined, flaky = _draws(N)
    assert declined and flaky
    env = example_env(MQLITE_DIR=str(tmp_broker_dir), MQLITE_DURABILITY="none")
    mport = free_port()
    b = mqlite.open(tmp_broker_dir, durability="none")
    try:
        for topic, parts in (("order-created", 6), ("payment-processed", 6),
                             ("notification-sent", 6), ("alerts", 1)):
            b.create_topic(topic, partitions=parts, exist_ok=True)
        # every worker joined (ready) before anything is published: no rebalance
        # replays a handler later
        with shop_services(env, 2, TIMEOUT, ("--metrics-port", str(mport))) as procs:
            _check_scrape(b, env, mport, procs, declined, flaky)
    finally:
        b.close()


def _check_scrape(b: mqlite.Broker, env: dict[str, str], mport: int,
                  procs: list[subprocess.Popen[bytes]], declined: int, flaky: int) -> None:
    # state no service touches, so nonzero lag and in-flight are checked too
    audit = b.consumer("order-created", group="audit")
    held = b.queue("payment-processed", "held", visibility_timeout=3600.0)
    gen = subprocess.Popen([sys.executable, "order_service.py", "--orders", str(N), "--seed",
                            "7", "--flaky", "0.05", "--declined", "0.01"],
                           cwd=EXAMPLES, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    during = wait_until(lambda: _scrape(mport), TIMEOUT, "a scrape while orders flow")
    out, _ = gen.communicate(timeout=TIMEOUT)
    assert gen.returncode == 0, out.decode()
    assert _get(during, "mqlite_topic_partition_end_offset", topic="order-created",
                partition="0") is not None
    assert len(audit.poll(max_records=40, timeout=10.0)) == 40
    audit.commit()
    got = held.receive(max_messages=5, timeout=TIMEOUT)
    assert len(got) == 5

    def quiet() -> Samples | None:
        m = _scrape(mport)
        if m is None:
            return None
        pay = _pay_counts(m)
        done = (pay.get("ok", 0) + pay.get("dead_letter", 0) == N
                and _get(m, "mqlite_handler_inflight", handler="pay") == 0
                and _get(m, "mqlite_consumer_group_lag_sum", group="payments",
                         topic="order-created") == 0
                and _get(m, "mqlite_consumer_group_lag_sum", group="analytics",
                         topic="order-created") == 0
                and _get(m, "mqlite_consumer_group_lag_sum", group="notifications",
                         topic="payment-processed") == 0
                and _get(m, "mqlite_queue_messages_ready", topic="payment-processed",
                         group="held") == N - declined - 5)
        return m if done else None

    m = wait_until(quiet, TIMEOUT, "every order handled, in the scrape", step=0.1)
    st = b.stats(dead_letter_topics=["order-created.dlq"])

    # handler counters and histogram == the generator's draws
    assert _pay_counts(m) == {"ok": N - declined, "retry": flaky, "dead_letter": declined}
    assert _get(m, "mqlite_handler_duration_seconds_count", handler="pay",
                topic="order-created") == N + flaky
    assert _get(m, "mqlite_handler_duration_seconds_bucket", handler="pay",
                topic="order-created", le="+Inf") == N + flaky

    # the stream DLQ's depth == dead_letters()
    dls = b.dead_letters("order-created.dlq")
    assert len(dls) == declined == st.dead_letters["order-created.dlq"]
    assert _get(m, "mqlite_dead_letter_messages", topic="order-created.dlq") == declined

    # lag per partition == stats() == committed offsets
    for g, t in (("payments", "order-created"), ("analytics", "order-created"),
                 ("audit", "order-created"), ("notifications", "payment-processed")):
        (grp,) = [x for x in st.groups if x.group == g]
        committed = b.committed_offsets(g, t)
        ends = {p.partition: p.end_offset for p in b.describe_topic(t).partitions}
        rows = [r for r in grp.lag if r.topic == t]
        assert {r.partition for r in rows} == set(range(6))
        for row in rows:
            lbl = {"group": g, "topic": t, "partition": str(row.partition)}
            assert _get(m, "mqlite_consumer_group_lag", **lbl) == row.lag
            assert row.lag == ends[row.partition] - committed.get(row.partition, 0)
    assert sum(r.lag for r in next(x for x in st.groups if x.group == "audit").lag) \
        == N - 40

    # queue ready / in-flight == stats(): "held" holds 5 of the payments in flight
    (q,) = [x for x in st.queues if x.group == "held"]
    lbl = {"topic": "payment-processed", "group": "held"}
    assert (q.ready, q.inflight) == (N - declined - 5, 5)
    assert _get(m, "mqlite_queue_messages_ready", **lbl) == q.ready
    assert _get(m, "mqlite_queue_messages_inflight", **lbl) == q.inflight
    got_decoded = {msgspec.json.decode(d.message.value)["orderId"] for d in dls}
    assert len(got_decoded) == declined

    stop_all(procs, TIMEOUT)
    held.close()
    audit.close()
