"""``python -m mqlite`` runs the command line (same as the ``mqlite`` script)."""

from mqlite.cli import main

raise SystemExit(main())
