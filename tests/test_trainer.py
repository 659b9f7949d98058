"""End to end: real JustRLTrainer steps on CPU with a tiny random model change the weights and log the metrics."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import trl_justrl.trainer as trainer_module
from trl_justrl import JustRLConfig, JustRLTrainer
from trl_justrl.data import load_training_data
from trl_justrl.rewards import register_reward

pytestmark = pytest.mark.slow


@register_reward("test_length_parity")
def length_parity(completions, **kwargs):
    """A reward that varies for a random model (even / odd text length), so advantages are non-zero."""
    return [1.0 if len(c[0]["content"]) % 2 else -1.0 for c in completions]


def tiny_config(tmp_path, **overrides) -> JustRLConfig:
    values = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        prompts_per_step=2,
        prompts_per_update=1,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=8,
        learning_rate=1e-2,
        warmup_rl_steps=0,
        save_every_rl_steps=None,
        save_strategy="no",
        max_steps=4,  # 2 training steps x 2 updates
        logging_steps=2,
        gradient_checkpointing=False,
        seed=0,
    )
    return JustRLConfig(**(values | overrides))


def test_training_steps_change_weights_and_log_metrics(tmp_path, tiny_model_path, monkeypatch):
    calls = []
    original = trainer_module.per_token_policy_loss

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "per_token_policy_loss", spy)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    trainer = JustRLTrainer(
        model=str(tiny_model_path),
        reward_funcs=["dapo_strict", "test_length_parity"],
        args=tiny_config(tmp_path),
        train_dataset=load_training_data("synthetic", synthetic_size=16),
    )
    assert trainer.ref_model is None  # no KL, no reference model
    trainer.train()

    # the objective is the documented function, with the recipe's clip constants
    assert calls and calls[0] == {"epsilon_low": 0.2, "epsilon_high": 0.28, "clip_ratio_c": 10.0}
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.allclose(before[k], after[k].cpu())]
    assert len(changed) >= len(before) // 2, changed

    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2 and trainer.state.global_step == 4
    for entry in logs:
        for key in ("reward", "accuracy", "rewards/dapo_strict/mean", "entropy", "completions/mean_length",
                    "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/dual_mean",
                    "data/prompts_dropped_too_long"):
            assert key in entry, key
        assert entry["rewards/dapo_strict/mean"] == -1.0  # a random model never boxes the answer
        assert entry["accuracy"] == 0.0
        assert entry["entropy"] > 0 and 1 <= entry["completions/mean_length"] <= 8


def test_length_filter_count_is_logged(tmp_path, tiny_model_path):
    dataset = load_training_data("synthetic", synthetic_size=16)
    long_row = {"prompt": [{"role": "user", "content": "x " * 2000}], "ground_truth": "1"}
    dataset = dataset.add_item(long_row)
    trainer = JustRLTrainer(
        model=str(tiny_model_path),
        reward_funcs=["test_length_parity"],
        args=tiny_config(tmp_path, max_steps=2, max_prompt_length=512),
        train_dataset=dataset,
    )
    assert trainer.prompts_dropped_too_long == 1 and len(trainer.train_dataset) == 16
    trainer.train()
    assert trainer.state.log_history[0]["data/prompts_dropped_too_long"] == 1


@pytest.mark.parametrize(
    ("override", "name"),
    [({"beta": 0.04}, "beta"), ({"loss_type": "grpo"}, "loss_type"), ({"entropy_coef": 0.01}, "entropy_coef")],
)
def test_settings_that_change_the_objective_are_refused(tmp_path, override, name):
    with pytest.raises(ValueError, match=name):
        JustRLTrainer(model="does-not-matter", args=tiny_config(tmp_path, **override))
