"""The health monitor fires once per episode on each failure signature, stays quiet on a healthy run, and stops
training only when asked."""

from __future__ import annotations

import logging
import math
import random
import sys
import types
from dataclasses import replace
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from trl_justrl import JustRLConfig, JustRLTrainer
from trl_justrl.data import load_training_data
from trl_justrl.reporting.health import HealthMonitor, HealthMonitorSettings, send_tracker_alert
from trl_justrl.reporting.summary import format_summary, summarize_run

THRESHOLDS = HealthMonitorSettings(health_entropy_floor=0.8, health_patience=5, health_reward_flat_window=20,
                                   health_reward_flat_tolerance=0.02, health_max_truncation_ratio=0.2,
                                   health_max_clip_fraction=0.1)
NO_TRACKER = SimpleNamespace(report_to=["none"])


def healthy(step: int, rng: random.Random) -> dict:
    """One log entry of a run like the paper's: entropy oscillating in 1.2-1.4, reward rising noisily from -0.6 to
    +0.4, length falling from about 7.5K to 4.5K tokens, few truncations, small clip fractions."""
    return {
        "loss": rng.gauss(0.0, 0.01),
        "grad_norm": abs(rng.gauss(0.2, 0.05)),
        "entropy": 1.3 + 0.08 * math.sin(step / 7) + rng.uniform(-0.02, 0.02),
        "reward": -0.6 + step / 300 + rng.gauss(0.0, 0.05),
        "completions/mean_length": 4500 + 3000 * math.exp(-step / 100) + rng.gauss(0, 100),
        "completions/clipped_ratio": max(0.0, rng.gauss(0.03, 0.01)),
        "clip_ratio/low_mean": 0.002,
        "clip_ratio/high_mean": 0.004,
        "clip_ratio/dual_mean": 0.0001,
    }


def feed(monitor: HealthMonitor, entries: list[dict], args=NO_TRACKER):
    """Log `entries` at steps 1, 2, ... the way Trainer.log does; return the state and the stop flag after each."""
    state, control = TrainerState(), TrainerControl()
    monitor.on_train_begin(args, state, control)
    stops = []
    for step, logs in enumerate(entries, start=1):
        state.global_step = step
        state.log_history.append({**logs, "step": step})
        control = monitor.on_log(args, state, control, logs=logs)
        stops.append(control.should_training_stop)
    return state, stops


def stream(n: int, seed: int = 0, **overrides) -> list[dict]:
    """n healthy entries; overrides map a key to a function (step -> value) replacing that metric."""
    rng = random.Random(seed)
    entries = [healthy(step, rng) for step in range(1, n + 1)]
    for key, value in overrides.items():
        for step, entry in enumerate(entries, start=1):
            entry[key] = value(step)
    return entries


def signatures(monitor: HealthMonitor) -> list[tuple[int, str]]:
    return [(alert.step, alert.signature) for alert in monitor.alerts]


def test_a_healthy_run_stays_quiet(caplog):
    monitor = HealthMonitor(replace(THRESHOLDS, health_stop_training=True))
    with caplog.at_level(logging.WARNING, logger="trl_justrl.reporting.health"):
        state, stops = feed(monitor, stream(400))
    assert monitor.alerts == [] and not any(stops) and not caplog.records
    assert not any(key.startswith("health/") for entry in state.log_history for key in entry)


