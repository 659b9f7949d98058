"""Reward functions by name: the one registry recipes refer to (`reward_funcs: [dapo_strict]`).

`REWARDS` maps each name to a builder `(args, processing_class) -> TRL reward function`; rewards without settings
ignore both. `register_reward` adds a user's own reward to the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..grading.answers import BOX_OPENER, last_boxed_content  # for reward writers
from . import dapo, open_rs
from .dapo import (
    DapoOverlongPenalty,
    DapoRewardSettings,
    RobustMathVerifier,
    Verdict,
    dapo_score,
    dapo_strict,
    dapo_verify,
    overlong_penalty,
)
from .inputs import RewardFunc, completion_text
from .open_rs import (
    CosineScaledAccuracy,
    OpenRSAccuracy,
    OpenRSCosineAsRun,
    OpenRSRewardSettings,
    cosine_scaled_reward,
    open_rs_format,
)

RewardBuilder = Callable[[Any, Any], RewardFunc]


class _Fixed:
    """The builder of a reward without settings: always the same function."""

    def __init__(self, func: RewardFunc):
        self.func = func

    def __call__(self, args: Any = None, processing_class: Any = None) -> RewardFunc:
        return self.func


REWARDS: dict[str, RewardBuilder] = {
    # JustRL's reward (the recipe's default) and the paper's two ablations
    "dapo_strict": _Fixed(dapo_strict),
    "dapo_overlong_penalty": dapo.overlong_penalty_from_config,
    "robust_math": dapo.robust_math_from_config,
    # Open-RS: as it ran, and the corrected cosine
    "open_rs_format": _Fixed(open_rs_format),
    "open_rs_accuracy": open_rs.open_rs_accuracy_from_config,
    "open_rs_cosine_as_run": open_rs.open_rs_cosine_as_run_from_config,
    "open_rs_cosine": open_rs.open_rs_cosine_from_config,
}


def register_reward(name: str) -> Callable[[RewardFunc], RewardFunc]:
    """Decorator: add a TRL reward function (no settings) to `REWARDS` under `name`, so recipes can name it."""

    def decorator(func: RewardFunc) -> RewardFunc:
        existing = REWARDS.get(name)
        if existing is not None and not (isinstance(existing, _Fixed) and existing.func is func):
            raise ValueError(f"A reward named {name!r} is already registered.")
        REWARDS[name] = _Fixed(func)
        return func

    return decorator


def available_rewards() -> list[str]:
    """The registered reward names."""
    return sorted(REWARDS)


def get_reward_funcs(names: Sequence[str] | str, args: Any = None, processing_class: Any = None) -> list[RewardFunc]:
    """The reward functions of `names`, built from the run's config `args` (and the tokenizer, where a reward counts
    tokens without TRL's `completion_ids`); an unknown name is a KeyError listing the registered ones."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise KeyError(f"Unknown reward function(s) {unknown}; registered: {available_rewards()}.")
    funcs = []
    for name in names:
        builder = REWARDS[name]
        if args is None and not isinstance(builder, _Fixed):
            raise ValueError(
                f"The reward {name!r} takes its settings from the training config: call "
                f"get_reward_funcs({names!r}, args=JustRLConfig(...)) (the trainers do this for you)."
            )
        func = builder(args, processing_class)
        if not isinstance(builder, _Fixed):
            func.__name__ = name  # TRL logs rewards/<__name__>/mean
        funcs.append(func)
    return funcs


__all__ = [
    "BOX_OPENER",
    "REWARDS",
    "CosineScaledAccuracy",
    "DapoOverlongPenalty",
    "DapoRewardSettings",
    "OpenRSAccuracy",
    "OpenRSCosineAsRun",
    "OpenRSRewardSettings",
    "RobustMathVerifier",
    "Verdict",
    "available_rewards",
    "completion_text",
    "cosine_scaled_reward",
    "dapo_score",
    "dapo_strict",
    "dapo_verify",
    "get_reward_funcs",
    "last_boxed_content",
    "open_rs_format",
    "overlong_penalty",
    "register_reward",
]
