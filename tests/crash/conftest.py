"""pytest reads this folder's fixtures here; they are written in ``_crash_fixtures.py``.

mypy checks every test folder in one run, where each module name must be unique (D61): a
second ``conftest`` would stop it, so this file only re-exports and is left out of the check.
"""

from _crash_fixtures import Children, children, shim

__all__ = ["Children", "children", "shim"]
