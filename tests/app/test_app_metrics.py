"""``mqlite run module:app --metrics-port P``: broker state plus handler metrics of all workers.

A real ``mqlite run`` process (one worker, and two forked workers whose handler
metrics reach the one endpoint through the supervisor) is scraped over HTTP and
every value is checked against the API: ``Broker.stats()`` for lag, queue and
DLQ depth, the number of messages handled for the handler counters and
histograms.  Synchronised on the HTTP endpoint (polling), never on sleeps.
"""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from typing import Any

import msgspec
import pytest
from _polling import wait_until
from prometheus_client.parser import text_string_to_metric_families

import mqlite

TIMEOUT = 120.0
EVENTS = 300
JOBS = 200
BAD = sum(1 for i in range(JOBS) if i % 4 == 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Samples | None:
    """Every sample as ``{(name, sorted labels): value}``; None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def _get(m: Samples, name: str, **labels: str) -> float | None:
    return m.get((name, tuple(sorted(labels.items()))))


def _handled(m: Samples, handler: str, topic: str) -> dict[str, float]:
    return {dict(lv)["status"]: v for (n, lv), v in m.items()
            if n == "mqlite_handler_messages_total" and dict(lv).get("handler") == handler
            and dict(lv).get("topic") == topic}


def _quiet(m: Samples | None) -> Samples | None:
    """``m`` once every message was handled and settled (nothing in flight), else None."""
    if m is None:
        return None
    ev = _handled(m, "on_event", "events")
    jobs = _handled(m, "on_job", "jobs")
    done = (sum(ev.values()) == EVENTS and sum(jobs.values()) == JOBS
            and _get(m, "mqlite_handler_inflight", handler="on_event") == 0
            and _get(m, "mqlite_handler_inflight", handler="on_job") == 0
            and _get(m, "mqlite_consumer_group_lag_sum", group="met.events",
                     topic="events") == 0
            and _get(m, "mqlite_dead_letter_messages", topic="jobs.dlq") == BAD
            and _get(m, "mqlite_queue_messages_inflight", topic="jobs", group="met.jobs") == 0)
    return m if done else None


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_port_serves_broker_state_and_handler_metrics_of_all_workers(
        app_procs: Any, workers: int) -> None:
    b = mqlite.open(app_procs.dir, durability="none")
    port = _free_port()
    hport = _free_port()
    try:
        b.create_topic("events", partitions=3)
        b.create_topic("jobs", partitions=3)
        b.send_batch("jobs", [msgspec.json.encode({"id": i}) for i in range(JOBS)])
        p = app_procs.run("_app_procs:metrics_app", "--workers", str(workers),
                          "--metrics-port", str(port), "--health-port", str(hport))
        # every worker joined (health 200): the 3 event partitions are spread over all of
        # them, so each worker handles events and the counters below need all their reports
        wait_until(lambda: _health(hport) == 200, TIMEOUT, "health 200", step=0.05)
        b.send_batch("events", [msgspec.json.encode({"id": i}) for i in range(EVENTS)],
                     keys=[str(i).encode() for i in range(EVENTS)])
        # state the App does not touch, so nonzero lag / ready / in-flight are checked too
        audit = b.consumer("events", group="audit")
        assert len(audit.poll(max_records=40, timeout=10.0)) == 40
        audit.commit()
        audit.close()
        idle = b.queue("jobs", "idle", visibility_timeout=3600.0)
        held = idle.receive(max_messages=5, timeout=10.0)
        assert len(held) == 5
        m = wait_until(lambda: _quiet(_scrape(port)), TIMEOUT,
                       "every message handled in the scrape", step=0.05)
        st = b.stats()

        # handler counters and histograms == what was handled
        assert _handled(m, "on_event", "events") == {"ok": EVENTS}
        assert _handled(m, "on_job", "jobs") == {"ok": JOBS - BAD, "dead_letter": BAD}
        for h, t, n in (("on_event", "events", EVENTS), ("on_job", "jobs", JOBS)):
            assert _get(m, "mqlite_handler_duration_seconds_count", handler=h, topic=t) == n
            assert _get(m, "mqlite_handler_duration_seconds_bucket", handler=h, topic=t,
                        le="+Inf") == n

        # broker state == Broker.stats()
        assert st.dead_letters["jobs.dlq"] == BAD
        assert len(b.dead_letters("jobs.dlq")) == BAD
        assert _get(m, "mqlite_dead_letter_messages", topic="jobs.dlq") == BAD
        (grp,) = [g for g in st.groups if g.group == "met.events"]
        assert len(grp.lag) == 3
        for row in grp.lag:
            lbl = {"group": "met.events", "topic": "events", "partition": str(row.partition)}
            assert _get(m, "mqlite_consumer_group_lag", **lbl) == row.lag == 0
            assert _get(m, "mqlite_consumer_group_committed_offset", **lbl) == row.committed
        assert sum(r.committed or 0 for r in grp.lag) == EVENTS
        (q,) = [x for x in st.queues if x.group == "met.jobs"]
        lbl = {"topic": "jobs", "group": "met.jobs"}
        assert _get(m, "mqlite_queue_messages_ready", **lbl) == q.ready == 0
        assert _get(m, "mqlite_queue_messages_inflight", **lbl) == q.inflight == 0
        assert _get(m, "mqlite_messages_consumed_total", **lbl) == q.consumed == JOBS
        (aud,) = [g for g in st.groups if g.group == "audit"]
        assert any(r.lag > 0 for r in aud.lag)
        for row in aud.lag:
            lbl = {"group": "audit", "topic": "events", "partition": str(row.partition)}
            assert _get(m, "mqlite_consumer_group_lag", **lbl) == row.lag
        (iq,) = [x for x in st.queues if x.group == "idle"]
        lbl = {"topic": "jobs", "group": "idle"}
        assert _get(m, "mqlite_queue_messages_ready", **lbl) == iq.ready == JOBS - 5
        assert _get(m, "mqlite_queue_messages_inflight", **lbl) == iq.inflight == 5
        for part in st.partitions:
            if part.topic in ("events", "jobs"):
                assert _get(m, "mqlite_topic_partition_end_offset", topic=part.topic,
                            partition=str(part.partition)) == part.end_offset

        p.send_signal(signal.SIGTERM)
        assert p.wait(TIMEOUT) == 0, p.stdout.read().decode()[-3000:]
        idle.close()
    finally:
        b.close()
