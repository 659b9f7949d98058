"""Every setting has one role (trl_justrl/setting_roles.py), and what treats settings by kind reads it."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pytest
from transformers import TrainingArguments
from trl import GRPOConfig

from trl_justrl.config import GRPORunConfig, JustRLConfig, fixed_objective
from trl_justrl.setting_roles import LAYOUT_KEYS, SETTINGS, Role, card_rows, fixed_settings, role_of


def _field_names(*classes: type) -> set[str]:
    return {f.name for cls in classes for f in fields(cls)}


def test_every_config_field_has_one_role():
    """A TRL or transformers upgrade that adds a field fails here, naming it, instead of being resumed silently."""
    names = _field_names(JustRLConfig, GRPORunConfig)
    assert names >= _field_names(GRPOConfig, TrainingArguments)  # the inherited ones are all there
    unplaced = sorted(names - set(SETTINGS))
    assert not unplaced, f"settings without a role in trl_justrl/setting_roles.py: {unplaced}"
    assert not sorted(set(SETTINGS) - names), "roles for settings no config has"
    assert all(isinstance(setting.role, Role) for setting in SETTINGS.values())


def test_the_role_table_lists_each_role():
    """Every field with its role (read here by a person reviewing an upgrade): the examples the issue names."""
    roles = {name: SETTINGS[name].role for name in sorted(SETTINGS)}
    assert roles["beta"] is Role.OBJECTIVE and roles["router_aux_loss_coef"] is Role.OBJECTIVE
    assert roles["prompts_per_step"] is Role.BATCH and roles["per_device_train_batch_size"] is Role.EXECUTION
    assert roles["cast_lm_head_to_fp32"] is Role.EXECUTION and roles["learning_rate"] is Role.SCHEDULE
    assert roles["max_steps"] is Role.RUN_LENGTH and roles["fsdp"] is Role.CLUSTER
    assert roles["vllm_weight_transport"] is Role.GENERATION_SERVER and roles["output_dir"] is Role.RUN_SERVICE
    assert roles["report_to"] is Role.LOGGING and roles["resume_from_checkpoint"] is Role.RESUME_IGNORED
    assert {role.resume for role in Role} == {"refuse", "pass", "ignore", "when decaying"}
    assert role_of("completions_per_update") is Role.BATCH and role_of("not_a_setting") is None
    assert LAYOUT_KEYS == ("vllm_gpus",) and not set(LAYOUT_KEYS) & set(SETTINGS)


def test_the_justrl_objective_check_is_derived_from_the_config_defaults():
    fixed = fixed_objective()
    assert set(fixed) == set(fixed_settings())
    assert fixed == {"loss_type": "dapo", "beta": 0.0, "importance_sampling_level": "token", "scale_rewards": "group",
                     "entropy_coef": 0.0, "use_adaptive_entropy": False, "top_entropy_quantile": 1.0,
                     "off_policy_mask_threshold": None}
    assert all(SETTINGS[name].role is Role.OBJECTIVE for name in fixed)


def test_model_card_rows_follow_the_table():
    rows = card_rows()
    assert rows[0] == ("rollouts per prompt", "num_generations") and rows[-1][1] == "save_every_rl_steps"
    assert len(rows) == 21 and all(name in SETTINGS for _, name in rows)


@pytest.mark.parametrize(("name", "old", "new", "refused"), [
    ("router_aux_loss_coef", 0.001, 0.01, True),  # unclassified before the table: passed silently
    ("cast_lm_head_to_fp32", False, True, False),
    ("report_to", "none", "wandb", False),
    ("steps_per_generation", 4, 8, None),  # ignored: not even logged
])
def test_a_resume_treats_each_setting_by_its_role(tmp_path, name, old, new, refused):
    from trl_justrl.run_services.resume import setting_changes, write_settings

    def args(value):
        values = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 4, "steps_per_generation": 8,
                  "lr_scheduler_type": "constant"} | {name: value}
        return SimpleNamespace(**values, to_dict=lambda: dict(values))

    write_settings(tmp_path, args(old), 1, None, None)
    refused_now, harmless = setting_changes(tmp_path, args(new), 1)
    change = f"{name}: {old!r} -> {new!r}"
    assert (change in refused_now, change in harmless) == {True: (True, False), False: (False, True),
                                                            None: (False, False)}[refused]


def test_a_resume_refuses_a_changed_setting_without_a_role(tmp_path):
    """A field a newer TRL adds (here one the table does not know) is refused, naming why."""
    from trl_justrl.run_services.resume import setting_changes, write_settings

    def args(value):
        values = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "steps_per_generation": 1,
                  "lr_scheduler_type": "constant", "a_new_trl_setting": value}
        return SimpleNamespace(**values, to_dict=lambda: dict(values))

    write_settings(tmp_path, args(1), 1, None, None)
    refused, _ = setting_changes(tmp_path, args(2), 1)
    assert refused == ["a_new_trl_setting: 1 -> 2 (a setting trl_justrl has no role for)"]
