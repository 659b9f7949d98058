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

from .budget import RL_STEP
from .health import ACCURACY, ENTROPY, FRAC_ZERO_STD, LENGTH, REWARD


def _number(value: Any, spec: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, spec)
    return "n/a"


class CompactConsole(TrainerCallback):
    """Prints `step 8/24 (training step 2/6)  reward -0.250  acc 0.375  mixed 0.75  entropy 0.874  len 21.5  4.1 s`
    for every log entry that carries a reward (the training step shown when it spans several optimizer updates), a
    short line for evaluation entries, and the end-of-training line."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream
        self._last = time.perf_counter()

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        if REWARD in logs:
            step = f"step {state.global_step}/{state.max_steps}"
            if logs.get(RL_STEP) is not None and state.max_steps:
                per_rl_step = state.global_step / logs[RL_STEP] if logs[RL_STEP] else 0
                total = state.max_steps / per_rl_step if per_rl_step else 0
                if per_rl_step > 1:  # several optimizer updates per generation batch (JustRL: 4)
                    step += f" (training step {logs[RL_STEP]:.0f}/{total:.0f})"
            mixed = None if logs.get(FRAC_ZERO_STD) is None else 1.0 - logs[FRAC_ZERO_STD]
            self._print(
                f"{step}  reward {_number(logs[REWARD], '+.3f')}  acc {_number(logs.get(ACCURACY), '.3f')}  "
                f"mixed groups {_number(mixed, '.2f')}  entropy {_number(logs.get(ENTROPY), '.3f')}  "
                f"len {_number(logs.get(LENGTH), '.1f')}  {now - self._last:.1f} s"
            )
            self._last = now
        elif any(key.startswith("eval") for key in logs):
            shown = {k: v for k, v in logs.items() if k.startswith("eval") and isinstance(v, (int, float))}
            self._print(f"step {state.global_step} eval  " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()))
        elif "train_runtime" in logs:
            self._print(f"training done: {logs['train_runtime']:.0f} s, {state.global_step} optimizer steps")


def install_compact_console(trainer) -> None:
    """Replace the trainer's progress bar / printer (which print raw metric dicts) by CompactConsole."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(CompactConsole())
