"""Analytics: its own group, so it sees every order (and every payment) too.

    mqlite run analytics:app

Counts orders and revenue per customer in memory and prints the totals on
shutdown; a real service would write them to a database.
"""

from __future__ import annotations

from collections import Counter

from shop import BROKER, DURABILITY, Order, Payment

import mqlite

app = mqlite.App(BROKER, name="analytics", durability=DURABILITY, partitions=6)
orders: Counter[str] = Counter()
revenue = [0.0]


@app.subscriber("order-created", group="analytics", batch=1000)
def count_order(order: Order) -> None:
    orders[order.customer] += 1


@app.subscriber("payment-processed", group="analytics", batch=1000)
def count_payment(payment: Payment) -> None:
    revenue[0] += payment.amount


@app.on_shutdown
def report() -> None:
    print(f"analytics: {sum(orders.values())} orders from {len(orders)} customers, "
          f"revenue {revenue[0]:.2f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(app.run())
