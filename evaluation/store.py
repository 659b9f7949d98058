"""Files of an evaluation run: generations as append-only JSONL, grading and settings as atomically written JSON.

Resume rule: a problem counts as generated only when all of its N samples are in the file; a torn last line or a
partial problem (from a crash) is removed before generation continues, so nothing half-written is taken as done.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from trl_justrl.shared.sampling import Sample


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to a temporary file and rename it into place (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when the file is missing."""
    return json.loads(path.read_text()) if path.is_file() else None


class GenerationStore:
    """The generations JSONL file of one benchmark."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def load_complete(self, n: int) -> dict[str, list[Sample]]:
        """Problems with all `n` samples; rewrites the file without torn lines and partial problems."""
        if not self.path.is_file():
            return {}
        by_problem: dict[str, dict[int, Sample]] = defaultdict(dict)
        dirty = False
        with self.path.open() as f:
            for line in f:
                try:
                    sample = Sample(**json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    dirty = True  # a line cut short by a crash
                    continue
                by_problem[sample.problem_id][sample.sample_index] = sample
        complete = {
            pid: [samples[i] for i in range(n)]
            for pid, samples in by_problem.items()
            if all(i in samples for i in range(n))
        }
        if dirty or len(complete) != len(by_problem) or any(len(s) != n for s in by_problem.values()):
            self._rewrite([s for samples in complete.values() for s in samples])
        return complete

    def append(self, samples: list[Sample]) -> None:
        """Add one problem's samples and make them durable before returning."""
        with self.path.open("a") as f:
            f.write("".join(json.dumps(s.to_dict()) + "\n" for s in samples))
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self, samples: list[Sample]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(s.to_dict()) + "\n" for s in samples))
        os.replace(tmp, self.path)
