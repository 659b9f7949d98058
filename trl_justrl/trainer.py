"""`JustRLTrainer`: TRL's `GRPOTrainer` training exactly the JustRL objective.

What it changes in GRPOTrainer: the loss is `loss.per_token_policy_loss` (clip-higher + dual-clip) aggregated as a
token mean over the update; settings that would change that objective (KL, entropy bonus, other loss types) are
refused; embedded model names resolve to local checkpoints; prompts over `max_prompt_length` tokens are dropped
and counted; the dual-clip fraction and the drop count are logged besides TRL's metrics. Generation, rewards,
advantages, logging, checkpoints and the Hub are TRL's and transformers'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, PreTrainedModel
from trl import GRPOTrainer

from .budget import TokenBudget
from .config import OBJECTIVE_INVARIANTS, JustRLConfig
from .data import filter_long_prompts
from .health import HealthMonitor
from .loss import clip_indicators, per_token_policy_loss
from .model_card import insert_section, justrl_card_section
from .models import resolve_model
from .rewards import available_rewards, get_reward_funcs
from .vllm_server import SyncWatchdog, check_vllm_server

logger = logging.getLogger(__name__)

DEFAULT_REWARDS = ("dapo_strict",)  # RECIPE: binary reward from the strict DAPO verifier


def check_objective(args: JustRLConfig) -> None:
    """Refuse settings that would make the trained objective differ from JustRL's."""
    wrong = {name: getattr(args, name) for name, value in OBJECTIVE_INVARIANTS.items() if getattr(args, name) != value}
    if wrong:
        expected = {name: OBJECTIVE_INVARIANTS[name] for name in wrong}
        raise ValueError(
            f"JustRLTrainer trains exactly the JustRL objective; these settings would change it: {wrong}. "
            f"Use {expected}, or TRL's GRPOTrainer for other objectives."
        )


def _resolve_rewards(
    reward_funcs: Any, args: JustRLConfig | None = None, processing_class: Any = None
) -> list[Callable | str | PreTrainedModel]:
    """Registered reward names become functions (those with settings built from `args`, e.g. the ablation rewards);
    callables and reward-model ids pass through to TRL."""
    if reward_funcs is None:
        reward_funcs = list(DEFAULT_REWARDS)
    if not isinstance(reward_funcs, Sequence) or isinstance(reward_funcs, str):
        reward_funcs = [reward_funcs]
    registered = set(available_rewards())
    return [
        get_reward_funcs([f], args, processing_class)[0] if isinstance(f, str) and f in registered else f
        for f in reward_funcs
    ]


class JustRLTrainer(GRPOTrainer):
    """GRPO with clip-higher (0.2 / 0.28), dual-clip c for negative advantages, token-mean loss, no KL, no entropy."""

    _tag_names = ["trl", "grpo", "justrl"]

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs: Any = None,
        args: JustRLConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        **kwargs: Any,
    ):
        if args is None:
            args = JustRLConfig(output_dir="justrl-output")
        if not isinstance(args, JustRLConfig):
            raise TypeError(f"JustRLTrainer needs a JustRLConfig, got {type(args).__name__}.")
        check_objective(args)
        if args.use_vllm and args.vllm_mode == "server":  # before any model loads: fail fast, naming host and port
            check_vllm_server(
                args.vllm_server_host,
                args.vllm_server_port,
                args.vllm_server_timeout,
                required_context=args.max_prompt_length + (args.max_completion_length or 0),
                base_url=args.vllm_server_base_url,
            )
        if isinstance(model, str):
            model = resolve_model(model)
        if processing_class is None:
            source = model if isinstance(model, str) else model.config._name_or_path
            processing_class = AutoProcessor.from_pretrained(
                source, truncation_side="left", padding_side="left", trust_remote_code=args.trust_remote_code
            )

        self.prompts_dropped_too_long = 0
        if train_dataset is not None and "prompt" in getattr(train_dataset, "column_names", []):
            train_dataset, self.prompts_dropped_too_long = filter_long_prompts(
                train_dataset, processing_class, args.max_prompt_length, args.chat_template_kwargs
            )
        if eval_dataset is not None and "prompt" in getattr(eval_dataset, "column_names", []):
            eval_dataset, dropped = filter_long_prompts(
                eval_dataset, processing_class, args.max_prompt_length, args.chat_template_kwargs
            )
            if dropped:
                logger.warning("Dropped %d evaluation prompts over max_prompt_length", dropped)

        super().__init__(
            model=model,
            reward_funcs=_resolve_rewards(reward_funcs, args, processing_class),
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.add_callback(TokenBudget())  # tokens generated / trained, logged as budget/*
        if args.health_monitor:
            self.add_callback(HealthMonitor.from_config(args))  # warnings on the paper's failure signatures
        if self.use_vllm and args.vllm_mode == "server":  # a weight sync past its limit ends the run, loudly
            generation = self.vllm_generation
            generation.sync_weights = SyncWatchdog(args.vllm_weight_sync_timeout, "vLLM weight sync").wrap(
                generation.sync_weights
            )
        self.training_data_name: str | None = None  # named in the model card; set by trl_justrl.train
        if args.batch_geometry is not None and self.accelerator.is_main_process:
            logger.info("JustRL batch geometry: %s", args.batch_geometry.to_dict())

    # ---- the objective ---------------------------------------------------------------------------------------

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Token-mean JustRL loss of one micro-batch, scaled so that the update's gradient is the token mean."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
            compute_entropy=True,
        )
        # TRL leaves old log-probs out when the batch is still on-policy (ratio = 1).
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        advantages = inputs["advantages"]
        clip = dict(epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high, clip_ratio_c=self.args.clip_ratio_c)

        per_token_loss = per_token_policy_loss(logps, old_logps, advantages, **clip)
        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]

        # Token mean over the update (TRL's "dapo" normaliser): `num_items_in_batch` counts the completion tokens of
        # the whole generation batch on all processes; one update sees 1 / updates_per_step of it, and DDP averages
        # the gradient over processes, hence the rescaling.
        mode = "train" if self.model.training else "eval"
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        loss = (per_token_loss * mask).sum() / normalizer

        metrics = self._metrics[mode]
        metrics["entropy"].append(self._global_masked_mean(entropies, mask))
        for bound, hit in clip_indicators(logps, old_logps, advantages, **clip).items():
            metrics[f"clip_ratio/{bound}_mean"].append(self._global_masked_mean(hit.float(), mask))
        return loss

    def _global_masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean of `values` over the masked tokens of all processes."""
        totals = torch.stack([(values * mask).sum(), mask.sum().float()]).detach()
        totals = self.accelerator.reduce(totals, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

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
            budget.add(generated=self.state.num_input_tokens_seen - seen - prompt, trained=prompt + completion)
        return output

    def create_model_card(self, model_name=None, dataset_name=None, tags=None) -> None:
        """TRL's card (written at every checkpoint and pushed with it) plus the JustRL recipe and metrics so far."""
        dataset_name = dataset_name or self.training_data_name
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        card = Path(self.args.output_dir) / "README.md"
        if not self.is_world_process_zero() or not card.is_file():
            return
        section = justrl_card_section(
            self.args,
            base_model=getattr(self.model.config, "_name_or_path", None),
            dataset_name=dataset_name,
            reward_names=list(self.reward_func_names),
            log_history=self.state.log_history,
            global_step=self.state.global_step,
        )
        card.write_text(insert_section(card.read_text(), section))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs["data/prompts_dropped_too_long"] = self.prompts_dropped_too_long
            if (budget := self.token_budget) is not None:
                logs.update(budget.logs(self.state.global_step))
        super().log(logs, start_time)
