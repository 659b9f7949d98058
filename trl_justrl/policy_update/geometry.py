"""A recipe's shape: its batch on a given number of processes, and the contexts its sequences need.

The paper (like verl) counts *prompts per training step* (one generation batch) and *prompts per optimizer update*
(the PPO mini-batch); TRL counts completions per micro-batch, `gradient_accumulation_steps` and
`steps_per_generation`. The configs and the cluster planner both call these rules, so a plan the planner calls exact
is the batch the run uses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


class BatchGeometryError(ValueError):
    """The requested batch cannot be reproduced exactly on this many training processes."""


class PromptBatch:
    """Counts derived from a batch given as prompts per step / per update and rollouts per prompt."""

    prompts_per_step: int
    prompts_per_update: int
    num_generations: int

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per training step (4 in the paper: 256 / 64)."""
        return self.prompts_per_step // self.prompts_per_update

    @property
    def completions_per_step(self) -> int:
        """Completions generated per training step (2,048 in the paper)."""
        return self.prompts_per_step * self.num_generations

    @property
    def completions_per_update(self) -> int:
        """Completions per optimizer update (512 in the paper)."""
        return self.prompts_per_update * self.num_generations


@dataclass(frozen=True)
class BatchGeometry(PromptBatch):
    """TRL batch settings that reproduce one JustRL training step on `world_size` training processes."""

    world_size: int
    prompts_per_step: int
    prompts_per_update: int
    num_generations: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    max_micro_batch: int | None = None  # the bound it was mapped with (the same rule on another world size)

    @property
    def generation_batch_size(self) -> int:
        """TRL's `generation_batch_size`: completions generated at once, across all processes."""
        return self.per_device_train_batch_size * self.world_size * self.steps_per_generation

    def to_dict(self) -> dict[str, int]:
        """Fields plus the derived counts, for logs and JSON output."""
        return {
            **asdict(self),
            "updates_per_step": self.updates_per_step,
            "completions_per_step": self.completions_per_step,
            "completions_per_update": self.completions_per_update,
            "generation_batch_size": self.generation_batch_size,
        }


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def nearest_valid_world_sizes(completions_per_update: int, world_size: int) -> tuple[int | None, int | None]:
    """The largest valid world size below `world_size` and the smallest above it (None where there is none)."""
    divisors = _divisors(completions_per_update)
    below = max((d for d in divisors if d < world_size), default=None)
    above = min((d for d in divisors if d > world_size), default=None)
    return below, above


def compute_batch_geometry(
    *,
    world_size: int,
    prompts_per_step: int,
    prompts_per_update: int,
    num_generations: int,
    max_micro_batch: int | None = 1,
) -> BatchGeometry:
    """Map prompts per step / per update onto TRL's batch knobs for `world_size` processes.

    The micro-batch is the largest divisor of each process's share of an update that does not exceed
    `max_micro_batch` (the paper uses 1 completion per GPU per forward); None makes the whole share one micro-batch
    (packed forwards split it by tokens). Raises `BatchGeometryError`, naming the
    numbers and a fix, when the batch cannot be split evenly.
    """
    for name, value in (
        ("world_size", world_size),
        ("prompts_per_step", prompts_per_step),
        ("prompts_per_update", prompts_per_update),
        ("num_generations", num_generations),
        ("per_device_train_batch_size", 1 if max_micro_batch is None else max_micro_batch),
    ):
        if not isinstance(value, int) or value < 1:
            raise BatchGeometryError(f"{name} must be a positive integer, got {value!r}.")
    if prompts_per_step % prompts_per_update != 0:
        suggestion = max(d for d in _divisors(prompts_per_step) if d <= prompts_per_update)
        raise BatchGeometryError(
            f"prompts_per_step ({prompts_per_step}) must be a multiple of prompts_per_update ({prompts_per_update}) "
            f"so that every training step makes a whole number of optimizer updates. Fix: set prompts_per_update to a "
            f"divisor of {prompts_per_step}, e.g. {suggestion}."
        )
    completions_per_update = prompts_per_update * num_generations
    if completions_per_update % world_size != 0:
        below, above = nearest_valid_world_sizes(completions_per_update, world_size)
        options = " or ".join(str(w) for w in (below, above) if w is not None)
        step = world_size // math.gcd(num_generations, world_size)
        raise BatchGeometryError(
            f"{prompts_per_update} prompts x {num_generations} generations = {completions_per_update} completions per "
            f"optimizer update cannot be split evenly over {world_size} training processes "
            f"({completions_per_update} / {world_size} = {completions_per_update / world_size:.2f}). Fix: train on "
            f"{options} processes, or set prompts_per_update to a multiple of {step} (and prompts_per_step to a "
            f"multiple of that)."
        )
    share = completions_per_update // world_size
    micro = share if max_micro_batch is None else max(d for d in _divisors(share) if d <= max_micro_batch)
    gradient_accumulation_steps = share // micro
    updates_per_step = prompts_per_step // prompts_per_update
    return BatchGeometry(
        world_size=world_size,
        prompts_per_step=prompts_per_step,
        prompts_per_update=prompts_per_update,
        num_generations=num_generations,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=gradient_accumulation_steps,
        steps_per_generation=gradient_accumulation_steps * updates_per_step,
        max_micro_batch=max_micro_batch,
    )


def micro_batch_bound(per_device_train_batch_size: int, max_tokens_per_microbatch: int | None) -> int | None:
    """The largest micro-batch a recipe's batch is mapped with: `per_device_train_batch_size`, or None with packed
    forwards (a device's whole share of an update is one micro-batch, which the packs split by tokens)."""
    return None if max_tokens_per_microbatch is not None else per_device_train_batch_size


def rollout_context(max_prompt_length: int | None, max_completion_length: int | None) -> int:
    """The longest sequence a rollout makes: prompt cap + completion cap (the paper's 16K: 1,024 + 15,360)."""
    return (max_prompt_length or 0) + (max_completion_length or 0)


def server_context(max_prompt_length: int | None, max_completion_length: int | None,
                   validation_max_new_tokens: int | None = None) -> int:
    """The context a vLLM server must hold: a rollout, or, when the run validates (`validation_max_new_tokens` set),
    also a validation prompt plus its response cap (1,024 + 31,744 = 32,768 for the paper recipes)."""
    rollout = rollout_context(max_prompt_length, max_completion_length)
    if validation_max_new_tokens is None:
        return rollout
    return max(rollout, (max_prompt_length or 0) + validation_max_new_tokens)
