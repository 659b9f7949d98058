"""The trainers: `GRPORunTrainer` (TRL's GRPO objective, untouched, plus the project's run services) and
`JustRLTrainer` (exactly the JustRL objective, through TRL's own loss, with padding-free updates).

Run services: embedded model names resolve, prompts over `max_prompt_length` are dropped and counted, registered
reward names resolve, the token budget, health monitor, vLLM server checks, graceful stop, validation and the model
card's recipe section are attached, checkpoints are marked complete. Everything else is TRL's and transformers'.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import AutoConfig, AutoProcessor, PreTrainedModel
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOTrainer
from trl.trainer.utils import get_callable_name, is_async_callable

from .config import GRPORunConfig, JustRLConfig, RunConfig, fixed_objective
from .data import PromptLengthFilter, looks_local
from .data_errors import DataError
from .evaluation.validation import ValidationCallback
from .generation.client import ServedGeneration, served_generation
from .generation.server_checks import SyncWatchdog, check_vllm_server
from .models import check_tokenizer_files, check_weight_files, resolve_model
from .policy_update.activation_memory import AUTO, resolve_auto_checkpointing
from .policy_update.forwards import PolicyForwardTap
from .policy_update.loss import dual_clip_mask
from .policy_update.padding_free import PaddingFreeUpdates
from .reporting.budget import DiskBudget, TokenBudget
from .reporting.health import HealthMonitor
from .reporting.model_card import insert_section, recipe_card_section
from .reporting.summary import VLLM_PREFIX
from .rewards import NamingFailures, resolve_reward
from .run_services.checkpoints import failed_save, rotate_checkpoints, write_marker
from .run_services.hub_push import HubPushReport, bound_hub_requests
from .run_services.preemption import GracefulStop
from .run_services.resume import check_resume_settings, record_changes, recorded_changes, write_settings
from .trl_internals import check_internals, checkpoints_kept, name_local_base_model, trl_metrics

logger = logging.getLogger(__name__)

DEFAULT_REWARDS = ("dapo_strict",)  # RECIPE: binary reward from the strict DAPO verifier


def check_objective(args: JustRLConfig) -> None:
    """Refuse settings that would make the trained objective differ from JustRL's."""
    fixed = fixed_objective()
    wrong = {name: getattr(args, name) for name, value in fixed.items() if getattr(args, name) != value}
    if wrong:
        expected = {name: fixed[name] for name in wrong}
        raise ValueError(
            f"JustRLTrainer trains exactly the JustRL objective; these settings would change it: {wrong}. "
            f"Use {expected}, or TRL's GRPOTrainer for other objectives."
        )


def _resolve_rewards(
    reward_funcs: Any, args: RunConfig | None = None, processing_class: Any = None
) -> list[Callable | str | PreTrainedModel]:
    """Each entry as TRL takes it (rewards.resolve_reward): registered and TRL names and import paths become
    functions, reward-model ids and callables pass through; a name that is none of these is an error."""
    if reward_funcs is None:
        reward_funcs = list(DEFAULT_REWARDS)
    if not isinstance(reward_funcs, Sequence) or isinstance(reward_funcs, str):
        reward_funcs = [reward_funcs]
    return [resolve_reward(f, args, processing_class) for f in reward_funcs]


def naming_failures(reward_funcs: list[Any]) -> list[Any]:
    """TRL's reward functions with each synchronous one wrapped so that, when it raises, the error names it and the
    sample (rewards.NamingFailures); reward models and async functions as they are."""
    return [NamingFailures(f, get_callable_name(f)) if callable(f) and not isinstance(f, (nn.Module, NamingFailures))
            and not is_async_callable(f) else f for f in reward_funcs]


