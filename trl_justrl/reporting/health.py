"""Training-health monitor: a TrainerCallback that warns on the failure signatures of JustRL runs as they train.

Signatures (docs/recipe-science.md): entropy collapse, a flat reward, no reward at all (every reward function
returned None), high truncation, high clip fractions, non-finite values. Each warns once per episode: it re-arms only
after a logged value where its condition no longer holds. Every process sees the same (already reduced) logs, so all
take the same decision (to stop, if asked).
"""

from __future__ import annotations

import logging
import math
import sys
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainerCallback

from .history import format_value

logger = logging.getLogger(__name__)

# The logged keys the monitor reads (TRL's and JustRLTrainer's metric names).
ENTROPY = "entropy"
REWARD = "reward"
LENGTH = "completions/mean_length"
ACCURACY = "accuracy"  # logged by the dapo_strict and robust_math rewards (0/1 per completion), beside the +-1 reward
FRAC_ZERO_STD = "frac_reward_zero_std"  # TRL: share of groups whose rewards are all equal (no learning signal)
TRUNCATION = "completions/clipped_ratio"
CLIP_FRACTIONS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/dual_mean")
LOSS, GRAD_NORM = "loss", "grad_norm"
WATCHED = (LOSS, GRAD_NORM, ENTROPY, REWARD, LENGTH, TRUNCATION, *CLIP_FRACTIONS)

SIGNATURES = ("entropy_collapse", "reward_flat", "no_reward", "truncation_high", "clip_fraction_high", "non_finite")
HISTORY_PREFIX = "health/"  # log-history key of a fired alert: health/<signature>
TRACKERS_WITH_ALERTS = ("wandb", "trackio")


@dataclass(frozen=True)
class HealthAlert:
    """One fired alert: the optimizer step of the log entry that triggered it, the signature, and a message."""

    step: int
    signature: str
    message: str


@dataclass
class HealthMonitorSettings:
    """The health monitor's settings (the run configs inherit these fields; both trainers add the monitor when
    `health_monitor` is on). "Logged steps" count the log entries that carry the metric (one per JustRL step with the
    recipes' logging_steps = updates per step)."""

    health_monitor: bool = field(
        default=True,  # project's choice: watch every run
        metadata={"help": "Watch entropy, reward, truncation, clip fractions and non-finite loss / grad norm, and "
                  "warn (log line, wandb / trackio alert) on the paper's failure signatures."},
    )
    health_stop_training: bool = field(
        default=False,  # project's choice: warn only
        metadata={"help": "Stop training when a health alert fires (otherwise only warn)."},
    )
    health_entropy_floor: float = field(
        # RECIPE: healthy entropy oscillates around 1.2-1.4 (range 1.0-1.6); the failed ablations collapse to
        # 0.5-0.6. The floor 0.8, halfway between 0.6 and 1.0, is the project's choice.
        default=0.8,
        metadata={"help": "Entropy-collapse alert: policy entropy under this for health_patience logged steps."},
    )
    health_patience: int = field(
        default=5,  # project's choice
        metadata={"help": "Consecutive logged steps a threshold must be crossed (entropy floor, truncation and clip "
                  "bounds) before the alert fires."},
    )
    health_reward_flat_window: int = field(
        default=20,  # project's choice (RECIPE: the healthy reward is noisy but has no long plateaus)
        metadata={"help": "Flat-reward alert: number of consecutive logged mean rewards looked at."},
    )
    health_reward_flat_tolerance: float = field(
        default=0.02,  # project's choice: under the step-to-step noise of a 2,048-rollout mean of +-1 rewards
        metadata={"help": "Flat-reward alert: fires when max - min of the last health_reward_flat_window logged "
                  "mean rewards is at most this (a stuck reward, e.g. all -1 or all +1: zero advantages)."},
    )
    health_max_truncation_ratio: float = field(
        default=0.2,  # project's choice (the paper gives no number; its lengths settle at 4-5K of a 15,360 cap)
        metadata={"help": "Truncation alert: fraction of completions cut at max_completion_length (TRL's "
                  "completions/clipped_ratio) above this for health_patience logged steps."},
    )
    health_max_clip_fraction: float = field(
        default=0.1,  # project's choice (the paper gives no number)
        metadata={"help": "Clip alert: a clip fraction (clip_ratio/low_mean, high_mean, dual_mean) above this for "
                  "health_patience logged steps."},
    )

    def check_health_settings(self) -> None:
        """Range checks of the thresholds, each error naming its setting."""
        if self.health_patience < 1:
            raise ValueError(f"health_patience must be at least 1, got {self.health_patience}.")
        if self.health_reward_flat_window < 2:
            raise ValueError(f"health_reward_flat_window must be at least 2, got {self.health_reward_flat_window}.")
        if self.health_reward_flat_tolerance < 0:
            raise ValueError(
                f"health_reward_flat_tolerance must not be negative, got {self.health_reward_flat_tolerance}.")
        for name in ("health_max_truncation_ratio", "health_max_clip_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a fraction in [0, 1], got {getattr(self, name)}.")



