"""The papers' results tables in Markdown, with their reference rows beside a run's own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceTable:
    """A paper's table: benchmark columns (names as in `BENCHMARKS`), their headers, and the reported rows (%)."""

    title: str
    columns: tuple[str, ...]
    headers: tuple[str, ...]
    rows: Mapping[str, tuple[float, ...]]
    averages: Mapping[str, float]  # as printed in the paper
    digits: int = 2  # as printed in the paper


JUSTRL_TABLE = ReferenceTable(  # the JustRL paper's table (docs/recipe.md, "Evaluation")
    title="JustRL (avg@N)",
    columns=("AIME24", "AIME25", "AMC23", "MATH-500", "Minerva", "OlympiadBench", "HMMT25", "BRUMO25", "CMIMC25"),
    headers=("AIME24", "AIME25", "AMC23", "MATH-500", "Minerva", "Olympiad", "HMMT25", "BRUMO25", "CMIMC25"),
    rows={
        "DeepSeek-R1-Distill-Qwen-1.5B (base)": (29.90, 22.40, 63.82, 84.90, 34.65, 45.95, 13.44, 30.94, 12.89),
        "JustRL-DeepSeek-1.5B (4,380 steps)": (52.60, 38.75, 91.02, 91.65, 51.47, 67.99, 21.98, 52.71, 25.63),
        "OpenMath-Nemotron-1.5B (base)": (58.75, 48.44, 90.55, 92.40, 26.93, 71.70, 30.10, 61.67, 30.08),
        "JustRL-Nemotron-1.5B (3,440 steps)": (69.69, 62.92, 96.02, 94.15, 30.24, 76.59, 40.63, 66.88, 41.72),
    },
    averages={
        "DeepSeek-R1-Distill-Qwen-1.5B (base)": 37.65,
        "JustRL-DeepSeek-1.5B (4,380 steps)": 54.87,
        "OpenMath-Nemotron-1.5B (base)": 56.74,
        "JustRL-Nemotron-1.5B (3,440 steps)": 64.32,
    },
)

OPEN_RS_TABLE = ReferenceTable(  # the Open-RS paper's table (docs/recipe.md, "Open-RS"; zero-shot pass@1, %)
    title="Open-RS (pass@1)",
    columns=("AIME24", "MATH-500", "AMC23", "Minerva", "OlympiadBench"),
    headers=("AIME24", "MATH-500", "AMC23", "Minerva", "OlympiadBench"),
    rows={
        "DeepSeek-R1-Distill-Qwen-1.5B": (28.8, 82.8, 62.9, 26.5, 43.3),
        "DeepScaleR-1.5B-Preview": (43.1, 87.8, 73.6, 30.2, 50.0),
        "Open-RS1 (100 steps)": (30.0, 83.8, 70.0, 29.0, 52.4),
        "Open-RS2 (50 steps)": (30.0, 85.4, 80.0, 30.5, 52.4),
        "Open-RS3 (50 steps)": (46.7, 84.4, 72.5, 26.8, 51.3),
    },
    averages={
        "DeepSeek-R1-Distill-Qwen-1.5B": 48.9,
        "DeepScaleR-1.5B-Preview": 57.0,
        "Open-RS1 (100 steps)": 53.0,
        "Open-RS2 (50 steps)": 55.7,
        "Open-RS3 (50 steps)": 56.3,
    },
    digits=1,
)

# The JustRL table's columns and headers under their former names.
COLUMNS = list(JUSTRL_TABLE.columns)
HEADERS = list(JUSTRL_TABLE.headers)


def _row(name: str, cells: list[str], avg: str) -> str:
    return "| " + " | ".join([name, *cells, avg]) + " |"


def render_table(
    model: str, results: Mapping[str, float], *, note: str = "", table: ReferenceTable = JUSTRL_TABLE
) -> str:
    """A Markdown table: the paper's rows, then `model` with its score per benchmark ('-' where not run)."""
    columns = list(table.columns)
    lines = [_row("model", list(table.headers), "Avg"), "| " + " | ".join(["---"] * (len(columns) + 2)) + " |"]
    for name, values in table.rows.items():
        cells = [f"{v:.{table.digits}f}" for v in values]
        lines.append(_row(name, cells, f"{table.averages[name]:.{table.digits}f}"))
    cells = [f"{results[c]:.2f}" if c in results else "-" for c in columns]
    done = [results[c] for c in columns if c in results]
    if len(done) == len(columns):
        avg = f"{sum(done) / len(done):.2f}"
    elif done:
        avg = f"{sum(done) / len(done):.2f} ({len(done)}/{len(columns)})"
    else:
        avg = "-"
    lines.append(_row(f"**{model}**{note}", cells, avg))
    return "\n".join(lines)
