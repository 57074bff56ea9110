"""Notification service: an ``async def`` handler per processed payment.

    mqlite run notifications:app
"""

from __future__ import annotations

import asyncio

from shop import BROKER, DURABILITY, Notification, Payment

import mqlite

app = mqlite.App(BROKER, name="notifications", durability=DURABILITY, partitions=6)


@app.subscriber("payment-processed", group="notifications")
@app.publisher("notification-sent")
async def notify(payment: Payment, ctx: mqlite.Context) -> Notification:
    await asyncio.sleep(0)  # stands for an e-mail / push API call
    return Notification(orderId=payment.orderId, customer=(ctx.key or b"").decode(),
                        text=f"payment of {payment.amount:.2f} received")


if __name__ == "__main__":
    raise SystemExit(app.run())
