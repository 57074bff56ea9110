"""Payment service: exactly-once, with retries and a dead-letter topic.

    mqlite run payments:app --workers 3

Each order is charged once: the ``payment-processed`` event and the offset
commit are one transaction (``exactly_once=True``), and the order id is
claimed (``idempotency_key``) so a re-sent order is skipped.  A flaky card
fails transiently (retried with backoff); a declined card is rejected
(``mqlite.Reject``: straight to ``order-created.dlq``).
"""

from __future__ import annotations

from shop import BROKER, DURABILITY, Order, Payment

import mqlite

app = mqlite.App(BROKER, name="payments", durability=DURABILITY, partitions=6)


class CardServiceDown(Exception):
    """The card processor did not answer: worth retrying."""


@app.subscriber("order-created", group="payments", exactly_once=True,
                idempotency_key=lambda order: str(order.orderId),
                retries=3, backoff=mqlite.Backoff.exponential(base=0.05, cap=1.0),
                dead_letter="order-created.dlq", concurrency=3)
@app.publisher("payment-processed")
def pay(order: Order, ctx: mqlite.Context) -> Payment:
    if order.card == "declined":
        raise mqlite.Reject("card declined")
    if order.card == "flaky" and ctx.attempt == 1:
        raise CardServiceDown("card processor timed out")
    return Payment(orderId=order.orderId, amount=order.amount, status="paid")


if __name__ == "__main__":
    raise SystemExit(app.run())
