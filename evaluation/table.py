"""The paper's results table in Markdown, with its reference rows beside a run's own."""

from __future__ import annotations

from collections.abc import Mapping

COLUMNS = ["AIME24", "AIME25", "AMC23", "MATH-500", "Minerva", "OlympiadBench", "HMMT25", "BRUMO25", "CMIMC25"]
HEADERS = ["AIME24", "AIME25", "AMC23", "MATH-500", "Minerva", "Olympiad", "HMMT25", "BRUMO25", "CMIMC25"]

# RECIPE.md, "Reported results to reproduce (avg@N, %)"
PAPER_ROWS: dict[str, list[float]] = {
    "DeepSeek-R1-Distill-Qwen-1.5B (base)": [29.90, 22.40, 63.82, 84.90, 34.65, 45.95, 13.44, 30.94, 12.89],
    "JustRL-DeepSeek-1.5B (4,380 steps)": [52.60, 38.75, 91.02, 91.65, 51.47, 67.99, 21.98, 52.71, 25.63],
    "OpenMath-Nemotron-1.5B (base)": [58.75, 48.44, 90.55, 92.40, 26.93, 71.70, 30.10, 61.67, 30.08],
    "JustRL-Nemotron-1.5B (3,440 steps)": [69.69, 62.92, 96.02, 94.15, 30.24, 76.59, 40.63, 66.88, 41.72],
}
PAPER_AVERAGES = {  # as printed in the paper (averages of the nine)
    "DeepSeek-R1-Distill-Qwen-1.5B (base)": 37.65,
    "JustRL-DeepSeek-1.5B (4,380 steps)": 54.87,
    "OpenMath-Nemotron-1.5B (base)": 56.74,
    "JustRL-Nemotron-1.5B (3,440 steps)": 64.32,
}


def _row(name: str, cells: list[str], avg: str) -> str:
    return "| " + " | ".join([name, *cells, avg]) + " |"


def render_table(model: str, results: Mapping[str, float], *, note: str = "") -> str:
    """A Markdown table: the paper's rows, then `model` with its avg@N per benchmark ('-' where not run)."""
    lines = [_row("model", HEADERS, "Avg"), "| " + " | ".join(["---"] * (len(HEADERS) + 2)) + " |"]
    for name, values in PAPER_ROWS.items():
        lines.append(_row(name, [f"{v:.2f}" for v in values], f"{PAPER_AVERAGES[name]:.2f}"))
    cells = [f"{results[c]:.2f}" if c in results else "-" for c in COLUMNS]
    done = [results[c] for c in COLUMNS if c in results]
    if len(done) == len(COLUMNS):
        avg = f"{sum(done) / len(done):.2f}"
    elif done:
        avg = f"{sum(done) / len(done):.2f} ({len(done)}/9)"
    else:
        avg = "-"
    lines.append(_row(f"**{model}**{note}", cells, avg))
    return "\n".join(lines)
