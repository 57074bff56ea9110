"""Apps run by the multi-process tests (``mqlite run _app_procs:NAME``).

The broker directory comes from ``MQLITE_TEST_DIR``; nothing here sleeps.
"""

from __future__ import annotations

import os
import sys
import threading

import mqlite

DIR = os.environ.get("MQLITE_TEST_DIR", "unused")

# At-least-once worker: one output per handled input (6 partitions, shared by workers).
workers_app = mqlite.App(DIR, name="w", durability="none", partitions=6, graceful_timeout=30)


@workers_app.subscriber("in", group="workers", concurrency=2, batch=20)
@workers_app.publisher("out")
def handle(x: dict) -> dict:
    return {"id": x["id"], "pid": os.getpid()}


# Exactly-once: outputs and the offset commit in one transaction.
eos_app = mqlite.App(DIR, name="eos", durability="none", partitions=3)


@eos_app.subscriber("in", group="eos", exactly_once=True, batch=5, concurrency=3)
def eos_handle(x: dict, ctx: mqlite.Context) -> None:
    ctx.publish("out", {"id": x["id"]})
    ctx.publish("out2", {"id": x["id"]})


# A handler that never finishes: for the second-signal test.
stuck_app = mqlite.App(DIR, name="stuck", durability="none", graceful_timeout=600)


@stuck_app.subscriber("in", group="stuck")
def stuck(x: object) -> None:
    with open(os.path.join(DIR, "entered"), "w") as f:  # the test waits for this file
        f.write("1")
    threading.Event().wait()  # never set


# Metrics: a stream handler (lag per partition) and a queue handler whose ids divisible
# by 4 fail permanently into a dead-letter topic (DLQ depth); mqlite run --metrics-port.
metrics_app = mqlite.App(DIR, name="met", durability="none", partitions=3)


@metrics_app.subscriber("events", group="met.events", batch=50)
def on_event(x: dict) -> None:
    return None


@metrics_app.subscriber("jobs", group="met.jobs", mode="queue", dead_letter="jobs.dlq",
                        permanent=(ValueError,), concurrency=2)
def on_job(x: dict) -> None:
    if x["id"] % 4 == 0:
        raise ValueError("bad job")


def publish_then_run(port: int) -> None:
    """docs/app.md's first example: ``app.publish(...)`` (which opens the broker), then
    ``app.run(workers=2)`` from a script."""
    workers_app.publish("in", {"id": -1}, key="first")
    sys.exit(workers_app.run(workers=2, health_port=port))


# A queue subscriber whose topic the test deletes and creates again (D84): one output per
# handled input, with the worker's pid.
queue_app = mqlite.App(DIR, name="qa", durability="none", graceful_timeout=30)


@queue_app.subscriber("jobs", group="qa.jobs", mode="queue", concurrency=2, batch=10)
@queue_app.publisher("done")
def queue_job(x: dict) -> dict:
    return {"id": x["id"], "pid": os.getpid()}


# A queue job held until the test releases it: for the process-group signal test (D86).
held_app = mqlite.App(DIR, name="held", durability="none", graceful_timeout=600)


def _wait_file(name: str) -> None:
    gate = threading.Event()
    while not os.path.exists(os.path.join(DIR, name)):  # the test creates it
        gate.wait(0.005)


@held_app.subscriber("jobs", group="held", mode="queue", batch=1)
def held(x: object) -> None:
    with open(os.path.join(DIR, "entered"), "w") as f:
        f.write(str(os.getpid()))
    while held_app.state != "stopping":  # the first signal reached this worker
        threading.Event().wait(0.005)
    with open(os.path.join(DIR, "stopping"), "w") as f:
        f.write("1")
    _wait_file("release")


@held_app.on_shutdown
def held_down() -> None:
    with open(os.path.join(DIR, f"down-{os.getpid()}"), "w") as f:
        f.write("1")


# A stream subscriber whose topic the test deletes and creates again (D89): one output per
# handled input, with the worker's pid.
stream_app = mqlite.App(DIR, name="sa", durability="none", graceful_timeout=30, partitions=4)


@stream_app.subscriber("events", group="sa.events", concurrency=2, batch=10)
@stream_app.publisher("done")
def stream_event(x: dict) -> dict:
    return {"id": x["id"], "pid": os.getpid()}


# Time limits (D88): a job marked "hang" never returns by itself; time_limit gives it up
# (sync: its thread abandoned; async: cancelled), retried once, then dead-lettered.
def _tl_app(kind: str) -> mqlite.App:
    app = mqlite.App(DIR, name=f"tl{kind}", durability="none", graceful_timeout=30)
    opts = {"group": "tl", "mode": "queue", "time_limit": 1.0, "retries": 1, "backoff": None,
            "dead_letter": "tl.dlq", "batch": 1, "name": "tl_job"}
    if kind == "sync":
        @app.subscriber("tl.jobs", **opts)  # type: ignore[arg-type]
        @app.publisher("tl.done")
        def tl_job(x: dict) -> dict:
            if x.get("hang"):
                threading.Event().wait()  # never set: only the time limit ends the attempt
            return {"id": x["id"], "pid": os.getpid()}
    else:
        import asyncio

        @app.subscriber("tl.jobs", **opts)  # type: ignore[arg-type]
        @app.publisher("tl.done")
        async def tl_ajob(x: dict) -> dict:
            if x.get("hang"):
                await asyncio.Event().wait()
            return {"id": x["id"], "pid": os.getpid()}
    return app


tl_sync_app = _tl_app("sync")
tl_async_app = _tl_app("async")
