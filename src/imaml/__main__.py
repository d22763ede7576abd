"""``python -m imaml``: the ``imaml`` command."""

from imaml.cli import main

raise SystemExit(main())
