"""`trl-justrl report RUN_DIR [--eval EVAL_DIR] [--output PATH]`: one self-contained HTML page about a run beside
the paper (reporting/page.py draws it; this command gathers the run folder and an evaluation folder written by
`trl-justrl evaluate`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .evaluation.table import JUSTRL_TABLE, OPEN_RS_TABLE, ReferenceTable
from .reporting.history import load_trainer_state
from .reporting.page import EvaluationTable, RunRecord, render_page, score_with_interval
from .run_services.checkpoints import checkpoints
from .run_services.resume import SETTINGS_FILE, recorded_changes

DEFAULT_NAME = "report.html"
PAPER_RUN_ROW = "JustRL-DeepSeek-1.5B (4,380 steps)"  # the validation curve's marks and the default comparison


def read_run(folder: str | Path) -> RunRecord:
    """The run's log history: `trainer_state.json` of a finished run, else of its newest checkpoint (in progress);
    the training processes of its newest checkpoint; the settings changed at resumes. FileNotFoundError names the
    folder when it holds no log history."""
    folder = Path(folder)
    in_progress = not (folder / "trainer_state.json").is_file()
    source = folder
    if in_progress:
        source = next((p for p in checkpoints(folder) if (p / "trainer_state.json").is_file()), None)
        if source is None:
            raise FileNotFoundError(f"{folder} has no trainer_state.json and no checkpoint-N holding one: not a run "
                                    "folder, or no step has been saved yet.")
    history = load_trainer_state(source).get("log_history", [])
    settings = next((p / SETTINGS_FILE for p in checkpoints(folder) if (p / SETTINGS_FILE).is_file()), None)
    processes = json.loads(settings.read_text()).get("world_size") if settings is not None else None
    changes = recorded_changes(folder)
    return RunRecord(folder, history, source / "trainer_state.json", in_progress, processes,
                     changes if isinstance(changes, list) else [])


def read_evaluation(folder: str | Path) -> EvaluationTable:
    """The evaluation's row with each benchmark's interval (from `<benchmark>/grading.json`), beside the paper's
    table for its metric (avg@N: JustRL's; pass@1: Open-RS's). Errors name the file."""
    folder = Path(folder)
    results_file = folder / "results.json"
    if not results_file.is_file():
        raise FileNotFoundError(f"{results_file} not found: --eval takes the --output-dir of `trl-justrl evaluate`.")
    results = json.loads(results_file.read_text())
    table: ReferenceTable = OPEN_RS_TABLE if str(results.get("metric", "")).startswith("pass") else JUSTRL_TABLE
    scores = {}
    for benchmark, stats in results.get("benchmarks", {}).items():
        grading_file = folder / benchmark / "grading.json"
        if not grading_file.is_file():
            raise FileNotFoundError(f"{grading_file} not found: the evaluation of {benchmark} did not finish.")
        correct = json.loads(grading_file.read_text()).get("correct", {})
        rates = [sum(grades) / len(grades) for grades in correct.values() if grades]
        if not rates:
            raise ValueError(f"{grading_file} holds no graded samples.")
        scores[benchmark] = score_with_interval(rates, int(stats.get("samples_per_problem", 0)))
    compare_with = PAPER_RUN_ROW if table is JUSTRL_TABLE else next(reversed(table.rows))
    return EvaluationTable(table.title, str(results.get("model", folder.name)), table.columns, table.headers,
                           table.rows, table.averages, compare_with, scores, table.digits)


def write_report(run_dir: str | Path, eval_dir: str | Path | None = None, output: str | Path | None = None) -> Path:
    """Write the page (default `<run_dir>/report.html`); return its path."""
    run = read_run(run_dir)
    evaluation = read_evaluation(eval_dir) if eval_dir is not None else None
    paper = dict(zip(JUSTRL_TABLE.columns, JUSTRL_TABLE.rows[PAPER_RUN_ROW], strict=True))
    path = Path(output) if output is not None else Path(run_dir) / DEFAULT_NAME
    path.write_text(render_page(run, evaluation, paper), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None, prog: str = "trl-justrl report") -> int:
    parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False, description=(
        "Write one self-contained HTML page about a run (finished or in progress) beside the paper: training "
        "curves, validation, the evaluation table with intervals, compute, health alerts, resume changes."))
    parser.add_argument("run_dir", help="The run's output_dir.")
    parser.add_argument("--eval", dest="eval_dir", help="The --output-dir of `trl-justrl evaluate` for this model.")
    parser.add_argument("--output", help=f"Where to write the page (default: RUN_DIR/{DEFAULT_NAME}).")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run_dir, args.eval_dir, args.output)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
