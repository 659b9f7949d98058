"""The run configs: `JustRLConfig` (TRL's `GRPOConfig` whose defaults are the JustRL recipe) and `GRPORunConfig`
(TRL's defaults, for `trainer: grpo` runs such as Open-RS), both built on `RunConfig`.

Every recipe number lives here once, with its source (`# RECIPE:` = the JustRL paper or its released verl script;
docs/recipe.md lists them, docs/delta-over-trl.md maps them). The paper's batch (prompts per step / per update) and
step-counted schedules are mapped onto TRL's fields for the real world size in `__post_init__`, before any model
loads.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from accelerate.utils import parse_flag_from_env
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations
from transformers.trainer_utils import IntervalStrategy, SaveStrategy
from trl import GRPOConfig
from trl.import_utils import is_vllm_available

from .evaluation.validation import ValidationSettings
from .policy_update.activation_memory import checkpointing_setting
from .policy_update.geometry import (
    BatchGeometry,
    BatchGeometryError,
    compute_batch_geometry,
    micro_batch_bound,
    rollout_context,
    server_context,
)
from .policy_update.packing import check_packing_backend
from .reporting.health import HealthMonitorSettings
from .rewards.dapo import DapoRewardSettings
from .rewards.open_rs import OpenRSRewardSettings
from .setting_roles import fixed_settings

# GRPOConfig's defaults of the intervals the recipe settings in training steps set (warmup, save, eval)
TRAINING_ARGUMENT_DEFAULTS = {
    f.name: f.default for f in fields(GRPOConfig) if f.name in ("warmup_steps", "save_steps", "eval_steps")}

WEIGHT_TRANSPORTS = ("auto", "nccl", "disk")  # how updated weights reach a vLLM server (generation/client.py)

# report_to integrations whose pip package has another name (the others install under their own name)
PIP_PACKAGES = {"comet_ml": "comet-ml"}
# integrations transformers' availability list does not decide (flyte: unchecked; azure_ml: hidden when mlflow is in)
UNCHECKED_INTEGRATIONS = ("flyte", "azure_ml")


def missing_integrations(report_to: Any) -> list[str]:
    """The `report_to` integrations transformers knows but does not find installed (its own availability checks;
    the unchecked ones are left to their callbacks)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [name for name in names if name in INTEGRATION_TO_CALLBACK and name not in UNCHECKED_INTEGRATIONS]
    if not names:
        return []
    available = get_available_reporting_integrations()
    return [name for name in names if name not in available]


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, at its import or set since."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES or constants.is_offline_mode()


