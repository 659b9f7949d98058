"""The end-of-run summary: first and last step of reward, accuracy, entropy and length, the tokens spent, the health
alerts, and (optionally) the dynamics plot, read from trainer_state.json."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .budget import PAPER_ESTIMATE, TOKENS_GENERATED, TOKENS_TRAINED
from .health import ACCURACY, ENTROPY, FRAC_ZERO_STD, LENGTH, REWARD, health_alerts, mixed_groups
from .history import format_value, load_trainer_state
from .plot import plot_dynamics

logger = logging.getLogger(__name__)

VLLM_PREFIX = "vllm/"  # the trainer's log of a vLLM server run (disk transport): seconds generating and syncing
# seconds generating and syncing inside training steps (validation's syncs are logged apart), syncs, the last's size
GENERATION_S, SYNC_S, SYNCS, SYNC_BYTES = (VLLM_PREFIX + k for k in ("generation_seconds", "weight_sync_seconds",
                                                                     "weight_syncs", "weight_sync_bytes"))


@dataclass
class RunSummary:
    """The numbers the demo reports."""

    output_dir: str
    optimizer_steps: int
    generation_steps: int
    first: dict[str, float | None]
    last: dict[str, float | None]
    mean_entropy: float | None
    mean_length: float | None
    train_runtime_s: float | None
    tokens_generated: int | None = None
    tokens_trained: int | None = None
    paper_estimate_tokens: int | None = None
    health_alerts: list[tuple[int, str]] = field(default_factory=list)  # (optimizer step, signature)
    dynamics_plot: str | None = None
    # with generation on a vLLM server: seconds generating and syncing weights in the training steps, and the rest of
    # the steps' time (the policy updates)
    time_split: dict[str, float] | None = None
    weight_syncs: int = 0
    weight_sync_bytes: int | None = None

    @property
    def reward_rose(self) -> bool | None:
        a, b = self.first.get(REWARD), self.last.get(REWARD)
        return None if a is None or b is None else b > a


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _total_step_time(history: list[dict]) -> float:
    """Seconds in training steps (generation, sync and update included): TRL logs `step_time` as the mean over the
    optimizer steps since its previous log entry."""
    total, previous = 0.0, 0
    for entry in history:
        if "step_time" in entry:
            total += entry["step_time"] * (entry["step"] - previous)
            previous = entry["step"]
    return total


def summarize_run(output_dir: str | Path, draw_plot: bool = False) -> RunSummary:
    """Read `<output_dir>/trainer_state.json` and collect the summary numbers; with `draw_plot`, also draw
    `<output_dir>/dynamics.png` (reporting.plot; a failure to draw is logged, not raised)."""
    state = load_trainer_state(output_dir)
    history = state.get("log_history", [])
    rollouts = [h for h in history if REWARD in h]  # one entry per logged generation
    keys = (REWARD, ACCURACY, ENTROPY, LENGTH, FRAC_ZERO_STD)
    first = {k: rollouts[0].get(k) for k in keys} if rollouts else dict.fromkeys(keys)
    last = {k: rollouts[-1].get(k) for k in keys} if rollouts else dict.fromkeys(keys)
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    budget = next((h for h in reversed(history) if TOKENS_GENERATED in h), {})
    alerts = health_alerts(history)
    synced = [h for h in history if h.get(SYNCS)]
    split = None
    if any(GENERATION_S in h for h in history):
        generation = sum(h.get(GENERATION_S, 0.0) for h in history)
        sync = sum(h.get(SYNC_S, 0.0) for h in history)
        steps = _total_step_time(history)
        split = {"generation": generation, "weight_sync": sync, "update": max(steps - generation - sync, 0.0)}
    plot = None
    if draw_plot:
        try:
            plot = str(plot_dynamics(output_dir))
        except Exception as error:  # the summary must not fail over the figure
            logger.warning("No dynamics plot: %s", error)
    return RunSummary(
        output_dir=str(output_dir),
        optimizer_steps=int(state.get("global_step", 0)),
        generation_steps=len(rollouts),
        first=first,
        last=last,
        mean_entropy=_mean([h[ENTROPY] for h in rollouts if h.get(ENTROPY) is not None]),
        mean_length=_mean([h[LENGTH] for h in rollouts if h.get(LENGTH) is not None]),
        train_runtime_s=runtime,
        tokens_generated=budget.get(TOKENS_GENERATED),
        tokens_trained=budget.get(TOKENS_TRAINED),
        paper_estimate_tokens=budget.get(PAPER_ESTIMATE),
        health_alerts=alerts,
        dynamics_plot=plot,
        time_split=split,
        weight_syncs=int(sum(h[SYNCS] for h in synced)),
        weight_sync_bytes=synced[-1].get(SYNC_BYTES) if synced else None,
    )


def _tokens(value: int | None) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def _time_split(summary: RunSummary) -> list[str]:
    """One line: where a vLLM-served run's step time went (none without a server)."""
    split = summary.time_split
    if split is None:
        return []
    size = f" of {summary.weight_sync_bytes / 1e6:.0f} MB" if summary.weight_sync_bytes else ""  # the last one's
    return [f"  time split (vLLM)      generation {split['generation']:.0f} s, weight syncs "
            f"{split['weight_sync']:.0f} s ({summary.weight_syncs} syncs{size}), policy updates "
            f"{split['update']:.0f} s"]


def format_summary(summary: RunSummary, wall_time_s: float | None = None) -> str:
    """A short human-readable report."""
    rose = {True: "yes", False: "no", None: "n/a"}[summary.reward_rose]
    alerts = ", ".join(f"{signature} (step {step})" for step, signature in summary.health_alerts) or "none"
    lines = [
        "=" * 64,
        "Run summary",
        f"  optimizer steps        {summary.optimizer_steps} ({summary.generation_steps} logged generation steps)",
        f"  mean reward            first {format_value(summary.first[REWARD], '+.3f')}  ->  last "
        f"{format_value(summary.last[REWARD], '+.3f')}"
        f"   (rose: {rose})",
        f"  accuracy               first {format_value(summary.first[ACCURACY], '.3f')}  ->  last "
        f"{format_value(summary.last[ACCURACY], '.3f')}",
        f"  groups, mixed outcomes first {format_value(mixed_groups(summary.first), '.2f')}  ->  last "
        f"{format_value(mixed_groups(summary.last), '.2f')}   "
        "(share of groups whose rewards differ: the learning signal)",
        f"  entropy                first {format_value(summary.first[ENTROPY], '.3f')}  ->  last "
        f"{format_value(summary.last[ENTROPY], '.3f')}   (mean {format_value(summary.mean_entropy, '.3f')})",
        f"  completion length      first {format_value(summary.first[LENGTH], '.1f')}  ->  last "
        f"{format_value(summary.last[LENGTH], '.1f')} tokens   (mean {format_value(summary.mean_length, '.1f')})",
        f"  training time          {format_value(summary.train_runtime_s, '.0f')} s"
        + (f"   (wall time with loading: {wall_time_s:.0f} s)" if wall_time_s is not None else ""),
        f"  tokens                 generated {_tokens(summary.tokens_generated)}, trained "
        f"{_tokens(summary.tokens_trained)}   (paper-style estimate for this run: "
        f"{_tokens(summary.paper_estimate_tokens)})",
        *_time_split(summary),
        f"  health alerts          {alerts}",
        f"  outputs                {summary.output_dir} (model, trainer_state.json with the full log history)",
    ]
    if summary.dynamics_plot:
        lines.append(f"  dynamics plot          {summary.dynamics_plot}")
    lines.append("=" * 64)
    return "\n".join(lines)
