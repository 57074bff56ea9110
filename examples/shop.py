"""Shared message types and settings of the example shop (order -> payment -> notification).

Every service reads the broker directory from ``MQLITE_DIR`` (default ``data/``).
"""

from __future__ import annotations

import os

import msgspec

BROKER = os.environ.get("MQLITE_DIR", "data/")
DURABILITY = os.environ.get("MQLITE_DURABILITY", "sync")


class Order(msgspec.Struct):
    orderId: int
    customer: str
    amount: float
    card: str = "ok"  # "ok", "flaky" (fails transiently once), "declined" (permanent)


class Payment(msgspec.Struct):
    orderId: int
    amount: float
    status: str


class Notification(msgspec.Struct):
    orderId: int
    customer: str
    text: str