def _world_size_from_env() -> int:
    """Number of training processes, as set by torchrun / accelerate / deepspeed launchers (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class RunConfig(DapoRewardSettings, HealthMonitorSettings, ValidationSettings, GRPOConfig):
    """TRL's `GRPOConfig` plus what this project adds around any GRPO run: the batch in prompts per step / per
    update, step-counted warm-up and checkpoints, the prompt cap (drop, never truncate), stop and vLLM limits, and the
    settings of the rewards, health monitor and validation (defined next to their code). New fields default to TRL's
    behaviour (off / unset)."""

    prompts_per_step: int | None = field(
        default=None,
        metadata={
            "help": "Prompts per training step (one generation batch). With prompts_per_update it sets TRL's "
            "per_device_train_batch_size, gradient_accumulation_steps and steps_per_generation for the real world "
            "size. Set to null to use TRL's batch fields directly."
        },
    )
    prompts_per_update: int | None = field(
        default=None,
        metadata={"help": "Prompts per optimizer update (the PPO mini-batch); prompts_per_step must be a multiple."},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompts longer than this (in tokens, after the chat template) are dropped from the data "
                  "(never truncated). Null: no cap."},
    )
    warmup_rl_steps: int | None = field(
        default=None,
        metadata={
            "help": "Linear warm-up length in training steps (generation batches); mapped onto warmup_steps in "
            "optimizer updates. Null leaves warmup_steps as given."
        },
    )
    save_every_rl_steps: int | None = field(
        default=None,
        metadata={
            "help": "Checkpoint and evaluation interval in training steps; mapped onto save_steps and eval_steps in "
            "optimizer updates. Null leaves save_steps / eval_steps as given."
        },
    )
    weight_decay_all_parameters: bool = field(
        default=False,  # transformers' Trainer: no weight decay on biases and norm weights
        metadata={"help": "Apply weight_decay to every parameter, as verl's AdamW does, instead of exempting biases "
                  "and norm weights as transformers' Trainer does."},
    )
    stop_grace_period_s: float | None = field(
        default=None,
        metadata={
            "help": "After SIGTERM / SIGUSR1 the run finishes its optimizer update, saves and exits 75 (requeue); "
            "past this many seconds it exits at once instead. Null: no limit (a signal more than 5 s after the first "
            "still stops at once)."
        },
    )
    resume_allow_changes: bool = field(
        default=False,
        metadata={
            "help": "Resuming compares these settings with the checkpoint's saved ones and refuses a change of the "
            "objective, the batch or the learning-rate schedule, listing each; true continues with the changes "
            "(logged, and listed in the model card)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in a used output_dir, deleting its checkpoint-N folders first. Without it (and "
            "without --resume_from_checkpoint) a used output_dir is refused."
        },
    )
    vllm_weight_sync_timeout: float = field(
        default=600.0,  # project's choice: a 1.5B bf16 sync takes seconds; ten minutes means the server is gone
        metadata={
            "help": "Seconds a weight sync to the vLLM server may take before the run stops with an error (server "
            "mode). The wait for the server at start-up is TRL's vllm_server_timeout."
        },
    )

    vllm_weight_transport: str = field(
        default="auto",
        metadata={
            "help": "How updated weights reach the vLLM server (server mode): nccl, TRL's own NCCL weight transfer "
            "(CUDA on trainer and server, vLLM installed beside the trainer); disk, the project's versioned weight "
            "folders (vllm_weight_dir, which the server must see too) loaded by its worker extension (any device, "
            "no common NCCL fabric, no vLLM in the trainer's environment; start the server with `trl-justrl serve`); "
            "auto: nccl when training on CUDA with vLLM importable, else disk.",
            "choices": list(WEIGHT_TRANSPORTS),
        },
    )
    vllm_weight_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the disk weight transport, seen by trainer and server alike (a shared file "
                  "system across nodes). Null: <output_dir>/_vllm_weights (the Hub push leaves out names starting "
                  "with an underscore)."},
    )
    hub_request_timeout_s: float = field(
        default=120.0,  # project's choice: the Hub answers in seconds; an upload that keeps moving is never cut
        metadata={"help": "With push_to_hub: seconds any Hub request may go without progress before its push fails "
                  "(reported; the next save pushes again). huggingface_hub's own client waits forever."},
    )
    vllm_server_liveness_timeout: float = field(
        default=30.0,  # project's choice: /health answers in milliseconds even while the server generates
        metadata={"help": "Seconds the vLLM server may go without answering /health while the trainer waits for it "
                  "(disk transport) before the run stops with an error naming it (a dead or hung server)."},
    )

    def __post_init__(self):
        world_size = _world_size_from_env()
        geometry = self._map_recipe_batch(world_size)
        if geometry is None:
            self._check_trl_batch(world_size)
        super().__post_init__()
        if geometry is not None and self.world_size != world_size:
            raise BatchGeometryError(
                f"The batch was mapped for WORLD_SIZE={world_size} training processes but the run has "
                f"{self.world_size}. Launch with torchrun or accelerate launch so that WORLD_SIZE is set."
            )
        self.batch_geometry: BatchGeometry | None = geometry
        self._check_run_settings()
        self._resolve_weight_transport()
        self.check_health_settings()
        self.check_reward_settings()
        self.check_validation_settings()

    def record_run(self, **facts: Any) -> None:
        """The run's facts beyond these settings (model, reward functions, training data: the trainer records them),
        kept under `recipe` in `to_dict()`, which is what wandb, trackio and TensorBoard store as the run's config."""
        self._run_facts = {**getattr(self, "_run_facts", {}), **facts}

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        if getattr(self, "_run_facts", None):
            values["recipe"] = dict(self._run_facts)
        return values

    def _check_run_settings(self) -> None:
        """Values that would only fail after the model loads (or never): refused here, each named."""
        wrong = {}
        if not math.isfinite(self.learning_rate) or self.learning_rate < 0:
            wrong["learning_rate"] = f"{self.learning_rate} (a finite number >= 0)"
        for name in ("max_prompt_length", "max_completion_length", "save_every_rl_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                wrong[name] = f"{value} (at least 1, or null)"
        if self.save_strategy == SaveStrategy.STEPS and self.save_steps is not None and self.save_steps <= 0:
            wrong["save_steps"] = f"{self.save_steps} (positive with save_strategy steps)"
        # transformers reads any max_steps <= 0 as "train num_train_epochs": only its own -1 means that here
        if self.max_steps == 0 or self.max_steps < -1:
            wrong["max_steps"] = f"{self.max_steps} (a positive number of updates, or -1 for num_train_epochs)"
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            wrong["num_train_epochs"] = f"{self.num_train_epochs} (positive when max_steps is -1)"
        if self.logging_strategy == IntervalStrategy.STEPS and self.logging_steps < 0:
            wrong["logging_steps"] = f"{self.logging_steps} (positive with logging_strategy steps)"
        if not self.hub_request_timeout_s > 0:
            wrong["hub_request_timeout_s"] = f"{self.hub_request_timeout_s} (positive seconds)"
        if self.stop_grace_period_s is not None and self.stop_grace_period_s <= 0:
            wrong["stop_grace_period_s"] = f"{self.stop_grace_period_s} (positive, or null)"
        if wrong:
            raise ValueError("Invalid settings: " + "; ".join(f"{k} = {v}" for k, v in wrong.items()))
        if self.push_to_hub and hub_offline():
            raise ValueError("push_to_hub is on but HF_HUB_OFFLINE is set: nothing could be pushed. Unset "
                             "HF_HUB_OFFLINE, or set push_to_hub false (the model is saved in output_dir either way).")
        missing = missing_integrations(self.report_to)
        if missing:
            raise ValueError(
                f"report_to names {', '.join(missing)}, which is not installed here: "
                + ", ".join(f"pip install {PIP_PACKAGES.get(name, name)}" for name in missing)
                + " (or the project extra of that name, e.g. pip install -e '.[wandb]'), or drop it from report_to."
            )

    def _resolve_weight_transport(self) -> None:
        """`auto` becomes nccl (TRL's path) on CUDA with vLLM importable, else disk; nccl without vLLM or CUDA is
        refused here, before any model loads."""
        if self.vllm_weight_transport not in WEIGHT_TRANSPORTS:
            raise ValueError(f"vllm_weight_transport = {self.vllm_weight_transport!r}: one of {WEIGHT_TRANSPORTS}.")
        if self.vllm_server_liveness_timeout <= 0:
            raise ValueError(f"vllm_server_liveness_timeout = {self.vllm_server_liveness_timeout}: positive seconds.")
        if self.use_vllm and self.vllm_mode == "colocate" and not is_vllm_available():
            raise ValueError("use_vllm with vllm_mode colocate runs vLLM's engine inside the trainer, which needs vLLM "
                             "installed here (pip install -e '.[vllm]', GPU machines); or generate on a server "
                             "(vllm_mode: server, `trl-justrl serve`), or unset use_vllm.")
        on_cuda = self.device.type == "cuda"
        if self.vllm_weight_transport == "auto":
            self.vllm_weight_transport = "nccl" if on_cuda and is_vllm_available() else "disk"
        if not (self.use_vllm and self.vllm_mode == "server") or self.vllm_weight_transport == "disk":
            return
        if not is_vllm_available():
            raise ValueError("vllm_weight_transport = nccl needs vLLM importable beside the trainer (TRL's client "
                             "opens the NCCL group through it): pip install -e '.[vllm]', or use "
                             "vllm_weight_transport: disk (no vLLM needed here).")
        if not on_cuda:
            raise ValueError(f"vllm_weight_transport = nccl needs CUDA (TRL's weight sync runs on NCCL); this run "
                             f"trains on {self.device.type}. Use vllm_weight_transport: disk.")

    @property
    def weight_dir(self) -> str:
        """The disk transport's folder (vllm_weight_dir, default <output_dir>/_vllm_weights: transformers' Hub push
        skips names starting with an underscore, so a copy of the model is not uploaded with every checkpoint)."""
        return self.vllm_weight_dir or os.path.join(self.output_dir, "_vllm_weights")

    @property
    def prompt_and_completion_cap(self) -> int:
        """The longest sequence a rollout can make (geometry.rollout_context)."""
        return rollout_context(self.max_prompt_length, self.max_completion_length)

    @property
    def validation_response_cap(self) -> int | None:
        """The validation's response cap when the run validates (validation_benchmarks set), else None."""
        return self.validation_max_new_tokens if self.validation_benchmarks else None

    @property
    def vllm_context_needed(self) -> int:
        """The context a vLLM server must hold for this run (geometry.server_context)."""
        return server_context(self.max_prompt_length, self.max_completion_length, self.validation_response_cap)

    def _check_trl_batch(self, world_size: int) -> None:
        """With TRL's own batch fields (paper batch off): a generation batch must hold whole groups; say how if not."""
        per_device = self.per_device_train_batch_size
        if self.generation_batch_size is not None:
            completions = self.generation_batch_size
            how = f"generation_batch_size = {completions}"
        else:
            steps = self.steps_per_generation or self.gradient_accumulation_steps
            completions = per_device * world_size * steps
            how = (f"per_device_train_batch_size ({per_device}) x {world_size} process(es) x steps_per_generation "
                   f"({steps}) = {completions} completions")
        groups = self.num_generations
        if groups and completions % groups:
            raise BatchGeometryError(
                f"The generation batch cannot hold whole groups of num_generations = {groups} completions: {how}, "
                f"not a multiple of {groups}. Fix: set per_device_train_batch_size to a multiple of {groups} (TRL's "
                f"own default is 8), or steps_per_generation / generation_batch_size so that the generation batch is "
                f"a multiple of {groups}; or set prompts_per_step and prompts_per_update to map the paper's batch."
            )

    def _map_recipe_batch(self, world_size: int) -> BatchGeometry | None:
        """Set TRL's batch fields and step-counted schedules from the recipe's semantics (None when opted out)."""
        if self.prompts_per_step is None or self.prompts_per_update is None:
            if self.prompts_per_step is not None or self.prompts_per_update is not None:
                raise ValueError("Set both prompts_per_step and prompts_per_update, or neither (null).")
            return None
        if self.generation_batch_size is not None or self.steps_per_generation is not None:
            raise ValueError(
                "prompts_per_step / prompts_per_update set steps_per_generation for you; remove "
                f"generation_batch_size={self.generation_batch_size} / steps_per_generation="
                f"{self.steps_per_generation}, or set prompts_per_step and prompts_per_update to null."
            )
        geometry = compute_batch_geometry(
            world_size=world_size,
            prompts_per_step=self.prompts_per_step,
            prompts_per_update=self.prompts_per_update,
            num_generations=self.num_generations,
            max_micro_batch=self._micro_batch_bound(),
        )
        self.per_device_train_batch_size = geometry.per_device_train_batch_size
        self.gradient_accumulation_steps = geometry.gradient_accumulation_steps
        self.steps_per_generation = geometry.steps_per_generation
        in_updates = {}  # TrainingArguments' interval -> (the setting in training steps that sets it, its value)
        if self.warmup_rl_steps is not None:
            in_updates["warmup_steps"] = ("warmup_rl_steps", self.warmup_rl_steps * geometry.updates_per_step)
        if self.save_every_rl_steps is not None:
            for name in ("save_steps", "eval_steps"):
                in_updates[name] = ("save_every_rl_steps", self.save_every_rl_steps * geometry.updates_per_step)
        for name, (rl_name, value) in in_updates.items():
            given = getattr(self, name)
            if given not in (TRAINING_ARGUMENT_DEFAULTS[name], value):  # a value of the user's would be replaced
                raise ValueError(
                    f"{name} = {given} and {rl_name} = {getattr(self, rl_name)} both set the same interval; "
                    f"{rl_name} counts training steps ({value} optimizer updates here) and would replace {name}. "
                    f"Drop {name}, or set {rl_name}: null to give {name} in optimizer updates.")
            setattr(self, name, value)
        return geometry

    def _micro_batch_bound(self) -> int | None:
        """The micro-batch bound the recipe batch is mapped with (per_device_train_batch_size)."""
        return self.per_device_train_batch_size

    @property
    def updates_per_rl_step(self) -> int:
        """Optimizer updates per training step (generation batch)."""
        return self.steps_per_generation // self.gradient_accumulation_steps


@dataclass
class GRPORunConfig(OpenRSRewardSettings, RunConfig):
    """`trainer: grpo`: TRL's GRPO objective and defaults, the project's run services, and the Open-RS cosine
    rewards' settings (e.g. the Open-RS recipes)."""

    def __post_init__(self):
        super().__post_init__()
        self.check_cosine_settings()


@dataclass
class JustRLConfig(RunConfig):
    """GRPO configuration with the JustRL recipe as defaults (docs/delta-over-trl.md, "How each recipe value maps"):
    the paper's batch, schedules and prompt cap, the dual-clip constant (mapped onto TRL's `delta`) and padding-free
    updates."""

    # ---- RunConfig fields whose defaults become the recipe ----------------------------------------------
    prompts_per_step: int | None = field(
        default=256,  # RECIPE: prompts per training step (train_batch_size) = 256
        metadata={"help": "Prompts per training step (one generation batch); see RunConfig. Null: TRL's fields."},
    )
    prompts_per_update: int | None = field(
        default=64,  # RECIPE: prompts per optimizer update (ppo_mini_batch_size) = 64
        metadata={"help": "Prompts per optimizer update (the PPO mini-batch); prompts_per_step must be a multiple."},
    )
    max_prompt_length: int | None = field(
        default=1024,  # RECIPE: max prompt length 1,024 tokens; longer prompts are dropped, never truncated
        metadata={"help": "Prompts longer than this (in tokens, after the chat template) are dropped from the data."},
    )
    warmup_rl_steps: int | None = field(
        default=10,  # RECIPE: the script adds a 10-step linear warm-up (verl steps its scheduler once per step)
        metadata={"help": "Linear warm-up length in training steps; mapped onto warmup_steps in optimizer updates."},
    )
    save_every_rl_steps: int | None = field(
        default=50,  # RECIPE: checkpoint / validation frequency every 50 steps
        metadata={"help": "Checkpoint and evaluation interval in training steps; mapped onto save_steps / eval_steps."},
    )

    # ---- What GRPOConfig lacks -------------------------------------------------------------------------------
    clip_ratio_c: float = field(
        default=10.0,  # RECIPE: dual-clip constant c = 10.0
        metadata={
            "help": "Dual-clip constant c: for negative advantages the per-token loss is capped at -A * c. Mapped onto "
            "TRL's two-sided clip `delta` (the same objective); leave `delta` unset or equal to this."
        },
    )
    remove_padding: bool = field(
        default=True,  # RECIPE: the script removed padding (use_remove_padding=True); exact, so on by default
        metadata={
            "help": "Run every policy forward (the old-log-prob pass and the training forward) over each micro-batch's "
            "real extent only, and group completions of similar length into the same micro-batch within an "
            "optimizer update. Exact: the same log-probs, loss and gradients as TRL's padded path, less compute."
        },
    )
    max_tokens_per_microbatch: int | None = field(
        default=None,  # off: RECIPE's verl script packed up to 32,768 real tokens per GPU (ppo_max_token_len_per_gpu)
        metadata={
            "help": "Pack completions end to end into forwards of at most this many real tokens, each attending only "
            "to itself (verl's use_dynamic_bsz; a longer completion runs alone). With prompts_per_step set, a "
            "device's whole share of an optimizer update becomes one micro-batch (per_device_train_batch_size) and "
            "is split into such packs, each with its own forward and backward. Exact (the same token-mean loss and "
            "gradients); needs remove_padding and SDPA or flash attention; refused under DeepSpeed. The paper's "
            "verl run used 32,768. Null: one micro-batch per forward."
        },
    )

    # ---- GRPOConfig fields whose defaults become the recipe -------------------------------------------------
    num_generations: int | None = field(
        default=8,  # RECIPE: rollouts per prompt = 8
        metadata={"help": "Rollouts (completions) per prompt; the GRPO group size."},
    )
    per_device_train_batch_size: int = field(
        default=1,  # RECIPE: micro-batch per GPU = 1 (the script also packs up to 32,768 tokens per forward)
        metadata={
            "help": "Largest micro-batch (completions per device per forward). With prompts_per_step set, the "
            "largest divisor of each device's share of an update not above this value is used."
        },
    )
    num_iterations: int = field(
        default=1,  # RECIPE: PPO epochs per batch = 1
        metadata={"help": "PPO epochs per generation batch."},
    )
    max_completion_length: int | None = field(
        default=15360,  # RECIPE: max response length 15,360 tokens (1,024 + 15,360 = the 16K context cap)
        metadata={"help": "Maximum completion length in tokens."},
    )
    learning_rate: float = field(
        default=1e-6,  # RECIPE: learning rate 1e-6, constant
        metadata={"help": "AdamW learning rate."},
    )
    lr_scheduler_type: str = field(
        default="constant_with_warmup",  # RECIPE: constant after a short linear warm-up
        metadata={"help": "Learning-rate schedule."},
    )
    weight_decay: float = field(
        default=0.1,  # RECIPE: AdamW weight decay 0.1
        metadata={"help": "AdamW weight decay."},
    )
    weight_decay_all_parameters: bool = field(
        default=True,  # RECIPE: verl's actor AdamW (fsdp_workers.py) decays every parameter, biases and norms too
        metadata={"help": "Apply weight_decay to every parameter, as the recipe's verl run did (transformers "
                  "exempts biases and norm weights)."},
    )
    max_grad_norm: float = field(
        default=1.0,  # RECIPE: gradient clipping at global norm 1.0
        metadata={"help": "Global gradient-norm clip."},
    )
    epsilon: float = field(
        default=0.2,  # RECIPE: clip ratio low 0.2
        metadata={"help": "Lower clip: the ratio is clipped below at 1 - epsilon."},
    )
    epsilon_high: float | None = field(
        default=0.28,  # RECIPE: clip ratio high 0.28 ("clip higher")
        metadata={"help": "Upper clip: the ratio is clipped above at 1 + epsilon_high."},
    )
    beta: float = field(
        default=0.0,  # RECIPE: KL coefficient 0, no reference model loaded
        metadata={"help": "KL coefficient; JustRL uses none."},
    )
    loss_type: str = field(
        default="dapo",  # RECIPE: token-mean loss aggregation over the update
        metadata={"help": "Loss aggregation; JustRL uses token mean over the update (TRL's 'dapo')."},
    )
    temperature: float = field(
        default=1.0,  # RECIPE: training rollouts at temperature 1.0
        metadata={"help": "Sampling temperature for training rollouts."},
    )
    top_p: float = field(
        default=1.0,  # RECIPE: training rollouts at top-p 1.0
        metadata={"help": "Nucleus sampling for training rollouts."},
    )
    # parsed by checkpointing_setting: a boolean or "auto" (a plain `bool | str` would parse as a bool)
    gradient_checkpointing: checkpointing_setting = field(
        default=True,  # RECIPE: gradient checkpointing on
        metadata={
            "help": "Recompute activations in the backward pass to save memory: true, false, or auto (recompute "
            "only when a micro-batch's estimated training memory without it exceeds 85 percent of the device's; the "
            "trainer logs the estimate and its choice; activation_memory.py). A bare --gradient_checkpointing is "
            "true; --no_gradient_checkpointing is false.",
            "nargs": "?",
            "const": True,
        },
    )
    num_train_epochs: float = field(
        default=1.0,  # RECIPE: one pass over DAPO-Math-17k
        metadata={"help": "Passes over the training data."},
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,  # RECIPE's objective has no rollout-correction factor; TRL's default is True
        metadata={
            "help": "Multiply the loss by TRL's truncated importance ratio between the trainer and vLLM "
            "log-probabilities. Off to train exactly the paper's objective."
        },
    )

    def __post_init__(self):
        self.gradient_checkpointing = checkpointing_setting(self.gradient_checkpointing)
        self._map_dual_clip()
        self._check_packing()
        super().__post_init__()
        if self.max_prompt_length is None:
            raise ValueError("JustRL drops prompts over max_prompt_length (the recipe: 1,024); it cannot be null.")
        if self.epsilon_high is not None and self.clip_ratio_c <= 1.0 + self.epsilon_high:
            raise ValueError(
                f"clip_ratio_c ({self.clip_ratio_c}) must exceed the upper clip bound 1 + epsilon_high "
                f"({1.0 + self.epsilon_high}); the recipe uses 10.0."
            )

    def _micro_batch_bound(self) -> int | None:
        return micro_batch_bound(self.per_device_train_batch_size, self.max_tokens_per_microbatch)

    def _check_packing(self) -> None:
        if self.max_tokens_per_microbatch is None:
            return
        if self.max_tokens_per_microbatch < 1:
            raise ValueError(f"max_tokens_per_microbatch = {self.max_tokens_per_microbatch}: at least 1, or null.")
        if not self.remove_padding:
            raise ValueError("max_tokens_per_microbatch packs padding-free rows: it needs remove_padding = true.")
        # accelerate launch with a DeepSpeed config says so in the environment; a `deepspeed` argument says it here
        check_packing_backend(deepspeed=bool(self.deepspeed) or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"))

    def _map_dual_clip(self) -> None:
        """`delta` (TRL's two-sided clip) = `clip_ratio_c`: TRL's dapo loss is then the recipe's dual-clip objective."""
        if self.delta is None:
            self.delta = self.clip_ratio_c
        elif float(self.delta) != float(self.clip_ratio_c):
            raise ValueError(
                f"delta ({self.delta}) and clip_ratio_c ({self.clip_ratio_c}) disagree: JustRLConfig sets TRL's "
                "two-sided clip `delta` from the dual-clip constant `clip_ratio_c`. Set only clip_ratio_c (the recipe "
                "uses 10.0), or both to the same value."
            )


def fixed_objective() -> dict[str, Any]:
    """The only values JustRLTrainer accepts for the settings `setting_roles` marks `fixed` (the JustRL objective):
    JustRLConfig's defaults. TRL's two-sided clip `delta` is the dual-clip constant, set from `clip_ratio_c`."""
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(JustRLConfig)}
    return {name: defaults[name] for name in fixed_settings()}