def test_the_default_thresholds_stay_quiet_on_a_healthy_run(tmp_path):
    monitor = HealthMonitor.from_config(JustRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    feed(monitor, stream(400, seed=1))
    assert monitor.alerts == []


def test_entropy_collapse_fires_once_per_episode(caplog):
    # healthy until step 50; collapsed (0.55) at 51-80; recovered at 81-100; a 4-step dip at 101-104 (under the
    # patience of 5); healthy again; collapsed from 121 on
    def entropy(step):
        collapsed = 51 <= step <= 80 or 101 <= step <= 104 or step >= 121
        return 0.55 if collapsed else 1.3

    monitor = HealthMonitor(THRESHOLDS)
    with caplog.at_level(logging.WARNING, logger="trl_justrl.reporting.health"):
        state, stops = feed(monitor, stream(150, entropy=entropy))
    assert signatures(monitor) == [(55, "entropy_collapse"), (125, "entropy_collapse")]
    assert not any(stops)  # warns only
    assert state.log_history[54]["health/entropy_collapse"] == 1.0  # the entry of step 55
    assert not any("health/entropy_collapse" in entry for entry in state.log_history[55:124])
    assert len(caplog.records) == 2 and "entropy_collapse" in caplog.records[0].getMessage()
    assert "0.55" in monitor.alerts[0].message and "0.8" in monitor.alerts[0].message


def test_a_flat_reward_fires_and_a_noisy_one_does_not():
    monitor = HealthMonitor(THRESHOLDS)
    feed(monitor, stream(60, reward=lambda s: -1.0 if s <= 30 else -1.0 + 0.009 * (s % 3)))  # range 0.018 <= 0.02
    assert signatures(monitor) == [(20, "reward_flat")]  # the window fills at step 20; one episode throughout

    monitor = HealthMonitor(THRESHOLDS)
    feed(monitor, stream(60, reward=lambda s: 0.2 + 0.015 * (s % 3)))  # range 0.03 > 0.02: noisy, not flat
    assert monitor.alerts == []

    monitor = HealthMonitor(THRESHOLDS)  # stuck at +1, unstuck at 31-35, stuck again: two episodes
    feed(monitor, stream(70, reward=lambda s: 0.5 if 31 <= s <= 35 else 1.0))
    assert signatures(monitor) == [(20, "reward_flat"), (55, "reward_flat")]


def test_truncation_over_the_bound_fires_after_the_patience():
    monitor = HealthMonitor(THRESHOLDS)
    feed(monitor, stream(30, **{"completions/clipped_ratio": lambda s: 0.5 if 11 <= s <= 14 or s >= 21 else 0.05}))
    assert signatures(monitor) == [(25, "truncation_high")]
    assert "0.5 of the completions" in monitor.alerts[0].message and "mean response length" in monitor.alerts[0].message


def test_a_high_clip_fraction_fires():
    monitor = HealthMonitor(THRESHOLDS)
    feed(monitor, stream(20, **{"clip_ratio/high_mean": lambda s: 0.3 if s >= 6 else 0.004}))
    assert signatures(monitor) == [(10, "clip_fraction_high")]
    assert "clip_ratio/high_mean = 0.3" in monitor.alerts[0].message


def test_non_finite_loss_or_grad_norm_fires_at_once():
    def grad_norm(step):
        return {5: math.inf, 6: math.nan, 12: math.nan}.get(step, 0.2)

    monitor = HealthMonitor(THRESHOLDS)
    feed(monitor, stream(15, loss=lambda s: math.nan if s == 5 else 0.0, grad_norm=grad_norm))
    assert signatures(monitor) == [(5, "non_finite"), (12, "non_finite")]  # 5-6 one episode, 12 a new one
    assert "loss = nan" in monitor.alerts[0].message and "grad_norm = inf" in monitor.alerts[0].message


def test_training_stops_only_when_asked():
    entries = stream(20, entropy=lambda s: 0.5 if s >= 8 else 1.3)
    monitor = HealthMonitor(replace(THRESHOLDS, health_stop_training=False))
    _, stops = feed(monitor, entries)
    assert monitor.alerts and not any(stops)

    monitor = HealthMonitor(replace(THRESHOLDS, health_stop_training=True))
    _, stops = feed(monitor, entries)
    assert stops.index(True) == 11  # step 12: the 5th consecutive entropy under the floor


def test_a_resumed_run_replays_its_history_without_warning_again(caplog):
    entries = stream(40, entropy=lambda s: 0.5 if s >= 10 else 1.3)
    monitor = HealthMonitor(THRESHOLDS)
    state, _ = feed(monitor, entries[:30])
    assert signatures(monitor) == [(14, "entropy_collapse")]

    resumed = HealthMonitor(THRESHOLDS)
    control = resumed.on_train_begin(NO_TRACKER, state, TrainerControl())
    assert signatures(resumed) == [(14, "entropy_collapse")]  # restored from the log history
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trl_justrl.reporting.health"):
        for step, logs in enumerate(entries[30:], start=31):
            state.global_step = step
            state.log_history.append({**logs, "step": step})
            resumed.on_log(NO_TRACKER, state, control, logs=logs)
    assert signatures(resumed) == [(14, "entropy_collapse")] and not caplog.records  # the same episode


def test_tracker_alerts(monkeypatch):
    calls = []
    fake = types.ModuleType("wandb")
    fake.run = object()
    fake.AlertLevel = SimpleNamespace(WARN="warn-level")
    fake.alert = lambda **kwargs: calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "wandb", fake)

    monitor = HealthMonitor(THRESHOLDS)
    feed(monitor, stream(10, loss=lambda s: math.nan if s == 3 else 0.0), args=SimpleNamespace(report_to=["wandb"]))
    assert len(calls) == 1 and calls[0]["title"] == "JustRL health: non_finite" and calls[0]["level"] == "warn-level"
    assert calls[0]["text"].startswith("step 3:")

    alert = monitor.alerts[0]
    assert send_tracker_alert(NO_TRACKER, alert) == []  # not reporting to wandb
    fake.run = None
    assert send_tracker_alert(SimpleNamespace(report_to=["wandb"]), alert) == []  # no active run
    fake.run = object()

    def broken(**kwargs):
        raise RuntimeError("no network")

    fake.alert = broken
    assert send_tracker_alert(SimpleNamespace(report_to="wandb"), alert) == []  # logged, not raised


