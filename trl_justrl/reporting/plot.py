"""Training dynamics in the style of the paper's Figure 2 (plus its Figure 1 validation panel when logged), from a
run's trainer_state.json: `python -m trl_justrl.reporting.plot <output_dir> [--output PATH]`.

The x axis is the JustRL step (one generation batch), from `budget/rl_step`; without it, the optimizer step.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .budget import RL_STEP
from .health import ENTROPY, LENGTH, REWARD
from .history import load_trainer_state

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (log key, panel title, y label): TRL's metric names
PANELS = (
    (ENTROPY, "Policy entropy", "entropy (nats / token)"),
    (REWARD, "Mean reward", "mean reward"),
    (LENGTH, "Mean response length", "tokens"),
)
# ValidationCallback's keys: eval/<benchmark>/mean@<n> (avg@<n> in logs of earlier versions)
VALIDATION = re.compile(r"^eval/(?P<benchmark>.+)/(?P<metric>mean|avg)@(?P<n>\d+)$")
PAPER_HEALTHY_ENTROPY = (1.0, 1.6)  # RECIPE: healthy JustRL-DeepSeek-1.5B entropy ranges 1.0-1.6 (Figure 2)
DEFAULT_NAME = "dynamics.png"


def finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def updates_per_step(history: Sequence[dict]) -> float | None:
    """Optimizer updates per JustRL step, from an entry logging both `step` and `budget/rl_step` (None without)."""
    for entry in history:
        step, rl_step = entry.get("step"), entry.get(RL_STEP)
        if finite_number(step) and finite_number(rl_step) and step > 0 and rl_step > 0:
            return step / rl_step
    return None


def dynamics_series(history: Sequence[dict]) -> tuple[str, dict[str, tuple[list[float], list[float]]]]:
    """The x-axis label and, per plotted key (panel metrics and validation keys), its (x, y) points."""
    factor = updates_per_step(history)
    if factor:
        x_label = f"JustRL step ({factor:g} optimizer updates each)"
    else:
        factor, x_label = 1.0, "optimizer step"
    wanted = [key for key, _, _ in PANELS]
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in history:
        step = entry.get("step")
        if not finite_number(step):
            continue
        for key, value in entry.items():
            if (key in wanted or VALIDATION.match(key)) and finite_number(value):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(step / factor)
                ys.append(float(value))
    return x_label, series


def make_figure(output_dir: str | Path) -> Figure:
    """The dynamics figure of `<output_dir>/trainer_state.json`: three panels, four with validation accuracy.

    FileNotFoundError names the missing file; ValueError names a file without any of the panels' metrics.
    """
    state_file = Path(output_dir) / "trainer_state.json"
    history = load_trainer_state(output_dir).get("log_history", [])
    x_label, series = dynamics_series(history)
    if not any(key in series for key, _, _ in PANELS):
        raise ValueError(
            f"{state_file} has no training metrics to plot: none of {', '.join(k for k, _, _ in PANELS)} in its "
            "log history (is it a GRPO / JustRL run that logged at least one step?)."
        )
    validation = sorted(key for key in series if VALIDATION.match(key))

    panels = len(PANELS) + bool(validation)
    from matplotlib.figure import Figure  # here, not at the top: every training process imports this module

    figure = Figure(figsize=(4.2 * panels, 3.6), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for ax, (key, title, y_label) in zip(axes, PANELS, strict=False):
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        if key not in series:
            ax.text(0.5, 0.5, f"{key}\nnot logged", ha="center", va="center", transform=ax.transAxes)
            continue
        xs, ys = series[key]
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.2)
        if key == "entropy":
            low, high = PAPER_HEALTHY_ENTROPY
            ax.axhspan(low, high, color="tab:green", alpha=0.12, label=f"paper: healthy {low:.1f}-{high:.1f}")
            ax.legend(loc="best", fontsize="small")
    if validation:
        ax = axes[-1]
        ax.set_title("Validation score (the paper's Figure 1)")
        ax.set_xlabel(x_label)
        ax.set_ylabel("mean@n (%)")
        ax.grid(alpha=0.3)
        for key in validation:
            match = VALIDATION.match(key)
            xs, ys = series[key]
            ax.plot(xs, ys, marker="o", markersize=3, label=f"{match['benchmark']} {match['metric']}@{match['n']}")
        ax.legend(loc="best", fontsize="small")
    figure.suptitle(f"Training dynamics: {Path(output_dir).resolve().name}")
    return figure


def plot_dynamics(output_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw the figure of `output_dir` to `output` (default `<output_dir>/dynamics.png`); return the path."""
    path = Path(output) if output is not None else Path(output_dir) / DEFAULT_NAME
    figure = make_figure(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def main(argv: Sequence[str] | None = None, prog: str = "python -m trl_justrl.reporting.plot") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Draw a run's training dynamics (entropy, reward, response length, validation accuracy) "
        "from its trainer_state.json.",
    )
    parser.add_argument("output_dir", help="The run's output folder (holding trainer_state.json).")
    parser.add_argument("--output", default=None, help=f"PNG to write (default: <output_dir>/{DEFAULT_NAME}).")
    args = parser.parse_args(argv)
    try:
        path = plot_dynamics(args.output_dir, args.output)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
