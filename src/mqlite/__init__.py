"""mqlite: an embedded, durable message broker (placeholder during bootstrap)."""
from mqlite.errors import *  # noqa: F403
