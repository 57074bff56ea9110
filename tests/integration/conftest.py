"""pytest reads this folder's fixtures here; they are written in ``_integration_fixtures.py``.

mypy checks every test folder in one run, where each module name must be unique (D61): a
second ``conftest`` would stop it, so this file only re-exports and is left out of the check.
"""

from _integration_fixtures import CoreProcs, broker_path, core_proc

__all__ = ["CoreProcs", "broker_path", "core_proc"]
