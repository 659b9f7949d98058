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


def test_summary_reports_the_share_of_groups_with_mixed_outcomes(tmp_path):
    history = [{"reward": -0.5, "frac_reward_zero_std": 0.25}, {"reward": 0.1, "frac_reward_zero_std": 0.5}]
    write_state(tmp_path, history)
    text = format_summary(summarize_run(tmp_path))
    assert "groups, mixed outcomes first 0.75  ->  last 0.50" in text


def test_compact_console_prints_one_line_per_logged_step():
    import io
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from trl_justrl.reporting.console import CompactConsole

    out = io.StringIO()
    console = CompactConsole(stream=out)
    state = TrainerState(global_step=8, max_steps=24)
    args = SimpleNamespace(steps_per_generation=4, num_iterations=1, gradient_accumulation_steps=1)
    logs = {"reward": -0.25, "accuracy": 0.375, "frac_reward_zero_std": 0.25, "entropy": 0.8741,
            "completions/mean_length": 21.5, "budget/rl_step": 2.0, "loss": 0.1, "clip_ratio/low_mean": 0.0}
    console.on_log(args, state, TrainerControl(), logs=logs)
    console.on_log(args, state, TrainerControl(), logs={"train_runtime": 61.2})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(
        "step 8/24 (training step 2/6)  reward -0.250  acc 0.375  mixed groups 0.75  entropy 0.874"
    )
    assert "len 21.5" in lines[0] and "clip_ratio" not in lines[0] and "{" not in lines[0]
    assert lines[1] == "training done: 61 s, 8 optimizer steps"
    console.on_log(args, TrainerState(global_step=8, max_steps=24, is_world_process_zero=False),
                   TrainerControl(), logs=logs)
    assert len(out.getvalue().splitlines()) == 2  # only the main process prints


def test_console_labels_are_exact_and_say_elapsed_and_eta():
    from types import SimpleNamespace

    from trl_justrl.reporting.console import CompactConsole, clock, step_label

    # 2 updates per training step, logged every update: update 3 is in training step 2, update 5 in training step 3
    assert [step_label(k, 64, 2.0) for k in (3, 4, 5)] == [
        "step 3/64 (training step 2/32)", "step 4/64 (training step 2/32)", "step 5/64 (training step 3/32)"]
    assert step_label(4, 24, 1.0) == "step 4/24" and step_label(5, 10, 4.0).endswith("(training step 2/3)")
    assert [clock(s) for s in (4.4, 61, 3 * 3600 + 7 * 60 + 3)] == ["4s", "1m01s", "3h07m"]

    import io
    import time

    stream = io.StringIO()
    console = CompactConsole(stream)
    args = SimpleNamespace(steps_per_generation=4, num_iterations=1, gradient_accumulation_steps=2)
    state = SimpleNamespace(global_step=0, max_steps=8, is_world_process_zero=True)
    console.on_train_begin(args, state, None)
    console._start -= 60  # a minute of training so far
    state.global_step = 2
    console.on_log(args, state, None, logs={"reward": 0.5, "entropy": 1.2})
    line = stream.getvalue()
    assert line.startswith("step 2/8 (training step 1/4)  reward +0.500") and "elapsed 1m00s  eta 3m00s" in line
    assert time.perf_counter() - console._last < 5