def describe_dataset(dataset: Any) -> str:
    """How the model card names training data given in Python: its Hub name when it has one, else its kind."""
    name = getattr(getattr(dataset, "info", None), "dataset_name", None)
    if name and name not in ("json", "parquet", "csv", "text", "arrow", "pandas", "generator"):  # loader names
        return name
    if dataset is None:
        return "none given"
    rows = f", {len(dataset):,} rows" if isinstance(dataset, Dataset) else ""
    return f"a {type(dataset).__name__} given in Python{rows}"


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub data set id (org/name, not a local path)."""
    return bool(name) and name.count("/") == 1 and not looks_local(name)


def check_enough_prompts(dataset: Any, args: RunConfig, dropped: int = 0) -> None:
    """Refuse a map-style training set smaller than one training step (in `train()`, and in the command line's
    pre-flight before the model loads): TRL's sampler drops an incomplete generation batch, so transformers would
    train 0 steps and save the untrained model."""
    if not isinstance(dataset, Dataset):
        return
    needed = args.generation_batch_size // args.num_generations  # distinct prompts per generation batch, all processes
    if len(dataset) >= needed:
        return
    after = f" (after dropping {dropped} over max_prompt_length)" if dropped else ""
    if args.prompts_per_step is not None:
        how, fix = f"prompts_per_step = {args.prompts_per_step}", "lower prompts_per_step (and prompts_per_update)"
    else:
        how = (f"generation_batch_size {args.generation_batch_size} / num_generations {args.num_generations}: "
               f"per_device_train_batch_size {args.per_device_train_batch_size} x {args.world_size} process(es) x "
               f"steps_per_generation {args.steps_per_generation}")
        fix = "lower per_device_train_batch_size or steps_per_generation"
    raise DataError(f"The training data has {len(dataset)} prompts{after}, but one training step takes {needed} "
                    f"({how}); it would train nothing. Use more data, or {fix}.")


def load_processing_class(model: str, args: RunConfig) -> Any:
    """The tokenizer (or processor) as the trainer uses it: left padding and left truncation, like TRL's. A local
    folder without tokenizer files is a ModelFolderError naming it (models.check_tokenizer_files)."""
    check_tokenizer_files(model)
    return AutoProcessor.from_pretrained(model, truncation_side="left", padding_side="left",
                                         trust_remote_code=args.trust_remote_code)


def keep_token_out_of_saved_args(args: RunConfig) -> None:
    """transformers pickles the whole config into every `training_args.bin` (pushed with each checkpoint): a
    `hub_token` given as an argument moves to this process's HF_TOKEN environment variable (where the Hub client
    finds it) and leaves the config."""
    if getattr(args, "hub_token", None):
        os.environ["HF_TOKEN"] = args.hub_token
        args.hub_token = None
        logger.warning("hub_token was given as an argument: it is kept in this process's environment (HF_TOKEN) and "
                       "not in the saved training arguments. Prefer setting HF_TOKEN yourself.")


class GRPORunTrainer(GRPOTrainer):
    """TRL's GRPOTrainer and its objective, unchanged, with the project's run services (see the module docstring)."""

    _tag_names = ["trl", "grpo"]
    config_class: type[RunConfig] = GRPORunConfig  # built when no args are given
    accepted_config: type[RunConfig] = RunConfig  # any run config: TRL's objective as that config sets it
    default_rewards: tuple[str, ...] = ()

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs: Any = None,
        args: RunConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        tools: list[Callable] | None = None,
        rollout_func: Callable | None = None,
        environment_factory: Any = None,
        *,
        prompt_filter: PromptLengthFilter | None = None,
    ):
        """GRPOTrainer's arguments, in GRPOTrainer's order (a drop-in), with `args` of `config_class` and registered
        reward names accepted besides TRL's callables and reward-model ids. `prompt_filter`: the length filter a
        caller already ran over `train_dataset` (the CLI's pre-flight), so no prompt is measured twice."""
        if args is None:
            args = self.config_class(output_dir=f"{type(self).__name__.lower()}-output")
        if not isinstance(args, self.accepted_config):
            raise TypeError(f"{type(self).__name__} needs a {self.accepted_config.__name__}, "
                            f"got {type(args).__name__}.")
        check_internals()  # a TRL that renamed a private name this project uses fails here, naming it
        self.check_args(args)
        keep_token_out_of_saved_args(args)
        if args.use_vllm and args.vllm_mode == "server":  # before any model loads: fail fast, naming host and port
            check_vllm_server(
                args.vllm_server_host,
                args.vllm_server_port,
                args.vllm_server_timeout,
                required_context=args.vllm_context_needed,
                base_url=args.vllm_server_base_url,
                transport=args.vllm_weight_transport,
            )
        self.base_model_name = model if isinstance(model, str) else model.config._name_or_path  # for the model card
        if isinstance(model, str):
            model = resolve_model(model)
            check_weight_files(model)  # a cut weights file is named here, not a raw SafetensorError in transformers
        if processing_class is None:
            processing_class = load_processing_class(model if isinstance(model, str) else model.config._name_or_path,
                                                     args)

        if args.gradient_checkpointing == AUTO:  # before TRL and transformers read it
            if isinstance(model, str):
                resolve_auto_checkpointing(args, AutoConfig.from_pretrained(
                    model, trust_remote_code=args.trust_remote_code))
            else:  # a loaded model (a PEFT one too): its own size and dtype
                weights = list(model.parameters())
                resolve_auto_checkpointing(args, model.config, sum(p.numel() for p in weights), weights[0].dtype)

        # Prompts over max_prompt_length are dropped (never truncated); measured as TRL will render them. A filter
        # passed in has already run over train_dataset (the CLI's pre-flight): no second pass over the rows.
        self.prompt_filter = prompt_filter or PromptLengthFilter(
            processing_class, args.max_prompt_length, args.chat_template_kwargs, tools=tools
        )
        if train_dataset is not None and prompt_filter is None:
            train_dataset = self.prompt_filter.apply(train_dataset, "training")
        if eval_dataset is not None:
            eval_filter = PromptLengthFilter(
                processing_class, args.max_prompt_length, args.chat_template_kwargs, tools=tools
            )
            if isinstance(eval_dataset, (Dataset, IterableDataset)):
                eval_dataset = eval_filter.apply(eval_dataset, "evaluation")
            else:  # a dict of named eval sets (TRL logs each under its own prefix)
                eval_dataset = {name: eval_filter.apply(ds, f"evaluation ({name})")
                                for name, ds in eval_dataset.items()}

        served = args.use_vllm and args.vllm_mode == "server" and args.vllm_weight_transport == "disk"
        backend = served_generation(args.weight_dir, args.vllm_server_liveness_timeout) if served else nullcontext()
        with backend:
            super().__init__(
                model=model,
                reward_funcs=_resolve_rewards(
                    self.default_rewards if reward_funcs is None else reward_funcs, args, processing_class
                ),
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
                tools=tools,
                rollout_func=rollout_func,
                environment_factory=environment_factory,
            )
        self.reward_funcs = naming_failures(self.reward_funcs)  # after TRL named them and chose their classes
        self.graceful_stop = GracefulStop(self.accelerator, args.stop_grace_period_s)
        self.add_callback(self.graceful_stop)  # SIGTERM / SIGUSR1 / SIGINT: finish the update, save, stop
        self.add_callback(TokenBudget())  # tokens generated / trained, logged as budget/*
        self.add_callback(DiskBudget())  # one checkpoint's size and what the kept ones take, logged at the start
        self.hub_pushes: HubPushReport | None = None
        if args.push_to_hub:  # background pushes that fail are reported; no Hub request waits forever
            bound_hub_requests(args.hub_request_timeout_s)
            self.hub_pushes = HubPushReport(self)
            self.add_callback(self.hub_pushes)
        if args.health_monitor:
            self.add_callback(HealthMonitor.from_config(args))  # warnings on the paper's failure signatures
        if self.use_vllm and args.vllm_mode == "server":  # a weight sync past its limit ends the run, loudly
            generation = self.vllm_generation
            generation.sync_weights = SyncWatchdog(args.vllm_weight_sync_timeout, "vLLM weight sync").wrap(
                generation.sync_weights
            )
        if args.validation_benchmarks:  # the problems load (and fail, naming the file) here, before training
            self.add_callback(ValidationCallback.from_config(self, args))
        # named in the model card; trl_justrl.train sets the dataset_name it loaded
        args.record_run(model=self.base_model_name, reward_funcs=list(self.reward_func_names))
        self.training_data_name = describe_dataset(self.train_dataset)
        self.configure_model()
        if args.batch_geometry is not None and self.accelerator.is_main_process:
            logger.info("Batch geometry: %s", args.batch_geometry.to_dict())

    @property
    def training_data_name(self) -> str:
        """The training data as the model card, run_settings.json and the trackers' config name it."""
        return self._training_data_name

    @training_data_name.setter
    def training_data_name(self, name: str) -> None:  # trl_justrl.train sets the dataset_name it loaded
        self._training_data_name = name
        self.args.record_run(training_data=name)  # the trackers' config then holds the whole recipe

    def check_args(self, args: RunConfig) -> None:
        """Settings this trainer refuses, checked before any model loads (none here: TRL's own checks apply)."""

    def configure_model(self) -> None:
        """Adjust the loaded model for this trainer's forwards (nothing here)."""

    def get_decay_parameter_names(self, model) -> list[str]:
        """transformers' choice (biases and norm weights exempt), or every parameter with
        `weight_decay_all_parameters` (verl's AdamW, as the JustRL recipe ran)."""
        if self.args.weight_decay_all_parameters:
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def _save_checkpoint(self, model, trial) -> None:
        """transformers' checkpoint, then, once every process has written its share, the completion marker
        (checkpoints.py); old checkpoints are rotated only after that, so a kill mid-save never leaves the run
        without a whole checkpoint."""
        with self.graceful_stop.saving():  # a late stop signal waits for this checkpoint to be whole
            self._save_whole_checkpoint(model, trial)

    def _save_whole_checkpoint(self, model, trial) -> None:
        limit = self.args.save_total_limit
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        error: Exception | None = None
        try:
            with checkpoints_kept(self.args):
                super()._save_checkpoint(model, trial)
        except Exception as err:  # a full disk, a quota, a folder gone
            error = err
        written = self._everyone_ok(error)  # a barrier too: every process has written its share here
        if written and self.args.should_save:
            try:
                write_settings(folder, self.args, self.accelerator.num_processes, list(self.reward_func_names),
                               self.training_data_name)
                write_marker(folder, self.state.global_step, self.accelerator.num_processes)
            except OSError as err:
                error = err
        elif not written and error is None:
            error = RuntimeError("another process could not write its share of the checkpoint")
        if not self._everyone_ok(error):  # one decision on every process: they raise together, none waits alone
            raise failed_save(folder, error, remove=self.args.should_save) from error
        if self.args.should_save and limit:
            rotate_checkpoints(folder.parent, limit, self.state.best_model_checkpoint)  # whole checkpoints only
        self.accelerator.wait_for_everyone()

    def _everyone_ok(self, error: Exception | None) -> bool:
        """Whether no process has an error (one all-reduce, which every process reaches: also a barrier)."""
        flag = torch.tensor([0.0 if error is None else 1.0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return flag.item() == 0

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        """transformers' train, after the checks of what it would train: enough prompts for one step; a resume's
        settings against the checkpoint's (resume.py: changes of the objective, batch or schedule are refused unless
        `resume_allow_changes`, then recorded)."""
        check_enough_prompts(self.train_dataset, self.args, self.prompt_filter.dropped)
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, (str, Path)) and Path(checkpoint).is_dir():
            changes = check_resume_settings(checkpoint, self.args, self.accelerator.num_processes,
                                            list(self.reward_func_names), self.training_data_name)
            if changes and self.is_world_process_zero():
                step = json.loads(Path(checkpoint, "trainer_state.json").read_text()).get("global_step", 0)
                record_changes(self.args.output_dir, step, changes)
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                 ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        finally:  # on_train_end is not reached when training raises: Ctrl-C must not stay caught afterwards
            self.graceful_stop.uninstall()

    # ---- compute budget: tokens generated and trained --------------------------------------------------------

    @property
    def token_budget(self) -> TokenBudget | None:
        """The run's TokenBudget callback (looked up each time: restoring callback states replaces the instance)."""
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, TokenBudget)), None)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's generation and scoring, once per generation batch; training batches are counted into the budget."""
        seen = self.state.num_input_tokens_seen
        output = super()._generate_and_score_completions(inputs)
        budget = self.token_budget
        if self.model.training and budget is not None:
            # TRL adds prompt + model-generated completion tokens of all processes to num_input_tokens_seen; the
            # prompt tokens (prompt_mask) and the completion tokens the training forward attends to (completion_mask,
            # without those mask_truncated_completions removes) are summed over the processes here.
            local = torch.stack([output["prompt_mask"].sum(), output["completion_mask"].sum()]).long()
            prompt, completion = self.accelerator.reduce(local, reduction="sum").tolist()
            budget.add(generated=self.state.num_input_tokens_seen - seen - prompt, trained=prompt + completion,
                       at_step=self.state.global_step)
        return output

    def create_model_card(self, model_name=None, dataset_name=None, tags=None) -> None:
        """TRL's card (written at every checkpoint and pushed with it) plus the run's recipe and metrics so far. TRL
        links the base model and data on the Hub; a local base model or data set is named instead of linked."""
        dataset_name = dataset_name or self.training_data_name
        hub_dataset = dataset_name if is_hub_id(dataset_name) else None
        super().create_model_card(model_name=model_name, dataset_name=hub_dataset, tags=tags)
        card = Path(self.args.output_dir) / "README.md"
        if not self.is_world_process_zero() or not card.is_file():
            return
        text = name_local_base_model(card.read_text(), self.base_model_name)
        section = recipe_card_section(
            self.args,
            base_model=self.base_model_name,
            dataset_name=dataset_name,
            reward_names=list(self.reward_func_names),
            resume_changes=recorded_changes(self.args.output_dir),
            log_history=self.state.log_history,
            global_step=self.state.global_step,
        )
        card.write_text(insert_section(text, section))

    @property
    def prompts_dropped_too_long(self) -> int:
        """Training prompts dropped for length so far (all at once for a Dataset; as read for an IterableDataset)."""
        return self.prompt_filter.dropped

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs["data/prompts_dropped_too_long"] = self.prompts_dropped_too_long
            if (budget := self.token_budget) is not None:
                logs.update(budget.logs(self.state.global_step))
            if self.hub_pushes is not None:
                logs.update(self.hub_pushes.logs())
            if isinstance(getattr(self, "vllm_generation", None), ServedGeneration):
                logs.update({VLLM_PREFIX + k: v for k, v in self.vllm_generation.take_timings().items()})
        super().log(logs, start_time)


