"""The service framework: :class:`App`, handlers, publishers, retries, dead letters, running.

Layers: this package is written on the public broker API through
:mod:`mqlite.app.backend`; nothing below it imports it.  Modules:

``app``         App: registration, lifecycle, publish, request/reply, health, redrive
``subscriber``  options of ``@app.subscriber``, validated at decoration time
``runner``      the fetch thread and handler lanes of each subscriber (commits, retries, DLQ)
``context``     Context handed to handlers; outputs
``codec``       payload encoding / decoding with msgspec
``exceptions``  Reject (permanent), Retry (transient), TimeLimitExceeded (time_limit)
``backend``     the seam to the broker (sync mqlite today; aio / Kafka later)
``periodic``    @app.periodic(every=...): ticks as deduplicated delayed messages, one run each
``run``         app.run(workers=N), signals, health endpoint
``testing``     TestApp: the real engine in a temporary directory
"""

from mqlite.app import kafka_backend as kafka_backend  # registers kafka:// (URL_BACKENDS)
from mqlite.app.app import App, Health
from mqlite.app.codec import PayloadError
from mqlite.app.context import Context
from mqlite.app.exceptions import Reject, Retry, TimeLimitExceeded
from mqlite.app.periodic import Tick
from mqlite.app.runner import HandlerEvent
from mqlite.app.testing import TestApp

__all__ = ["App", "Context", "HandlerEvent", "Health", "PayloadError", "Reject", "Retry",
           "TestApp", "Tick", "TimeLimitExceeded"]