def test_thresholds_are_config_fields_and_checked(tmp_path):
    config = JustRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert (config.health_monitor, config.health_stop_training) == (True, False)
    assert HealthMonitor.from_config(config).settings == THRESHOLDS
    for bad in ({"health_patience": 0}, {"health_reward_flat_window": 1}, {"health_max_truncation_ratio": 1.5},
                {"health_reward_flat_tolerance": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            JustRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **bad)


@pytest.mark.slow
def test_the_trainer_adds_the_monitor_and_stops_a_real_run_when_asked(tmp_path, tiny_model_path, tiny_run):
    assert any(isinstance(cb, HealthMonitor) for cb in tiny_run.callback_handler.callbacks)

    # a random model's entropy (about 10.8) is under a floor of 100: the alert fires on the first log (step 2)
    def args(**overrides):
        return JustRLConfig(**{
            "output_dir": str(tmp_path), "use_cpu": True, "bf16": False, "report_to": "none", "prompts_per_step": 2,
            "prompts_per_update": 1, "num_generations": 4, "per_device_train_batch_size": 4,
            "max_completion_length": 8, "warmup_rl_steps": 0, "save_every_rl_steps": None, "save_strategy": "no",
            "max_steps": 4, "logging_steps": 2, "gradient_checkpointing": False, "health_entropy_floor": 100.0,
            "health_patience": 1, **overrides,
        })

    data = load_training_data("synthetic", synthetic_size=16)
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"],
                            args=args(health_stop_training=True), train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 2  # of max_steps 4
    assert trainer.state.log_history[0]["health/entropy_collapse"] == 1.0
    trainer.save_state()
    assert "health alerts          entropy_collapse (step 2), truncation_high (step 2)" in format_summary(
        summarize_run(tmp_path)
    )

    off = JustRLTrainer(model=str(tiny_model_path), args=args(health_monitor=False), train_dataset=data)
    assert not any(isinstance(cb, HealthMonitor) for cb in off.callback_handler.callbacks)


@pytest.mark.slow
def test_a_reward_that_gives_nothing_is_an_alert_not_mixed_groups(tmp_path, tiny_model_path, tiny_config):
    """Every reward None: TRL trains on, with advantages, loss and gradient 0, and its frac_reward_zero_std reads 0
    (the std of NaN rewards is not 0), which would make every group "mixed". The monitor raises no_reward and the
    summary shows no mixed groups and the alert."""

    def gives_nothing(completions, **kwargs):
        return [None] * len(completions)

    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=[gives_nothing],
                            args=tiny_config(tmp_path, max_steps=2), train_dataset=load_training_data(
                                "synthetic", synthetic_size=16))
    trainer.train()
    trainer.save_state()
    (entry,) = [h for h in trainer.state.log_history if "reward" in h]
    assert entry["frac_reward_zero_std"] == 0.0 and entry.get("health/no_reward") == 1.0
    text = format_summary(summarize_run(tmp_path))
    assert "no_reward (step 2)" in text and "health alerts          none" not in text
    assert "mixed outcomes first n/a  ->  last n/a" in text


def test_no_reward_fires_on_a_missing_or_nan_mean_and_rearms():
    monitor = HealthMonitor(HealthMonitorSettings())
    assert [a.signature for a in monitor.observe({"reward": None}, 1)] == ["no_reward"]
    assert [a.signature for a in monitor.observe({"reward": math.nan}, 2)] == ["non_finite"]  # no_reward: same episode
    assert monitor.observe({"reward": 0.5}, 3) == []  # a reward again: both episodes end
    assert [a.signature for a in monitor.observe({"reward": None}, 4)] == ["no_reward"]
    assert monitor.observe({"loss": 0.1}, 5) == []  # an entry without a reward says nothing about it
