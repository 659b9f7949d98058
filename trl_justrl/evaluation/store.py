"""Files of an evaluation run: generations as append-only JSONL, grading and settings as atomically written JSON.

Resume rule: a problem counts as generated only when all of its N samples are in the file; a torn line, a line that
is not UTF-8 or not a sample, and a partial problem (from a crash) are removed before generation continues, so
nothing half-written is taken as done. Removed lines are set aside in `<file>.rejected` and named (file and line
number) in a warning; their problems are generated again.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from .sampling import Sample

logger = logging.getLogger(__name__)


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
        rejected: list[tuple[int, bytes, str]] = []
        with self.path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    sample = Sample(**json.loads(raw.decode("utf-8")))
                except UnicodeDecodeError as err:
                    rejected.append((number, raw, f"not UTF-8 ({err.reason} at byte {err.start})"))
                    continue
                except (ValueError, TypeError) as err:  # cut short by a crash, or not a sample
                    rejected.append((number, raw, f"not a sample ({type(err).__name__})"))
                    continue
                by_problem[sample.problem_id][sample.sample_index] = sample
        dirty = bool(rejected)
        if rejected:
            with self.path.with_name(self.path.name + ".rejected").open("ab") as f:
                f.write(b"".join(raw if raw.endswith(b"\n") else raw + b"\n" for _, raw, _ in rejected))
            for number, _, why in rejected:
                logger.warning("%s, line %d: %s; set aside in %s.rejected, its problem is generated again.",
                               self.path, number, why, self.path.name)
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
