"""A readable console: one compact line per logged training step instead of TRL's raw metric dictionaries.

The full metrics still go to every `report_to` integration and to `trainer_state.json`; only what is printed
changes. `launch/train.py` installs it (`console_log: compact`, the default); `console_log: trl` keeps TRL's output.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .budget import updates_per_generation
from .health import ACCURACY, ENTROPY, LENGTH, REWARD, mixed_groups


def _number(value: Any, spec: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, spec)
    return "n/a"


def clock(seconds: float) -> str:
    """Seconds as `42s`, `7m05s` or `3h07m` (days of training need hours, a demo needs seconds)."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def step_label(global_step: int, max_steps: int, updates_per_step: float) -> str:
    """`step 8/24 (training step 2/6)`: the optimizer step, and the training step (generation batch) it belongs to
    when one spans several updates: update k is in training step ceil(k / updates per step), exactly."""
    label = f"step {global_step}/{max_steps}"
    per = round(updates_per_step)
    if per > 1 and math.isclose(per, updates_per_step):
        label += f" (training step {-(-global_step // per)}/{-(-max_steps // per)})"
    return label


class CompactConsole(TrainerCallback):
    """Prints `step 8/24 (training step 2/6)  reward -0.250  acc 0.375  mixed groups 0.75  entropy 0.874  len 21.5
    4.1 s  elapsed 8m10s  eta 16m20s` for every log entry that carries a reward, a short line for evaluation entries,
    and the end-of-training line. The estimate to the end: the time per optimizer step so far, in this run (a
    resumed run counts from its resume), times the steps left."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream
        self._last = self._start = time.perf_counter()
        self._first_step = 0

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = self._start = time.perf_counter()
        self._first_step = state.global_step
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return control
        now = time.perf_counter()
        if REWARD in logs:
            step = step_label(state.global_step, state.max_steps, updates_per_generation(args))
            mixed = mixed_groups(logs)
            elapsed, done = now - self._start, state.global_step - self._first_step
            eta = f"  eta {clock(elapsed / done * (state.max_steps - state.global_step))}" if done > 0 else ""
            self._print(
                f"{step}  reward {_number(logs[REWARD], '+.3f')}  acc {_number(logs.get(ACCURACY), '.3f')}  "
                f"mixed groups {_number(mixed, '.2f')}  entropy {_number(logs.get(ENTROPY), '.3f')}  "
                f"len {_number(logs.get(LENGTH), '.1f')}  {now - self._last:.1f} s  elapsed {clock(elapsed)}{eta}"
            )
            self._last = now
        elif any(key.startswith("eval") for key in logs):
            shown = {k: v for k, v in logs.items() if k.startswith("eval") and isinstance(v, (int, float))}
            self._print(f"step {state.global_step} eval  " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()))
        elif "train_runtime" in logs:
            self._print(f"training done: {logs['train_runtime']:.0f} s, {state.global_step} optimizer steps")
        return control


def install_compact_console(trainer) -> None:
    """Replace the trainer's progress bar / printer (which print raw metric dicts) by CompactConsole."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(CompactConsole())
