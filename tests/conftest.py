"""Shared fixtures and test configuration for the whole suite.

Sections: import path, Hypothesis profiles, randomness, broker directories.
Add new fixtures to the section they belong to (or a new one) and keep each
one small; anything bigger belongs in a helper module under ``tests/``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# -- import path ---------------------------------------------------------------
# Test modules import the pure-Python oracle as ``import _reference`` wherever
# they live (tests/core, tests/property, ...), whatever pytest's import mode.
TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

# -- Hypothesis profiles -----------------------------------------------------
# "ci" (default) keeps the whole suite fast on a 2-core machine; "slow" is for
# a deliberate long run: HYPOTHESIS_PROFILE=slow pytest tests/property.
# Deadlines are off: timing of one example is noise on a loaded CI box.
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "slow",
    max_examples=5000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    # On a failure Hypothesis' pytest plugin imports libcst to suggest a patch;
    # libcst's use of mypy_extensions.TypedDict warns, and with
    # filterwarnings=error that INTERNALERROR would hide the failure report.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    )

# -- randomness ----------------------------------------------------------------
# One seed per session: MQLITE_TEST_SEED when set, else a fresh one.  Every
# test derives its own generator from the seed and its node id, so a failing
# test reproduces with MQLITE_TEST_SEED=<seed> alone, however it is selected.
_SESSION_SEED = int(os.environ.get("MQLITE_TEST_SEED") or random.SystemRandom().randrange(2**32))


def pytest_report_header(config: pytest.Config) -> str:
    return f"mqlite random seed: MQLITE_TEST_SEED={_SESSION_SEED}"


@pytest.fixture(scope="session")
def session_seed() -> int:
    """The session's seed, for session/module-scoped fixtures (tests use ``seed``)."""
    return _SESSION_SEED


@pytest.fixture
def seed(session_seed: int, request: pytest.FixtureRequest) -> int:
    """This run's random seed; printed so a failure report shows how to rerun it."""
    # Printed during setup: pytest shows captured setup output only for
    # failing tests ("Captured stdout setup").
    print(f"random seed: MQLITE_TEST_SEED={session_seed} (test {request.node.nodeid})")
    return session_seed


@pytest.fixture
def rng(seed: int, request: pytest.FixtureRequest) -> random.Random:
    """A ``random.Random`` seeded from ``seed`` and this test's node id."""
    return random.Random(f"{seed}:{request.node.nodeid}")


# -- forkserver children --------------------------------------------------------
# The process suites (tests/crash, tests/integration) start children from one
# ``forkserver`` per session, whose preload list is global: a test module that set
# its own list at import replaced the others' at collection, so in a full run the
# torture's children imported their entry points on every (re)start, which runs
# alone never did (docs/decisions.md D51).  One list for every suite, set here
# before any module is collected; a module not on ``sys.path`` is skipped by the
# forkserver.
FORKSERVER_PRELOAD = ["mqlite", "mqlite.queue", "mqlite.groups", "_procs_torture",
                      "_procs_writemap", "_procs_groups", "_procs_ring"]
multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)


# -- broker directories --------------------------------------------------------


@pytest.fixture
def tmp_broker_dir(tmp_path: Path) -> Path:
    """Path for a fresh broker directory (not yet created) in a private tmp dir."""
    tmp_path.chmod(0o700)
    return tmp_path / "broker"


# -- Kafka (the Kafka backend's tests and the contract suite) -----------------
# One Kafka-protocol broker from a wheel per session, started on first use
# (tests/_kafka_server.py); skipped with the reason where none can run.
@pytest.fixture(scope="session")
def kafka_server():
    from _kafka_server import start, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kafka_url(kafka_server) -> str:
    return str(kafka_server.url)
