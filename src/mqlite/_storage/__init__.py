"""Storage layer: the only package that imports ``lmdb``.

``env`` owns the environment lifecycle (safe directory, one environment per
process per directory, fork handling, durability modes, backpressure), ``keys``
the key encodings, ``log`` the partition log and topic catalog; one module per
database for the rest (``offsets``, ``groups``, ``queues``, ``pending``,
``schedule``, ``dedup``, ``processed``, ``exchanges``).  Layouts: docs/format.md.
"""

from mqlite._storage.env import Env, acquire_env, lmdb_error

__all__ = ["Env", "acquire_env", "lmdb_error"]