class JustRLTrainer(PaddingFreeUpdates, GRPORunTrainer):
    """GRPO with clip-higher (0.2 / 0.28), dual-clip c for negative advantages, token-mean loss, no KL, no entropy.

    The objective is TRL's own (`loss_type="dapo"`, `delta = clip_ratio_c`; loss.py proves the equivalence), the
    defaults are JustRLConfig's, updates are padding-free (padding_free.PaddingFreeUpdates). What this class adds:
    the refusal of settings that would change the objective, and the `clip_ratio/dual_mean` metric.
    """

    _tag_names = ["trl", "grpo", "justrl"]
    config_class = accepted_config = JustRLConfig
    default_rewards = DEFAULT_REWARDS

    def check_args(self, args: RunConfig) -> None:
        """Refuse settings that would change the JustRL objective (before any model loads)."""
        check_objective(args)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, unchanged; logs `clip_ratio/dual_mean`, the share of tokens held at the dual clip."""
        with PolicyForwardTap(self) as tap:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if len(tap.logps) != 1:
            raise RuntimeError(f"GRPOTrainer.compute_loss made {len(tap.logps)} policy forwards, not one; this trl "
                               "version changed what the dual-clip metric relies on.")
        self._log_dual_clip_fraction(inputs, tap.logps[0])
        if "sampling_per_token_logps" in inputs and not self.vllm_importance_sampling_correction:
            self._log_sampling_gap(inputs, tap.logps[0])  # TRL logs it itself when it corrects for it
        return loss

    def _log_sampling_gap(self, inputs: dict[str, Any], logps: torch.Tensor) -> None:
        """TRL's `sampling/sampling_logp_difference/{mean,max}`: |log-prob of the policy that sampled (the trainer's)
        - log-prob vLLM reported| over the trained completion tokens (as TRL masks them). Without old log-probs the
        micro-batch is on-policy and its own forward (detached) is that policy. Large values mean the server does not
        hold the trainer's weights, or its numerics differ (bf16)."""
        old_logps = inputs.get("old_per_token_logps")
        reference = logps.detach() if old_logps is None else old_logps
        gap = (reference - inputs["sampling_per_token_logps"]).abs()
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:  # tool output tokens were not sampled by vLLM
            mask = mask * inputs["tool_mask"]
        mask = mask.bool() & ~torch.isnan(gap)
        gap = gap.masked_fill(~mask, 0.0)
        totals = torch.stack([gap.sum(), mask.sum().float()])
        totals = self.accelerator.reduce(totals, reduction="sum")
        largest = self.accelerator.reduce(gap.max().reshape(1), reduction="max")  # masked tokens count 0
        mode = "train" if self.model.training else "eval"
        logged = trl_metrics(self, mode)
        logged["sampling/sampling_logp_difference/mean"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        logged["sampling/sampling_logp_difference/max"].append(largest.item())

    def _log_dual_clip_fraction(self, inputs: dict[str, Any], logps: torch.Tensor) -> None:
        old_logps = inputs.get("old_per_token_logps")  # None when the batch is on-policy (ratio 1)
        old_logps = logps if old_logps is None else old_logps
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:  # tool output tokens are not trained on (TRL masks them the same way)
            mask = mask * inputs["tool_mask"]
        held = dual_clip_mask(logps, old_logps, inputs["advantages"], self.args.clip_ratio_c)
        totals = torch.stack([(held.float() * mask).sum(), mask.sum().float()])
        totals = self.accelerator.reduce(totals, reduction="sum")
        mode = "train" if self.model.training else "eval"
        trl_metrics(self, mode)["clip_ratio/dual_mean"].append((totals[0] / totals[1].clamp(min=1.0)).item())


# The trainers a recipe's `trainer` key names; each pairs with its config class (`config_class`).
TRAINERS: dict[str, type[GRPORunTrainer]] = {"justrl": JustRLTrainer, "grpo": GRPORunTrainer}
DEFAULT_TRAINER = "justrl"
