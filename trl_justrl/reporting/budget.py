"""Budgets: compute (the paper's estimate, steps x prompts x rollouts x max context, and the tokens actually
spent) and disk (what the checkpoints take), shared by the planner and the trainers."""

from __future__ import annotations

import logging
import math
from typing import Any

from transformers.trainer_callback import ExportableState, TrainerCallback

logger = logging.getLogger(__name__)


def paper_budget_tokens(steps: int, prompts_per_step: int, rollouts: int, max_context: int) -> int:
    """Token budget as the paper counts it: every rollout of every step charged the full context.

    4,380 steps x 256 prompts x 8 rollouts x 16K context is "about 1.4e11" (JustRL paper; docs/recipe.md).
    """
    for name, value in (("steps", steps), ("prompts_per_step", prompts_per_step), ("rollouts", rollouts),
                        ("max_context", max_context)):
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}.")
    return steps * prompts_per_step * rollouts * max_context


# ---- Tokens actually spent -----------------------------------------------------------------------------------------
# Log keys (also read by the summary and the plot).
TOKENS_GENERATED = "budget/tokens_generated"
TOKENS_TRAINED = "budget/tokens_trained"
PAPER_ESTIMATE = "budget/paper_estimate_tokens"
RL_STEP = "budget/rl_step"


def updates_per_generation(args) -> float:
    """Optimizer updates per generation batch (one JustRL training step): 4 in the recipe.

    TRL generates every `steps_per_generation * num_iterations` micro-steps and steps the optimizer every
    `gradient_accumulation_steps` micro-steps.
    """
    return args.steps_per_generation * args.num_iterations / args.gradient_accumulation_steps


def run_paper_estimate(args, max_optimizer_steps: int) -> int:
    """The paper's estimate for this configured run: its JustRL steps x prompts x rollouts x max context.

    The JustRL steps are the generation batches that `max_optimizer_steps` updates consume; prompts per step come from
    TRL's generation batch (so this also holds with `prompts_per_step` unset); max context is the config's
    `prompt_and_completion_cap` (1,024 + 15,360 = 16,384 in the recipe).
    """
    steps = math.ceil(max_optimizer_steps / updates_per_generation(args))
    return paper_budget_tokens(
        steps=steps,
        prompts_per_step=args.generation_batch_size // args.num_generations,
        rollouts=args.num_generations,
        max_context=args.prompt_and_completion_cap,
    )


class TokenBudget(TrainerCallback, ExportableState):
    """Tokens generated and trained so far, summed over all processes, each generation batch counted once.

    `JustRLTrainer` calls `add` once per generation batch (not once per micro-batch, so steps_per_generation > 1
    counts each batch once) with counts already summed over the processes:
    - generated: completion tokens the policy sampled (TRL's own count: model-generated tokens, EOS included);
    - trained: prompt + completion tokens the training forward attends to (non-padding; completions that
      `mask_truncated_completions` masks out excluded). Each rollout counts once, whatever `num_iterations`.
    The counts live in trainer_state.json's `stateful_callbacks` with every checkpoint, so a resumed run continues
    them; the trainer logs them (and the paper estimate for the configured run) with every training log entry.
    """

    def __init__(self, tokens_generated: int = 0, tokens_trained: int = 0):
        self.tokens_generated = int(tokens_generated)
        self.tokens_trained = int(tokens_trained)
        self.paper_estimate_tokens: int | None = None
        self._updates_per_generation: float | None = None
        self._in_flight: tuple[int, int, int | None] = (0, 0, None)  # the latest batch and the step it is used up at
        self._step = 0

    def add(self, generated: int, trained: int, at_step: int | None = None) -> None:
        """Count one generation batch, generated when `at_step` optimizer updates were done (None: not tracked)."""
        self.tokens_generated += int(generated)
        self.tokens_trained += int(trained)
        ends = None
        if at_step is not None and self._updates_per_generation:
            ends = at_step + round(self._updates_per_generation)
        self._in_flight = (int(generated), int(trained), ends)

    def state(self) -> dict:
        """The counts a checkpoint stores: without the current generation batch while its updates are unfinished
        (a run resumed from a mid-batch checkpoint generates that batch again and counts it then)."""
        generated, trained = self.tokens_generated, self.tokens_trained
        in_flight_generated, in_flight_trained, ends = self._in_flight
        if ends is not None and self._step < ends:
            generated, trained = generated - in_flight_generated, trained - in_flight_trained
        return {"args": {"tokens_generated": generated, "tokens_trained": trained}, "attributes": {}}

    def on_step_end(self, args, state, control, **kwargs):
        self._step = state.global_step
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        name = type(self).__name__
        counts = {"tokens_generated": 0, "tokens_trained": 0}  # a fresh run (a new TrainerState)
        if state.global_step > 0:  # resumed: continue the checkpoint's counts
            saved = state.stateful_callbacks.get(name)
            saved = saved[0] if isinstance(saved, list) else saved
            if saved:
                counts = saved.get("args", counts)
            else:  # a checkpoint written before this callback existed: its last logged counts
                last = next((h for h in reversed(state.log_history) if TOKENS_GENERATED in h), {})
                counts = {"tokens_generated": last.get(TOKENS_GENERATED, 0),
                          "tokens_trained": last.get(TOKENS_TRAINED, 0)}
        self.tokens_generated = int(counts["tokens_generated"])
        self.tokens_trained = int(counts["tokens_trained"])
        self._step, self._in_flight = state.global_step, (0, 0, None)
        # transformers' checkpointing looks stateful callbacks up by class name: make sure the entry exists
        state.stateful_callbacks.setdefault(name, self.state())
        self._updates_per_generation = updates_per_generation(args)
        # the estimate charges every rollout the full context: only defined when prompts and completions are capped
        if getattr(args, "max_prompt_length", None) is not None and args.max_completion_length is not None:
            self.paper_estimate_tokens = run_paper_estimate(args, state.max_steps)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        state.stateful_callbacks[type(self).__name__] = self.state()  # so trainer.save_state() writes the totals
        return control

    def logs(self, global_step: int) -> dict[str, float]:
        """The log entries: the counts so far, the paper estimate for the run, and the (fractional) JustRL step."""
        logs = {TOKENS_GENERATED: self.tokens_generated, TOKENS_TRAINED: self.tokens_trained}
        if self.paper_estimate_tokens is not None:
            logs[PAPER_ESTIMATE] = self.paper_estimate_tokens
        if self._updates_per_generation:
            logs[RL_STEP] = global_step / self._updates_per_generation
        return logs


