"""A run's history: `<output_dir>/trainer_state.json` (read by the summary and the plot), and how its values print."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any


def load_trainer_state(output_dir: str | Path) -> dict:
    """The parsed `<output_dir>/trainer_state.json` (FileNotFoundError naming the file when it is missing)."""
    state_file = Path(output_dir) / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file} not found: did the run finish?")
    return json.loads(state_file.read_text())


def format_value(value: Any, spec: str = ".4g", missing: str = "n/a") -> str:
    """A logged or configured value as text: `missing` for None, a float with `spec`, an enum by its value, anything
    else (integers included) as `str` gives it."""
    if value is None:
        return missing
    if isinstance(value, Enum):
        value = value.value
    return format(value, spec) if isinstance(value, float) else str(value)
