"""Hot, consistent, compacted copies of a broker's data file (``mqlite backup``).

Layout: the copy is one directory holding ``data.mdb`` only, the same format
as the source (docs/format.md); ``lock.mdb`` and the wake-up file are
created when the copy is first opened, so restoring is ``mqlite.open(dest)``.

How: LMDB's ``mdb_env_copy2`` with ``MDB_CP_COMPACT`` walks every B-tree in
one read transaction and writes the live pages only, renumbered, free pages
dropped.  So the copy is a snapshot as of the moment it began (consistent
across every database: a send and its offsets are both in or both out) and
writers keep going meanwhile (a reader never blocks them); what they commit
after that moment is not in the copy.  The copy's size is about the live
data, not the source file's high-water mark.

Callers: ``Broker.backup`` only.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import lmdb

from mqlite._storage.env import lmdb_error
from mqlite.errors import BrokerDirectoryError

__all__ = ["copy_compacted"]


def _prepare(dest: str, dir_mode: int) -> None:
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        os.makedirs(dest, mode=dir_mode)
        os.chmod(dest, dir_mode)  # makedirs filters the mode through the umask
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise BrokerDirectoryError(f"backup destination {dest!r} is not a plain directory")
    if os.listdir(dest):
        raise BrokerDirectoryError(
            f"backup destination {dest!r} is not empty; give a new or empty directory "
            "(a backup never overwrites)")


def copy_compacted(env: Any, dest: str) -> int:
    """Copy ``env``'s data compacted into the new (or empty) directory ``dest``.

    Returns the size in bytes of the copy's ``data.mdb`` (mode 0600, or 0660
    for a shared-group broker; the directory 0700 / 0770).

    Raises
    ------
    BrokerDirectoryError
        ``dest`` exists and is not an empty plain directory.
    StorageError
        The copy failed (e.g. disk full); a partial copy is left in ``dest``.
    """
    dest = os.path.abspath(os.fspath(dest))
    dir_mode = 0o770 if env.shared_group else 0o700
    _prepare(dest, dir_mode)
    out = os.path.join(dest, "data.mdb")
    # The read transaction holds the environment open (its in-flight fence)
    # while LMDB's copy runs in its own read transaction.
    with env.read_txn():
        try:
            env.handle().copy(dest, compact=True)
        except lmdb.Error as exc:
            raise lmdb_error(exc, f"backup to {dest}") from exc
    os.chmod(out, env.file_mode)
    return os.path.getsize(out)
