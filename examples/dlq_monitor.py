"""Dead-letter monitor: a subscriber on the dead-letter topic like any other.

    mqlite run dlq_monitor:app
    mqlite dlq list data/ order-created.dlq        # what is there
    mqlite dlq redrive data/ order-created.dlq     # send them back once fixed

Publishes one ``alerts`` event per dead letter with where it came from and why.
"""

from __future__ import annotations

import logging

from shop import BROKER, DURABILITY

import mqlite

app = mqlite.App(BROKER, name="dlq-monitor", durability=DURABILITY)
log = logging.getLogger("dlq-monitor")


@app.subscriber("order-created.dlq", group="dlq-monitor")
@app.publisher("alerts")
def on_dead_letter(order: dict, ctx: mqlite.Context) -> dict:
    alert = {"orderId": order.get("orderId"), "from": ctx.header("x-original-topic"),
             "offset": ctx.header("x-original-offset"),
             "attempts": ctx.header("x-delivery-count"), "error": ctx.header("x-last-error")}
    log.warning("dead letter: %s", alert)
    return alert


if __name__ == "__main__":
    raise SystemExit(app.run())
