"""Errors in the data a user gives (training rows, ground truths, benchmark files), and how they name a row: the
file, the row as the user would find it, and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class DataError(ValueError):
    """A data problem, with the source, row and field it concerns."""


def row_namer(source: str) -> Callable[[int], str]:
    """How errors name the row at a 0-based index of `source`: `file.jsonl: line 5` (the 1-based line in the file,
    blank lines counted), `file.json: element 5 of the JSON array` / `file.parquet: row 5 (counted from 1)` where the
    file has no line per row, `name: dataset[4]` for a Hub or built-in data set (as Python indexes it)."""
    file = Path(source)
    if not file.is_file():
        return lambda index: f"{source}: dataset[{index}]"
    if file.suffix == ".parquet":
        return lambda index: f"{source}: row {index + 1} (counted from 1)"
    with file.open("rb") as f:
        raw = f.read()
    if raw.lstrip()[:1] == b"[":
        return lambda index: f"{source}: element {index + 1} of the JSON array"
    lines = [number for number, line in enumerate(raw.splitlines(), start=1) if line.strip()]
    return lambda index: f"{source}: line {lines[index] if index < len(lines) else index + 1}"
