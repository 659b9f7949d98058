"""JustRLConfig defaults equal RECIPE.md, and the batch mapping onto TRL's fields for several world sizes."""

from __future__ import annotations

import pytest

from trl_justrl import BatchGeometryError, JustRLConfig, compute_batch_geometry
from trl_justrl.policy_update.geometry import nearest_valid_world_sizes

# RECIPE.md, "Hyperparameters", written out independently of trl_justrl/config.py
RECIPE = {
    "num_generations": 8,
    "prompts_per_step": 256,
    "prompts_per_update": 64,
    "num_iterations": 1,
    "max_prompt_length": 1024,
    "max_completion_length": 15360,
    "learning_rate": 1e-6,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "epsilon": 0.2,
    "epsilon_high": 0.28,
    "clip_ratio_c": 10.0,
    "loss_type": "dapo",
    "beta": 0.0,
    "entropy_coef": 0.0,
    "temperature": 1.0,
    "top_p": 1.0,
    "gradient_checkpointing": True,
    "num_train_epochs": 1.0,
    "warmup_rl_steps": 10,
    "save_every_rl_steps": 50,
}


def make_config(tmp_path, **overrides) -> JustRLConfig:
    return JustRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **overrides)


def test_defaults_are_the_recipe(tmp_path):
    config = make_config(tmp_path)
    for name, value in RECIPE.items():
        assert getattr(config, name) == value, name
    assert config.lr_scheduler_type.value == "constant_with_warmup"
    assert config.scale_rewards == "group"  # GRPO: (r - mean) / std within the group
    assert config.vllm_importance_sampling_correction is False
    assert 1 + config.epsilon_high == pytest.approx(1.28) and 1 - config.epsilon == pytest.approx(0.8)


def test_single_process_mapping_sets_trl_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    config = make_config(tmp_path)
    # 64 prompts x 8 = 512 completions per update, micro-batch 1 -> 512 accumulation steps; 4 updates per step
    assert config.per_device_train_batch_size == 1
    assert config.gradient_accumulation_steps == 512
    assert config.steps_per_generation == 2048
    assert config.generation_batch_size == 2048  # 256 prompts x 8 rollouts
    assert config.updates_per_rl_step == 4
    assert config.warmup_steps == 40 and config.save_steps == 200 and config.eval_steps == 200
    assert config.batch_geometry.completions_per_update == 512


@pytest.mark.parametrize(
    ("world_size", "max_micro", "micro", "accumulation", "steps_per_generation"),
    [
        (1, 1, 1, 512, 2048),
        (2, 1, 1, 256, 1024),
        (8, 1, 1, 64, 256),
        (32, 1, 1, 16, 64),
        (32, 4, 4, 4, 16),
        (8, 3, 2, 32, 128),  # 64 completions per device: largest divisor <= 3 is 2
    ],
)
def test_geometry_reproduces_the_paper_batch(world_size, max_micro, micro, accumulation, steps_per_generation):
    g = compute_batch_geometry(
        world_size=world_size, prompts_per_step=256, prompts_per_update=64, num_generations=8, max_micro_batch=max_micro
    )
    assert (g.per_device_train_batch_size, g.gradient_accumulation_steps, g.steps_per_generation) == (
        micro,
        accumulation,
        steps_per_generation,
    )
    # the invariants, independently: completions per update and per step across all processes
    assert g.per_device_train_batch_size * g.gradient_accumulation_steps * world_size == 64 * 8
    assert g.generation_batch_size == 256 * 8
    assert g.updates_per_step == 4


def test_world_size_24_is_impossible_and_the_error_says_why():
    with pytest.raises(BatchGeometryError) as err:
        compute_batch_geometry(world_size=24, prompts_per_step=256, prompts_per_update=64, num_generations=8)
    message = str(err.value)
    assert "512" in message and "24" in message  # the numbers
    assert "16 or 32" in message  # the nearest valid world sizes
    assert "multiple of 3" in message  # the other fix
    assert nearest_valid_world_sizes(512, 24) == (16, 32)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(prompts_per_step=256, prompts_per_update=48), "multiple of prompts_per_update"),
        (dict(prompts_per_step=0, prompts_per_update=64), "prompts_per_step must be a positive integer"),
        (dict(prompts_per_step=256, prompts_per_update=64, world_size=0), "world_size"),
    ],
)
def test_invalid_geometry_inputs(kwargs, fragment):
    args = dict(world_size=1, num_generations=8) | kwargs
    with pytest.raises(BatchGeometryError, match=fragment):
        compute_batch_geometry(**args)


def test_config_fails_before_anything_loads_for_an_impossible_world_size(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "24")
    with pytest.raises(BatchGeometryError, match="24 training processes"):
        make_config(tmp_path)


def test_opting_out_keeps_trl_batch_fields(tmp_path):
    config = make_config(
        tmp_path,
        prompts_per_step=None,
        prompts_per_update=None,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        warmup_steps=5,
        save_steps=7,
    )
    assert config.batch_geometry is None
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (8, 2)
    assert config.steps_per_generation == 2 and config.warmup_steps == 5 and config.save_steps == 7


def test_step_counts_a_user_gives_are_honoured_or_refused(tmp_path, monkeypatch):
    """A value set by hand is never replaced in silence: an interval given both in training steps and in optimizer
    updates is refused naming both (unless they agree), and a step count transformers would misread is refused."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    updates_per_step = 256 // 64  # JustRLConfig's defaults: 50-step saves, a 10-step warm-up
    for given, message in ((dict(save_steps=1), "save_steps = 1 and save_every_rl_steps = 50 both set"),
                           (dict(eval_steps=3), "eval_steps = 3 and save_every_rl_steps = 50 both set"),
                           (dict(warmup_steps=7), "warmup_steps = 7 and warmup_rl_steps = 10 both set"),
                           (dict(max_steps=-5), r"max_steps = -5 \(a positive number of updates, or -1"),
                           (dict(max_steps=0), "max_steps = 0"),
                           (dict(num_train_epochs=0.0), r"num_train_epochs = 0.0 \(positive when max_steps is -1\)"),
                           (dict(logging_steps=-2), "logging_steps = -2")):
        with pytest.raises(ValueError, match=message):
            make_config(tmp_path, **given)
    assert make_config(tmp_path, save_steps=1, save_every_rl_steps=None).save_steps == 1  # in updates, as given
    agreeing = make_config(tmp_path, save_steps=50 * updates_per_step)  # the same interval twice is no conflict
    assert agreeing.save_steps == agreeing.eval_steps == 50 * updates_per_step
    assert make_config(tmp_path, max_steps=-1, num_train_epochs=2.0).num_train_epochs == 2.0


def test_contradictory_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="steps_per_generation"):
        make_config(tmp_path, steps_per_generation=4)
    with pytest.raises(ValueError, match="both"):
        make_config(tmp_path, prompts_per_step=None)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        make_config(tmp_path, clip_ratio_c=1.1)


def test_an_uninstalled_report_to_integration_is_refused_with_its_install_line(tmp_path, monkeypatch):
    """Checked with transformers' own availability list, before any model loads."""
    monkeypatch.setattr("trl_justrl.config.get_available_reporting_integrations", lambda: ["tensorboard"])
    with pytest.raises(ValueError, match=r"report_to names wandb, comet_ml.*pip install wandb, pip install comet-ml"):
        JustRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=["wandb", "comet_ml"])
    config = JustRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=["tensorboard"])
    assert config.report_to == ["tensorboard"]
