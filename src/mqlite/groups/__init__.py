"""Consumer groups without a coordinator.

There is no coordinator process: a group is one record in the broker's LMDB
environment, changed only inside write transactions, and every member process
runs the same protocol on it.  Each partition has exactly one owner at a time;
a partition changes hands only when it is free (released, or its owner left,
died or expired), and the transaction that frees it also grants it to its new
owner.  Liveness comes from the kernel (:mod:`mqlite._liveness`, shared with
queue groups): a crashed member is reaped within milliseconds, a hung one
after its ``session_timeout``.

By concern, each module opening with its contract:

* :mod:`~mqlite.groups.state`: the stored state (:class:`GroupState`,
  :class:`MemberState`), its codec and the transitions on it (rebalance,
  grant, remove, the state part of reaping), inside a caller's transaction;
* :mod:`~mqlite.groups.member`: :class:`GroupMember`, one consumer's
  membership (join, leave, ownership sync in ``poll()``, fenced commits,
  static members);
* :mod:`~mqlite.groups.watcher`: probing peers through the liveness service,
  reaping the dead and expired, the process's one group watcher thread;
* :mod:`~mqlite.groups.admin`: ``describe_group``, ``list_groups``,
  ``committed_offsets`` (read-only).

This package re-exports the names callers used from the former
``groups.py``, except the members-directory helpers and the at-fork registry
that only the queue imported from it: the queue now uses
:mod:`mqlite._liveness` itself.
"""

from mqlite._liveness import probe_alive as probe_alive
from mqlite.groups.admin import GroupDescription as GroupDescription
from mqlite.groups.admin import MemberInfo as MemberInfo
from mqlite.groups.admin import PartitionLag as PartitionLag
from mqlite.groups.admin import committed_offsets as committed_offsets
from mqlite.groups.admin import describe_group as describe_group
from mqlite.groups.admin import list_groups as list_groups
from mqlite.groups.admin import reset_offsets as reset_offsets
from mqlite.groups.admin import set_dead_letter_topic as set_dead_letter_topic
from mqlite.groups.member import _IDLE_WAIT as _IDLE_WAIT
from mqlite.groups.member import _PENDING_WAIT as _PENDING_WAIT
from mqlite.groups.member import GroupMember as GroupMember
from mqlite.groups.state import GroupState as GroupState
from mqlite.groups.state import MemberState as MemberState
from mqlite.groups.state import Verdicts as Verdicts
from mqlite.groups.state import apply_verdicts_to_state as apply_verdicts_to_state
from mqlite.groups.state import grant_free as grant_free
from mqlite.groups.state import load_group as load_group
from mqlite.groups.state import read_offset as read_offset
from mqlite.groups.state import rebalance as rebalance
from mqlite.groups.state import remove_member as remove_member
from mqlite.groups.state import store_group as store_group
from mqlite.groups.state import write_offset as write_offset
from mqlite.groups.watcher import _REAP_GRACE as _REAP_GRACE
from mqlite.groups.watcher import _WATCH_INTERVAL as _WATCH_INTERVAL
from mqlite.groups.watcher import apply_verdicts as apply_verdicts
from mqlite.groups.watcher import find_suspects as find_suspects
from mqlite.groups.watcher import member_status as member_status

__all__ = [
    "GroupDescription",
    "GroupMember",
    "MemberInfo",
    "PartitionLag",
    "describe_group",
    "list_groups",
]
