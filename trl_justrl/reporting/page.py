"""One self-contained HTML page about a run, beside the paper: `trl-justrl report RUN_DIR [--eval EVAL_DIR]`.

The page holds the training curves (the paper's healthy ranges marked), the validation score against steps (the
paper's final scores marked), the evaluation table beside the paper's rows with each difference and its 95%
confidence interval, the compute used, the health alerts and the settings changed at resumes. Figures are embedded
PNGs: the file opens from disk, with no server and nothing fetched. Every number a test may check carries
`data-key` (its place in the JSON it comes from).

This module draws from a log history and plain evaluation data (`RunRecord`, `EvaluationTable`); `trl_justrl.report`
reads them from the run and evaluation folders (a run in progress from its newest checkpoint).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budget import PAPER_ESTIMATE, RL_STEP, TOKENS_GENERATED, TOKENS_TRAINED
from .health import ACCURACY, CLIP_FRACTIONS, ENTROPY, LENGTH, REWARD, TRUNCATION, health_alerts
from .plot import PAPER_HEALTHY_ENTROPY, VALIDATION, dynamics_series, finite_number, updates_per_step

# RECIPE (the paper's Figure 2, JustRL-DeepSeek-1.5B): the mean response length falls from about 7-8K tokens to
# 4-5K by step 1,000; the mean reward rises from about -0.6 to +0.4
PAPER_SETTLED_LENGTH = (4000, 5000)
PAPER_REWARD_RANGE = (-0.6, 0.4)
CURVES = (  # (log keys, panel title, y label)
    ((REWARD,), "Mean reward", "reward"),
    ((ACCURACY,), "Accuracy (share correct)", "accuracy"),
    ((ENTROPY,), "Policy entropy", "nats / token"),
    ((LENGTH,), "Mean response length", "tokens"),
    ((TRUNCATION,), "Truncated responses", "share"),
    (CLIP_FRACTIONS, "Clipped tokens", "share"),
)
Z_95 = 1.959964  # two-sided 95% normal quantile


@dataclass
class RunRecord:
    """What a run folder says: its log history, where it was read, and the files beside it."""

    folder: Path
    history: list[dict[str, Any]]
    source: Path
    in_progress: bool
    processes: int | None = None
    resume_changes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunScore:
    """One benchmark's score of the evaluated model: mean over problems of each problem's correct share (%), its
    95% interval over problems, and the sizes behind it."""

    value: float
    low: float
    high: float
    problems: int
    samples: int


@dataclass
class EvaluationTable:
    """The paper's table and this evaluation's row (plain data: the evaluation layer builds it)."""

    title: str
    model: str
    columns: Sequence[str]
    headers: Sequence[str]
    rows: Mapping[str, Sequence[float]]  # the paper's reported rows (%)
    averages: Mapping[str, float]
    compare_with: str  # the paper row the differences are taken against
    scores: Mapping[str, RunScore]  # this evaluation, by column
    digits: int = 2


def score_with_interval(rates: Sequence[float], samples: int) -> RunScore:
    """The mean of per-problem correct shares (0-1) in %, with a normal 95% interval over problems (clipped to
    0-100; zero width for a single problem)."""
    n = len(rates)
    mean = sum(rates) / n
    spread = math.sqrt(sum((r - mean) ** 2 for r in rates) / (n - 1)) if n > 1 else 0.0
    half = Z_95 * spread / math.sqrt(n)
    return RunScore(100 * mean, 100 * max(0.0, mean - half), 100 * min(1.0, mean + half), n, samples)


# ---- reading the run's history ------------------------------------------------------------------------------


def last_value(history: Sequence[dict[str, Any]], key: str) -> tuple[int, Any] | None:
    """(step, value) of the last entry logging `key`."""
    for entry in reversed(history):
        if key in entry and entry[key] is not None:
            return int(entry.get("step", 0)), entry[key]
    return None


# ---- figures -----------------------------------------------------------------------------------------------------


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def training_figure(history: Sequence[dict[str, Any]]) -> Any:
    """Six panels of the training curves, the paper's healthy ranges shaded where it gives them."""
    from matplotlib.figure import Figure

    per_step = updates_per_step(history)
    factor, x_label = (per_step, "JustRL step") if per_step else (1.0, "optimizer step")
    figure = Figure(figsize=(13, 7), layout="constrained")
    for ax, (keys, title, y_label) in zip(figure.subplots(2, 3).flat, CURVES, strict=True):
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        drawn, highest = False, 0.0
        for key in keys:
            points = [(e["step"] / factor, e[key]) for e in history if finite_number(e.get(key)) and "step" in e]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.2,
                        label=key.split("/")[-1] if len(keys) > 1 else None)
                drawn, highest = True, max(highest, max(abs(y) for y in ys))
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        band = {ENTROPY: (PAPER_HEALTHY_ENTROPY, "paper: healthy {:.1f}-{:.1f}"),
                LENGTH: (PAPER_SETTLED_LENGTH, "paper: settles at {:,.0f}-{:,.0f}"),
                REWARD: (PAPER_REWARD_RANGE, "paper: rises {:+.1f} -> {:+.1f}")}.get(keys[0])
        if band is not None:
            (low, high), text = band
            if drawn and highest < low / 10:  # a short-answer run: shading the paper's range would flatten its curve
                ax.text(0.98, 0.95, text.format(low, high) + " (off this scale)", ha="right", va="top",
                        fontsize="small", color="tab:green", transform=ax.transAxes)
            else:
                ax.axhspan(low, high, color="tab:green", alpha=0.12, label=text.format(low, high))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    return figure


