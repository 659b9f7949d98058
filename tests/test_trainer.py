"""End to end: real JustRLTrainer steps on CPU with a tiny random model change the weights and log the metrics."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from trl_justrl import JustRLTrainer
from trl_justrl.data import load_training_data

pytestmark = pytest.mark.slow


def test_training_steps_change_weights_and_log_metrics(tmp_path, tiny_model_path, tiny_config):
    before = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    trainer = JustRLTrainer(
        model=str(tiny_model_path),
        reward_funcs=["dapo_strict", "test_length_parity"],
        args=tiny_config(tmp_path),
        train_dataset=load_training_data("synthetic", synthetic_size=16),
    )
    assert trainer.ref_model is None  # no KL, no reference model
    trainer.train()

    # the objective is TRL's own loss path configured as the recipe (tests/test_loss.py proves the equivalence)
    assert "_compute_loss" not in vars(JustRLTrainer)
    assert (trainer.loss_type, trainer.epsilon_low, trainer.epsilon_high, trainer.args.delta) == ("dapo", 0.2, 0.28, 10)
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


def test_length_filter_count_is_logged(tmp_path, tiny_model_path, tiny_config):
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
    [({"beta": 0.04}, "beta"), ({"loss_type": "grpo"}, "loss_type"), ({"entropy_coef": 0.01}, "entropy_coef"),
     ({"scale_rewards": "none"}, "scale_rewards")],
)
def test_settings_that_change_the_objective_are_refused(tmp_path, tiny_config, override, name):
    with pytest.raises(ValueError, match=name):
        JustRLTrainer(model="does-not-matter", args=tiny_config(tmp_path, **override))


def test_weight_decay_reaches_every_parameter_as_verls_adamw(tmp_path, tiny_model_path, tiny_config):
    """The recipe's verl run decayed biases and norm weights too; transformers (and TRL's defaults, the Open-RS
    recipes) exempt them. The optimizer's groups show which parameters are decayed."""
    from trl_justrl import GRPORunConfig, GRPORunTrainer

    def decayed(trainer) -> tuple[set[str], set[str]]:
        trainer.create_optimizer()
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        groups = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in trainer.optimizer.param_groups}
        return groups.get(0.1, set()), groups.get(0.0, set())

    data = load_training_data("synthetic", synthetic_size=8)
    justrl = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["test_length_parity"],
                           args=tiny_config(tmp_path / "j"), train_dataset=data)
    assert justrl.args.weight_decay_all_parameters and justrl.args.weight_decay == 0.1
    every = {n for n, p in justrl.model.named_parameters() if p.requires_grad}
    assert any("norm" in n for n in every)
    assert decayed(justrl) == (every, set())

    grpo_args = GRPORunConfig(output_dir=str(tmp_path / "g"), use_cpu=True, bf16=False, report_to="none",
                              weight_decay=0.1, per_device_train_batch_size=4, num_generations=4)
    grpo = GRPORunTrainer(model=str(tiny_model_path), reward_funcs=["test_length_parity"], args=grpo_args,
                          train_dataset=data)
    with_decay, without = decayed(grpo)
    assert without == {n for n in every if "norm" in n} and with_decay == every - without
