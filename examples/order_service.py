"""Order service: publishes ``order-created`` events (keyed by customer).

    python order_service.py --orders 1000 [--flaky 0.05] [--declined 0.01] [--seed 1]

5% of the orders use a flaky card (the payment fails transiently once, then
succeeds on retry) and 1% a declined card (a permanent failure: dead letter).
"""

from __future__ import annotations

import argparse
import random

from shop import BROKER, DURABILITY, Order

import mqlite

app = mqlite.App(BROKER, name="orders", durability=DURABILITY, partitions=6)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=1000)
    ap.add_argument("--flaky", type=float, default=0.05)
    ap.add_argument("--declined", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    app.broker.create_topic("order-created", partitions=6, exist_ok=True)
    for i in range(args.orders):
        r = rng.random()
        card = "declined" if r < args.declined else "flaky" if r < args.declined + args.flaky \
            else "ok"
        order = Order(orderId=i, customer=f"user-{rng.randrange(100)}",
                      amount=round(rng.uniform(5, 500), 2), card=card)
        app.publish("order-created", order, key=order.customer)
    app.stop()
    print(f"published {args.orders} orders")


if __name__ == "__main__":
    main()
