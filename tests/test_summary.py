"""The run summary reads trainer_state.json and reports first / last step honestly."""

from __future__ import annotations

import json

import pytest

from trl_justrl.reporting.summary import format_summary, summarize_run


def write_state(path, history, step=8):
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))


def test_summary_first_and_last(tmp_path):
    history = [
        {"step": 4, "reward": -0.5, "accuracy": 0.25, "entropy": 0.9, "completions/mean_length": 20.0},
        {"step": 8, "reward": 0.25, "accuracy": 0.625, "entropy": 0.5, "completions/mean_length": 18.0},
        {"step": 8, "train_runtime": 123.4},
    ]
    write_state(tmp_path, history)
    summary = summarize_run(tmp_path)
    assert summary.first["reward"] == -0.5 and summary.last["reward"] == 0.25 and summary.reward_rose
    assert summary.mean_entropy == pytest.approx(0.7) and summary.train_runtime_s == 123.4
    text = format_summary(summary, wall_time_s=150)
    assert "-0.500" in text and "+0.250" in text and "rose: yes" in text and str(tmp_path) in text


def test_summary_says_when_reward_fell_or_is_missing(tmp_path):
    write_state(tmp_path, [{"reward": 0.5}, {"reward": 0.0}])
    assert "rose: no" in format_summary(summarize_run(tmp_path))
    write_state(tmp_path, [])
    assert "rose: n/a" in format_summary(summarize_run(tmp_path))
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        summarize_run(tmp_path / "missing")