def validation_figure(history: Sequence[dict[str, Any]], paper_scores: Mapping[str, float]) -> Any | None:
    """The validation score against steps, the paper's final score of each benchmark dashed; None without
    validation."""
    x_label, series = dynamics_series(history)
    keys = sorted(key for key in series if VALIDATION.match(key))
    if not keys:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), layout="constrained")
    ax = figure.subplots()
    for index, key in enumerate(keys):
        match = VALIDATION.match(key)
        xs, ys = series[key]
        color = f"C{index}"
        ax.plot(xs, ys, marker="o", markersize=3, color=color, label=f"{match['benchmark']} mean@{match['n']}")
        if match["benchmark"] in paper_scores:
            ax.axhline(paper_scores[match["benchmark"]], color=color, linestyle="--", linewidth=1,
                       label=f"paper's final {match['benchmark']}: {paper_scores[match['benchmark']]:.2f}")
    ax.set_title("Validation score (the paper's Figure 1)")
    ax.set_xlabel(x_label)
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return figure


# ---- the page ----------------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.run { font-weight: bold; background: #eef6ee; }
img { max-width: 100%; } .note { color: #666; font-size: 0.9em; }
"""
# after load: how many figures decoded, so a headless browser's DOM dump tells whether each one loaded
CHECK_FIGURES = """
window.addEventListener("load", () => {
  const figures = Array.from(document.querySelectorAll("img.figure"));
  const loaded = figures.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.figuresLoaded = `${loaded}/${figures.length}`;
});
"""


def _number(value: Any, key: str, spec: str = ",.4g") -> str:
    if value is None:
        return '<td class="num">-</td>'
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = str(value)
    elif float(value).is_integer() and abs(value) < 1e15:
        shown = f"{int(value):,}"  # token counts: 26,576, not 2.658e+04
    else:
        shown = format(value, spec)
    return (f'<td class="num" data-key="{html.escape(key)}" data-value="{html.escape(json.dumps(value))}">'
            f"{html.escape(shown)}</td>")


def _figure(figure: Any, alt: str) -> str:
    return f'<p><img class="figure" alt="{html.escape(alt)}" src="data:image/png;base64,{_png(figure)}"></p>'


def _compute(run: RunRecord) -> str:
    rows = []
    for label, key in (("tokens generated", TOKENS_GENERATED), ("tokens trained", TOKENS_TRAINED),
                       ("the paper's budget formula (steps x prompts x rollouts x context)", PAPER_ESTIMATE),
                       ("JustRL steps", RL_STEP), ("train runtime (s)", "train_runtime")):
        found = last_value(run.history, key)
        rows.append(f"<tr><td>{label}</td>{_number(None if found is None else found[1], f'history.{key}')}</tr>")
    runtime = last_value(run.history, "train_runtime")
    if runtime is not None and run.processes:
        hours = runtime[1] * run.processes / 3600
        rows.append(f"<tr><td>device-hours ({run.processes} training processes x runtime)</td>"
                    f"{_number(round(hours, 4), 'derived.device_hours')}</tr>")
    return "<h2>Compute used</h2><table>" + "".join(rows) + "</table>"


def _evaluation(table: EvaluationTable) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    lines = [f"<h2>Evaluation: {html.escape(table.title)}</h2>",
             f'<table id="evaluation"><tr><th>model</th>{head}<th>Avg</th></tr>']
    for name, values in table.rows.items():
        cells = "".join(f'<td class="num">{v:.{table.digits}f}</td>' for v in values)
        lines.append(f"<tr><td>{html.escape(name)}</td>{cells}<td class=\"num\">"
                     f"{table.averages[name]:.{table.digits}f}</td></tr>")
    cells = "".join(_number(round(table.scores[c].value, 2), f"eval.{c}.value", ".2f") if c in table.scores
                    else '<td class="num">-</td>' for c in table.columns)
    done = [table.scores[c].value for c in table.columns if c in table.scores]
    average = f"{sum(done) / len(done):.2f}" + ("" if len(done) == len(table.columns) else
                                                  f" ({len(done)}/{len(table.columns)})") if done else "-"
    lines.append(f'<tr class="run"><td>{html.escape(table.model)}</td>{cells}<td class="num">{average}</td></tr>')
    reference = table.rows[table.compare_with]
    lines.append("</table>")
    lines.append(f"<h3>Against {html.escape(table.compare_with)}</h3>"
                 "<table><tr><th>benchmark</th><th>this run</th><th>95% interval</th><th>paper</th>"
                 "<th>difference</th><th>problems x samples</th></tr>")
    for column, header, paper in zip(table.columns, table.headers, reference, strict=True):
        if column not in table.scores:
            continue
        score = table.scores[column]
        inside = score.low <= paper <= score.high
        lines.append(
            f"<tr><td>{html.escape(header)}</td>{_number(round(score.value, 2), f'eval.{column}.value', '.2f')}"
            f'<td class="num">{score.low:.2f} - {score.high:.2f}</td><td class="num">{paper:.{table.digits}f}</td>'
            f"{_number(round(score.value - paper, 2), f'eval.{column}.difference', '+.2f')}"
            f"<td>{score.problems} x {score.samples}{'' if not inside else ' (the paper is inside the interval)'}"
            "</td></tr>")
    lines.append("</table><p class=\"note\">Interval: mean of each problem's correct share, plus or minus 1.96 "
                 "standard errors over problems (the samples of one problem are not independent draws).</p>")
    return "\n".join(lines)


def render_page(run: RunRecord, evaluation: EvaluationTable | None = None,
                paper_scores: Mapping[str, float] | None = None) -> str:
    """The whole page as one HTML string."""
    title = f"trl-justrl report: {run.folder.resolve().name}"
    state = (f"in progress: as of {run.source.parent.name}" if run.in_progress else "finished") + (
        f", read from {run.source}")
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style><script>{CHECK_FIGURES}</script></head><body>",
             f"<h1>{html.escape(title)}</h1><p class=\"note\">{html.escape(state)}</p>"]
    steps = last_value(run.history, RL_STEP)
    parts.append("<h2>Training curves</h2>")
    if not any(key in entry for entry in run.history for keys, _, _ in CURVES for key in keys):
        parts.append("<p>No training metric logged yet.</p>")
    else:
        parts.append(_figure(training_figure(run.history), "training curves"))
    validation = validation_figure(run.history, paper_scores or {})
    if validation is not None:
        parts.append("<h2>Validation</h2>" + _figure(validation, "validation score against steps"))
    if evaluation is not None:
        parts.append(_evaluation(evaluation))
    parts.append(_compute(run))
    alerts = health_alerts(run.history)
    parts.append("<h2>Health alerts</h2>" + ("<ul>" + "".join(
        f'<li data-key="alert">step {step}: {html.escape(signature)}</li>' for step, signature in alerts) + "</ul>"
        if alerts else "<p>none</p>"))
    parts.append("<h2>Settings changed at resumes</h2>" + ("<ul>" + "".join(
        f"<li>at update {html.escape(str(change.get('resumed_at_step')))}: "
        f"{html.escape('; '.join(map(str, change.get('changes', []))))}</li>" for change in run.resume_changes)
        + "</ul>" if run.resume_changes else "<p>none</p>"))
    if steps is not None:
        parts.append(f"<p class=\"note\">{steps[1]:g} JustRL steps logged.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
