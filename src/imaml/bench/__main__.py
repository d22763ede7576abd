"""``python -m imaml.bench memory|speed|accuracy``."""

from imaml.bench import main

raise SystemExit(main())
