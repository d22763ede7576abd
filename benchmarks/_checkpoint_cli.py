"""What the benchmarks that study one trained checkpoint share: arguments and table rows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import add_data_dir


def checkpoint_parser(doc: str, *, tasks: int, split: str) -> argparse.ArgumentParser:
    """A parser for ``CHECKPOINT [--tasks N] [--split S] [--seed K] [--set KEY=VALUE ...]
    [--data-dir DIR] [--cache-dir DIR] [--json]``, described by ``doc``'s first paragraph."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file or a run directory")
    parser.add_argument("--tasks", type=int, default=tasks)
    parser.add_argument("--split", default=split)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    add_data_dir(parser)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    return parser


def print_header(key: str, columns: tuple[str, ...]) -> None:
    """The column titles of the table :func:`print_row` fills: ``key`` and ``columns``."""
    print(f"{key:>6} " + " ".join(f"{c:>10}" for c in columns))


def print_row(row: dict[str, Any], as_json: bool) -> None:
    """``row`` as one JSON object, or as a table row: its first value (an int) in a column of
    6, the others (floats) in columns of 10 with 4 decimals."""
    if as_json:
        print(json.dumps(row), flush=True)
        return
    first, *values = row.values()
    print(f"{first:6d} " + " ".join(f"{v:10.4f}" for v in values), flush=True)
