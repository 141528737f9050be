"""Reading documents and events from JSON Lines or CSV files, for `es-interest ingest`."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class InvalidLine(ValueError):
    """A line of the input file that is not a JSON object."""


def read_records(path: Path) -> Iterator[dict[str, Any] | InvalidLine]:
    """Records from ``.csv`` (header row; empty cells are absent) or JSON Lines (anything else).

    A line that cannot be parsed is yielded as an :class:`InvalidLine` so the caller can report
    it and carry on with the rest.
    """
    with open(path, newline="", encoding="utf-8") as fh:
        if path.suffix.lower() == ".csv":
            for row in csv.DictReader(fh):
                yield {k: v for k, v in row.items() if k and v not in (None, "")}
            return
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield InvalidLine(f"line {number}: not JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                yield InvalidLine(f"line {number}: not a JSON object")
                continue
            yield record


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        total = sum(1 for _ in fh)
    return total - 1 if path.suffix.lower() == ".csv" else total
