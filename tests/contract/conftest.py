"""The contract suite runs every test against both backends.

``backend`` is ``"embedded"`` (an LMDB directory) or ``"kafka"`` (the wheel
broker of the session, tests/_kafka_server.py).  ``broker`` is an open
handle of that backend; ``topic`` a fresh topic name.  A known difference is
an expected skip: ``known_difference(backend, "kafka", why)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import mqlite


@pytest.fixture(params=["embedded", "kafka"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker(backend: str, tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    if backend == "kafka":
        url = request.getfixturevalue("kafka_url")
        b: Any = mqlite.open(url, client_options={"log_level": 3})
    else:
        b = mqlite.open(tmp_path / "broker")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def topic() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def known_difference(backend: str, on: str, why: str) -> None:
    """Skip (expected) where the behaviour differs by design on backend ``on``."""
    if backend == on:
        pytest.skip(f"known difference on {on}: {why}")