# ---- Disk: what the checkpoints take ------------------------------------------------------------------------------
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, one of each per trainable parameter


def checkpoint_bytes(model: Any, save_only_model: bool = False) -> int:
    """One checkpoint's size: the weights in their dtype, plus, unless only the model is saved, per trainable
    parameter two fp32 AdamW moments and an fp32 master copy when the weights are not fp32 (what DeepSpeed and
    mixed-precision training keep; plain torch AdamW on bf16 weights keeps less). ZeRO-3's partitioned parameters
    count at their full size (`ds_numel`). Scheduler, RNG and trainer state are small."""
    total = 0
    for p in model.parameters():
        numel = getattr(p, "ds_numel", p.numel())
        total += numel * p.element_size()
        if p.requires_grad and not save_only_model:
            total += numel * (ADAMW_STATES * 4 + (4 if p.element_size() < 4 else 0))
    return total


def kept_checkpoints(save_total_limit: int | None, saves: int | None) -> int | None:
    """How many checkpoints a run keeps at once: `save_total_limit`, which counts the best one too (transformers'
    rotation keeps the newest and the best whatever the limit, so at least 2), at most the saves the run makes; None
    when nothing bounds it (no limit and no known length)."""
    if save_total_limit:
        bounded = max(save_total_limit, 2)
        return bounded if saves is None else min(bounded, saves)
    return saves


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def disk_estimate(one: int, kept: int | None) -> str:
    """A line for logs and plans: one checkpoint's size and what the kept ones take."""
    if kept is None:
        return (f"one checkpoint ~{format_bytes(one)}; the number kept is unbounded (no save_total_limit, and the "
                "number of saves is unknown)")
    return f"one checkpoint ~{format_bytes(one)}; at most {kept} kept at once: ~{format_bytes(one * kept)}"


class DiskBudget(TrainerCallback):
    """Logs, at the start of training, one checkpoint's size and what the kept checkpoints will take (main process)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None or not state.is_world_process_zero or args.save_strategy == "no":
            return control
        one = checkpoint_bytes(model, args.save_only_model)
        every = args.save_steps if args.save_steps >= 1 else args.save_steps * state.max_steps  # a ratio below 1
        saves = None
        if args.save_strategy == "steps" and every and state.max_steps > 0:
            saves = int(state.max_steps // every)
        logger.info("Disk: %s (save_total_limit %s, the best validation checkpoint included).",
                    disk_estimate(one, kept_checkpoints(args.save_total_limit, saves)), args.save_total_limit)
        return control


def decoder_parameters(config) -> int | None:
    """Parameters of a decoder-only transformer from its config (embeddings, attention with grouped KV heads, gated
    MLP, norms, an untied LM head); biases are left out. None when the config lacks a field this needs."""
    try:
        vocab, hidden, layers = config.vocab_size, config.hidden_size, config.num_hidden_layers
        intermediate, heads = config.intermediate_size, config.num_attention_heads
    except AttributeError:
        return None
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    per_layer = 2 * hidden * heads * head_dim + 2 * hidden * kv + 3 * hidden * intermediate + 2 * hidden
    head = 0 if getattr(config, "tie_word_embeddings", False) else vocab * hidden
    return vocab * hidden + layers * per_layer + hidden + head


# A planning bound per parameter: bf16 weights (2 bytes) and, in the optimizer state, fp32 master weights and two fp32
# AdamW moments (12 bytes), as DeepSpeed and mixed-precision training keep them.
PLANNING_BYTES_PER_PARAMETER = 14
