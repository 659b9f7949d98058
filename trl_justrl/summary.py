"""The end-of-run summary: first and last step of reward, accuracy, entropy and length, read from trainer_state.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# trainer_state.json keys (TRL's metrics, plus `accuracy` from the dapo_strict reward)
REWARD, ACCURACY, ENTROPY, LENGTH = "reward", "accuracy", "entropy", "completions/mean_length"


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

    @property
    def reward_rose(self) -> bool | None:
        a, b = self.first.get(REWARD), self.last.get(REWARD)
        return None if a is None or b is None else b > a


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_run(output_dir: str | Path) -> RunSummary:
    """Read `<output_dir>/trainer_state.json` and collect the summary numbers."""
    state_file = Path(output_dir) / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file} not found: did the run finish?")
    state = json.loads(state_file.read_text())
    history = state.get("log_history", [])
    rollouts = [h for h in history if REWARD in h]  # one entry per logged generation
    keys = (REWARD, ACCURACY, ENTROPY, LENGTH)
    first = {k: rollouts[0].get(k) for k in keys} if rollouts else dict.fromkeys(keys)
    last = {k: rollouts[-1].get(k) for k in keys} if rollouts else dict.fromkeys(keys)
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    return RunSummary(
        output_dir=str(output_dir),
        optimizer_steps=int(state.get("global_step", 0)),
        generation_steps=len(rollouts),
        first=first,
        last=last,
        mean_entropy=_mean([h[ENTROPY] for h in rollouts if h.get(ENTROPY) is not None]),
        mean_length=_mean([h[LENGTH] for h in rollouts if h.get(LENGTH) is not None]),
        train_runtime_s=runtime,
    )


def _fmt(value: float | None, spec: str = "+.3f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_summary(summary: RunSummary, wall_time_s: float | None = None) -> str:
    """A short human-readable report."""
    rose = {True: "yes", False: "no", None: "n/a"}[summary.reward_rose]
    lines = [
        "=" * 64,
        "JustRL run summary",
        f"  optimizer steps        {summary.optimizer_steps} ({summary.generation_steps} logged generation steps)",
        f"  mean reward            first {_fmt(summary.first[REWARD])}  ->  last {_fmt(summary.last[REWARD])}"
        f"   (rose: {rose})",
        f"  accuracy               first {_fmt(summary.first[ACCURACY], '.3f')}  ->  last "
        f"{_fmt(summary.last[ACCURACY], '.3f')}",
        f"  entropy                first {_fmt(summary.first[ENTROPY], '.3f')}  ->  last "
        f"{_fmt(summary.last[ENTROPY], '.3f')}   (mean {_fmt(summary.mean_entropy, '.3f')})",
        f"  completion length      first {_fmt(summary.first[LENGTH], '.1f')}  ->  last "
        f"{_fmt(summary.last[LENGTH], '.1f')} tokens   (mean {_fmt(summary.mean_length, '.1f')})",
        f"  training time          {_fmt(summary.train_runtime_s, '.0f')} s"
        + (f"   (wall time with loading: {wall_time_s:.0f} s)" if wall_time_s is not None else ""),
        f"  outputs                {summary.output_dir} (model, trainer_state.json with the full log history)",
        "=" * 64,
    ]
    return "\n".join(lines)