def health_alerts(history: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(optimizer step, signature) of each alert a log history records (`health/<signature>` flags)."""
    return [(int(entry.get("step", 0)), key.removeprefix(HISTORY_PREFIX))
            for entry in history for key in entry if key.startswith(HISTORY_PREFIX)]


def _number(logs: dict[str, Any], key: str) -> float | None:
    """A logged value as a float; None when absent or not a number (TRL logs None for all-NaN metrics)."""
    value = logs.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def mixed_groups(entry: dict[str, Any]) -> float | None:
    """The share of groups whose rewards differ (the learning signal): 1 - TRL's frac_reward_zero_std. None when it
    is not logged, or when the step has no reward (TRL's std of all-None rewards is NaN, not 0, so its
    frac_reward_zero_std reads 0 and would call every group mixed)."""
    zero_std, reward = _number(entry, FRAC_ZERO_STD), _number(entry, REWARD)
    if zero_std is None or reward is None or not math.isfinite(reward):
        return None
    return 1.0 - zero_std


class HealthMonitor(TrainerCallback):
    """Warn (and optionally stop training) on the JustRL failure signatures; see the module docstring."""

    def __init__(self, settings: HealthMonitorSettings):
        settings.check_health_settings()
        self.settings = settings
        self.stop_training = settings.health_stop_training
        self.reset()

    @classmethod
    def from_config(cls, args: Any) -> HealthMonitor:
        """The monitor of a run's config (a copy of its `health_*` settings)."""
        return cls(HealthMonitorSettings(**{f.name: getattr(args, f.name) for f in fields(HealthMonitorSettings)}))

    def reset(self) -> None:
        self.alerts: list[HealthAlert] = []
        self._streak = dict.fromkeys(("entropy_collapse", "truncation_high", "clip_fraction_high"), 0)
        self._rewards: deque[float] = deque(maxlen=self.settings.health_reward_flat_window)
        self._active: set[str] = set()  # signatures in an episode that has already been warned about

    # ---- the checks (pure: no logging, no side effects beyond the monitor's own state) ------------------------

    def observe(self, logs: dict[str, Any], step: int) -> list[HealthAlert]:
        """Update the episode state with one log entry; return the alerts that fire on it."""
        t = self.settings
        fired: list[HealthAlert] = []
        values = {key: _number(logs, key) for key in WATCHED}
        finite = {key: v for key, v in values.items() if v is not None and math.isfinite(v)}
        bad = {key: v for key, v in values.items() if v is not None and not math.isfinite(v)}

        any_value = any(v is not None for v in values.values())
        self._episode(fired, step, "non_finite", bool(bad) if any_value else None,
                      "non-finite " + ", ".join(f"{k} = {v}" for k, v in bad.items()))

        entropy = finite.get(ENTROPY)
        self._episode(
            fired, step, "entropy_collapse",
            self._sustained("entropy_collapse", None if entropy is None else entropy < t.health_entropy_floor),
            f"policy entropy {format_value(entropy)} under the floor {t.health_entropy_floor} for {t.health_patience} "
            "consecutive logged steps (the paper: healthy 1.0-1.6, collapsed 0.5-0.6)",
        )

        truncation = finite.get(TRUNCATION)
        self._episode(
            fired, step, "truncation_high",
            self._sustained("truncation_high",
                            None if truncation is None else truncation > t.health_max_truncation_ratio),
            f"{format_value(truncation)} of the completions truncated at max_completion_length (bound "
            f"{t.health_max_truncation_ratio}) for {t.health_patience} consecutive logged steps; mean response length "
            f"{format_value(finite.get(LENGTH))} tokens",
        )

        clips = {key: finite[key] for key in CLIP_FRACTIONS if key in finite}
        worst = max(clips, key=clips.get) if clips else None
        self._episode(
            fired, step, "clip_fraction_high",
            self._sustained("clip_fraction_high",
                            None if worst is None else clips[worst] > t.health_max_clip_fraction),
            f"{worst} = {format_value(clips.get(worst))} above {t.health_max_clip_fraction} for {t.health_patience} "
            "consecutive logged steps: the policy moves too far per update",
        )

        if REWARD in logs:  # logged, but None or NaN: no completion got any reward
            self._episode(
                fired, step, "no_reward", values[REWARD] is None or REWARD in bad,
                f"no reward: the mean reward is {logs[REWARD]}, every reward function returned None for every "
                "completion (rewards/<name>/mean says which); advantages, loss and gradient are 0 and nothing is "
                "learned",
            )
        reward = finite.get(REWARD)
        if reward is not None:
            self._rewards.append(reward)
            spread = max(self._rewards) - min(self._rewards)
            self._episode(
                fired, step, "reward_flat",
                len(self._rewards) == t.health_reward_flat_window and spread <= t.health_reward_flat_tolerance,
                f"mean reward flat for {t.health_reward_flat_window} logged steps: range {spread:.4g} <= "
                f"{t.health_reward_flat_tolerance} (last {reward:+.4f})",
            )
        return fired

    def _sustained(self, signature: str, crossed: bool | None) -> bool | None:
        """Count consecutive crossings; True once `patience` in a row (None: the metric is not in this entry)."""
        if crossed is None:
            return None
        self._streak[signature] = self._streak[signature] + 1 if crossed else 0
        return self._streak[signature] >= self.settings.health_patience

    def _episode(self, fired: list[HealthAlert], step: int, signature: str, holds: bool | None, message: str) -> None:
        """Fire when `holds` starts an episode; end the episode when it no longer holds (None: no information)."""
        if holds is None:
            return
        if not holds:
            self._active.discard(signature)
        elif signature not in self._active:
            self._active.add(signature)
            fired.append(HealthAlert(step, signature, message))

    # ---- the callback ------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        """Start afresh, or, on a resumed run, replay the checkpoint's log history quietly to restore the episodes."""
        self.reset()
        for entry in state.log_history:
            self.alerts.extend(self.observe(entry, int(entry.get("step", 0))))
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        fired = self.observe(logs, state.global_step)
        if not fired:
            return control
        self.alerts.extend(fired)
        entry = state.log_history[-1] if state.log_history else None
        if entry is not None and entry.get("step") == state.global_step and all(key in entry for key in logs):
            for alert in fired:  # trainer.log appended this entry just before calling the callbacks
                entry[HISTORY_PREFIX + alert.signature] = 1.0
        stop = self.stop_training
        if state.is_world_process_zero:
            for alert in fired:
                logger.warning("JustRL health [%s] at step %d: %s%s", alert.signature, alert.step, alert.message,
                               " -- stopping training (health_stop_training)" if stop else "")
                send_tracker_alert(args, alert)
        if stop:
            control.should_training_stop = True
        return control


def send_tracker_alert(args: Any, alert: HealthAlert) -> list[str]:
    """Alert the trackers the run reports to that have alerts (wandb, trackio); return the ones alerted.

    Only trackers already imported (by their transformers integration) are used, and wandb only with an active run.
    A tracker error is logged, never raised: the alert must not break training.
    """
    report_to = getattr(args, "report_to", None) or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    alerted = []
    for name in TRACKERS_WITH_ALERTS:
        module = sys.modules.get(name)
        if ("all" not in report_to and name not in report_to) or module is None or not hasattr(module, "alert"):
            continue
        if name == "wandb" and getattr(module, "run", None) is None:
            continue
        kwargs = {"title": f"JustRL health: {alert.signature}", "text": f"step {alert.step}: {alert.message}"}
        level = getattr(getattr(module, "AlertLevel", None), "WARN", None)
        if level is not None:
            kwargs["level"] = level
        try:
            module.alert(**kwargs)
            alerted.append(name)
        except Exception as error:  # a tracker failure must not stop training
            logger.warning("Could not send the %s alert: %s", name, error)
    return alerted
