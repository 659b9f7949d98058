"""A finished (or running) run's history: `<output_dir>/trainer_state.json`, read by the summary and the plot."""

from __future__ import annotations

import json
from pathlib import Path


def load_trainer_state(output_dir: str | Path) -> dict:
    """The parsed `<output_dir>/trainer_state.json` (FileNotFoundError naming the file when it is missing)."""
    state_file = Path(output_dir) / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file} not found: did the run finish?")
    return json.loads(state_file.read_text())
