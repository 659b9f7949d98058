"""What every setting of a run is: one role per field of the run configs (the project's, TRL's `GRPOConfig`'s and
transformers' `TrainingArguments`'), recorded once here.

Everything that treats settings by kind reads this table: the resume comparison (a change of a refused role stops a
resume), JustRLTrainer's objective check (`fixed`: JustRLConfig's default is the only value it accepts), the model
card's recipe rows (`card`, in table order) and the recipe keys only the planner reads. `tests/test_setting_roles.py`
fails when the installed TRL or transformers adds a field this table does not place, and a resume refuses a changed
setting it cannot place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Role(Enum):
    """What a setting decides; `resume` is what a resume does when its value differs from the checkpoint's:
    refuse (unless resume_allow_changes), pass (logged), ignore, or `when decaying` (refused only when the
    learning rate decays to the end of the run, which these settings then place)."""

    OBJECTIVE = ("objective", "refuse")  # what is optimised: loss, clipping, sampling, rewards, lengths, data
    BATCH = ("batch geometry", "refuse")  # the batch as the whole world sees it
    SCHEDULE = ("schedule", "refuse")  # optimizer, learning-rate schedule, data order
    RUN_LENGTH = ("run length", "when decaying")
    EXECUTION = ("execution", "pass")  # how each process computes the same update (micro-batches, precision, memory)
    CLUSTER = ("cluster layout", "pass")  # processes, distributed backends, devices
    GENERATION_SERVER = ("generation server", "pass")  # where and how rollouts are generated
    MODEL_LOADING = ("model loading", "pass")
    RUN_SERVICE = ("run service", "pass")  # output folder, checkpoints, Hub push, stop and health services
    EVALUATION = ("evaluation", "pass")  # TRL's evaluation loop and the project's validation
    LOGGING = ("logging", "pass")
    RESUME_IGNORED = ("ignored on resume", "ignore")  # the resume request itself, values TRL fills in after parsing

    def __init__(self, label: str, resume: str) -> None:
        self.label = label
        self.resume = resume


@dataclass(frozen=True)
class Setting:
    role: Role
    card: str | None = None  # the model card's label for it (its recipe rows, in table order)
    fixed: bool = False  # JustRLTrainer refuses any value but JustRLConfig's default (the JustRL objective)


OBJ, BATCH, SCHED, LENGTH = Role.OBJECTIVE, Role.BATCH, Role.SCHEDULE, Role.RUN_LENGTH
EXEC, CLUSTER, SERVER, MODEL = Role.EXECUTION, Role.CLUSTER, Role.GENERATION_SERVER, Role.MODEL_LOADING
SERVICE, EVAL, LOG, IGNORED = Role.RUN_SERVICE, Role.EVALUATION, Role.LOGGING, Role.RESUME_IGNORED


def _each(role: Role, names: tuple[str, ...]) -> list[tuple[str, Setting]]:
    return [(name, Setting(role)) for name in names]


# Every field of JustRLConfig and GRPORunConfig. The recipe's values come first, in the order of docs/recipe.md's
# JustRL table (the model card lists them so); then the rest by role.
_ENTRIES: list[tuple[str, Setting]] = [
    # ---- the recipe's values ----------------------------------------------------------------------------------
    ("num_generations", Setting(BATCH, "rollouts per prompt")),
    ("prompts_per_step", Setting(BATCH, "prompts per training step")),
    ("prompts_per_update", Setting(BATCH, "prompts per optimizer update")),
    ("num_iterations", Setting(OBJ, "PPO epochs per batch")),
    ("max_prompt_length", Setting(OBJ, "max prompt length")),
    ("max_completion_length", Setting(OBJ, "max response length")),
    ("learning_rate", Setting(SCHED, "learning rate")),
    ("lr_scheduler_type", Setting(SCHED, "schedule")),
    ("warmup_rl_steps", Setting(SCHED, "warm-up (training steps)")),
    ("weight_decay", Setting(SCHED, "weight decay")),
    ("max_grad_norm", Setting(SCHED, "gradient clipping")),
    ("epsilon", Setting(OBJ, "clip ratio low")),
    ("epsilon_high", Setting(OBJ, "clip ratio high")),
    ("clip_ratio_c", Setting(OBJ, "dual-clip constant c")),
    ("loss_type", Setting(OBJ, "loss aggregation", fixed=True)),
    ("beta", Setting(OBJ, "KL coefficient", fixed=True)),
    ("temperature", Setting(OBJ, "rollout temperature")),
    ("top_p", Setting(OBJ, "rollout top-p")),
    ("reward_weights", Setting(OBJ, "reward weights")),
    ("gradient_checkpointing", Setting(EXEC, "gradient checkpointing")),
    ("save_every_rl_steps", Setting(SERVICE, "checkpoint every (training steps)")),
    # ---- objective ----------------------------------------------------------------------------------------------
    ("importance_sampling_level", Setting(OBJ, fixed=True)),  # per-token ratio
    ("scale_rewards", Setting(OBJ, fixed=True)),  # group-normalised advantages
    ("entropy_coef", Setting(OBJ, fixed=True)),  # no entropy bonus
    ("use_adaptive_entropy", Setting(OBJ, fixed=True)),
    ("top_entropy_quantile", Setting(OBJ, fixed=True)),  # every completion token contributes
    ("off_policy_mask_threshold", Setting(OBJ, fixed=True)),
    ("delta", Setting(OBJ)),  # JustRLConfig sets it from clip_ratio_c
    *_each(OBJ, (
        "top_k", "min_p", "repetition_penalty", "mask_truncated_completions", "entropy_coef_min", "entropy_coef_max",
        "entropy_coef_delta", "entropy_target", "use_bias_correction_kl", "overlong_buffer_length",
        "overlong_penalty_factor", "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
        "vllm_importance_sampling_cap", "vllm_importance_sampling_clip_min", "vllm_importance_sampling_clip_max",
        "multi_objective_aggregation", "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps",
        "sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_neg", "vespo_k_pos", "vespo_lambda_neg",
        "vespo_lambda_pos", "generation_kwargs", "chat_template_kwargs", "disable_dropout", "router_aux_loss_coef",
        "robust_verifier_timeout_s", "cosine_min_value_wrong", "cosine_max_value_wrong", "cosine_min_value_correct",
        "cosine_max_value_correct", "cosine_max_len", "vllm_structured_outputs_regex", "max_tool_calling_iterations",
        "neftune_noise_alpha", "label_smoothing_factor")),
    # ---- batch, schedule, run length ------------------------------------------------------------------------------
    ("generation_batch_size", Setting(BATCH)),
    *_each(SCHED, (
        "lr_scheduler_kwargs", "warmup_steps", "weight_decay_all_parameters", "adam_beta1", "adam_beta2",
        "adam_epsilon", "optim", "optim_args", "optim_target_modules", "seed", "data_seed", "shuffle_dataset",
        "train_sampling_strategy")),
    ("max_steps", Setting(LENGTH)),
    ("num_train_epochs", Setting(LENGTH)),
    # ---- how each process computes the update -------------------------------------------------------------------
    *_each(EXEC, (
        "per_device_train_batch_size", "gradient_accumulation_steps", "remove_padding", "max_tokens_per_microbatch",
        "activation_checkpointing", "activation_checkpointing_kwargs", "bf16", "fp16", "tf32", "bf16_full_eval",
        "fp16_full_eval", "cast_lm_head_to_fp32", "torch_compile", "torch_compile_backend", "torch_compile_mode",
        "use_liger_kernel", "liger_kernel_config", "pad_to_multiple_of", "average_tokens_across_devices",
        "auto_find_batch_size", "torch_empty_cache_steps", "use_cache", "full_determinism", "dataloader_drop_last",
        "dataloader_in_order", "dataloader_multiprocessing_context", "dataloader_num_workers",
        "dataloader_persistent_workers", "dataloader_pin_memory", "dataloader_prefetch_factor",
        "remove_unused_columns", "label_names", "length_column_name", "debug")),
    # ---- where it runs ------------------------------------------------------------------------------------------
    *_each(CLUSTER, (
        "accelerator_config", "ddp_backend", "ddp_broadcast_buffers", "ddp_bucket_cap_mb",
        "ddp_find_unused_parameters", "ddp_static_graph", "ddp_timeout", "deepspeed", "fsdp", "fsdp_config",
        "local_rank", "parallelism_config", "use_cpu", "ds3_gather_for_generation")),
    *_each(SERVER, (
        "use_vllm", "vllm_mode", "vllm_server_base_url", "vllm_server_host", "vllm_server_port",
        "vllm_server_timeout", "vllm_group_port", "vllm_tensor_parallel_size", "vllm_gpu_memory_utilization",
        "vllm_enable_sleep_mode", "vllm_max_model_length", "vllm_model_impl", "vllm_weight_sync_timeout",
        "vllm_weight_transport", "vllm_weight_dir", "vllm_server_liveness_timeout", "cache_implementation",
        "use_transformers_paged", "use_transformers_continuous_batching", "transformers_continuous_batching_config")),
    ("trust_remote_code", Setting(MODEL)),
    # ---- services around the run --------------------------------------------------------------------------------
    *_each(SERVICE, (
        "output_dir", "overwrite_output_dir", "save_strategy", "save_steps", "save_total_limit", "save_only_model",
        "save_on_each_node", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
        "hub_always_push", "hub_revision", "hub_request_timeout_s", "stop_grace_period_s", "enable_jit_checkpoint",
        "restore_callback_states_from_checkpoint", "ignore_data_skip", "health_monitor", "health_stop_training",
        "health_patience", "health_entropy_floor", "health_max_clip_fraction", "health_max_truncation_ratio",
        "health_reward_flat_window", "health_reward_flat_tolerance")),
    *_each(EVAL, (
        "do_train", "do_eval", "do_predict", "eval_strategy", "eval_steps", "eval_delay", "eval_on_start",
        "eval_accumulation_steps", "eval_do_concat_batches", "eval_use_gather_object", "per_device_eval_batch_size",
        "prediction_loss_only", "batch_eval_metrics", "include_for_metrics", "metric_for_best_model",
        "greater_is_better", "load_best_model_at_end", "num_generations_eval", "validation_benchmarks",
        "validation_data_dir", "validation_every_steps", "validation_on_start", "validation_fail_fast",
        "validation_limit", "validation_n", "validation_max_new_tokens", "validation_temperature",
        "validation_top_p")),
    *_each(LOG, (
        "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter",
        "log_level", "log_level_replica", "log_on_each_node", "report_to", "run_name", "project",
        "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id", "disable_tqdm", "skip_memory_metrics",
        "include_num_input_tokens_seen", "log_completions", "log_completions_hub_repo", "log_multimodal",
        "log_unique_prompts", "num_completions_to_print")),
    # the resume request itself; what TRL fills in after parsing; a per-process size (the world's batch is above)
    *_each(IGNORED, (
        "resume_from_checkpoint", "resume_allow_changes", "model_init_kwargs", "gradient_checkpointing_kwargs",
        "steps_per_generation")),
]
SETTINGS: dict[str, Setting] = dict(_ENTRIES)
if len(SETTINGS) != len(_ENTRIES):  # one role per setting: a name placed twice is a mistake in the table
    raise RuntimeError("setting_roles: placed twice: " + ", ".join(sorted(
        {name for name, _ in _ENTRIES if [n for n, _ in _ENTRIES].count(name) > 1})))

# Keys beyond the run config: what run_settings.json records besides it, and recipe keys only the planner reads.
RECORD_ROLES: dict[str, Role] = {
    "completions_per_update": Role.BATCH,  # per_device_train_batch_size x world size x gradient_accumulation_steps
    "updates_per_generation": Role.BATCH,
    "reward_funcs": Role.OBJECTIVE,
    "training_data": Role.OBJECTIVE,
}
LAYOUT_KEYS: tuple[str, ...] = ("vllm_gpus",)  # recipe keys for the cluster planner (GPUs of node 0 serving vLLM)


def role_of(name: str) -> Role | None:
    """The role of a run-config field or a recorded key; None for a name this table does not place."""
    setting = SETTINGS.get(name)
    return setting.role if setting is not None else RECORD_ROLES.get(name)


def fixed_settings() -> tuple[str, ...]:
    """The settings JustRLTrainer holds at JustRLConfig's defaults (the JustRL objective)."""
    return tuple(name for name, setting in SETTINGS.items() if setting.fixed)


def card_rows() -> tuple[tuple[str, str], ...]:
    """(label, field) of the model card's recipe rows, in table order."""
    return tuple((setting.card, name) for name, setting in SETTINGS.items() if setting.card)
