"""``python -m tunelab ...``: the same as the ``tunelab`` command."""

from .cli import main

raise SystemExit(main())
