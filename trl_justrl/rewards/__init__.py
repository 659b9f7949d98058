"""Reward functions by name: the one registry recipes refer to (`reward_funcs: [dapo_strict]`).

`REWARDS` maps each name to a builder `(args, processing_class) -> TRL reward function`; rewards without settings
ignore both. `register_reward` adds a user's own reward to the same table. The rewards themselves live in `dapo`
(JustRL's and its ablations') and `open_rs`; `inputs` is what TRL hands a reward.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import dapo, open_rs
from .inputs import RewardFunc

RewardBuilder = Callable[[Any, Any], RewardFunc]


class _Fixed:
    """The builder of a reward without settings: always the same function."""

    def __init__(self, func: RewardFunc):
        self.func = func

    def __call__(self, args: Any = None, processing_class: Any = None) -> RewardFunc:
        return self.func


REWARDS: dict[str, RewardBuilder] = {
    # JustRL's reward (the recipe's default) and the paper's two ablations
    "dapo_strict": _Fixed(dapo.dapo_strict),
    "dapo_overlong_penalty": dapo.overlong_penalty_from_config,
    "robust_math": dapo.robust_math_from_config,
    # Open-RS: as it ran, and the corrected cosine
    "open_rs_format": _Fixed(open_rs.open_rs_format),
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


# TRL's built-in reward functions, by the names `trl grpo --reward_funcs` takes (trl/scripts/grpo.py)
TRL_REWARDS = ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward")


def _import_path(spec: str) -> tuple[str, str] | None:
    """`package.module.function` or `package.module:function` as (module, attribute); None for other strings."""
    if ":" in spec:
        module, _, attribute = spec.partition(":")
    elif "." in spec:
        module, _, attribute = spec.rpartition(".")
    else:
        return None
    return (module, attribute) if module and attribute.isidentifier() else None


def reward_source(spec: str) -> str:
    """What a `reward_funcs` entry names, checked without building anything: "registered" (REWARDS), "trl" (one of
    TRL_REWARDS), "model" (an existing local folder or a Hub id `org/name`: a reward model, as TRL takes it) or
    "import" (`package.module.function` / `package.module:function`, importable, callable; the working directory is
    on the import path, as `trl grpo` puts it). Anything else is a ValueError naming the accepted forms."""
    if spec in REWARDS:
        return "registered"
    if spec in TRL_REWARDS:
        return "trl"
    if Path(spec).expanduser().is_dir():
        return "model"
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ValueError(f"reward_funcs: {spec!r} looks like a local reward-model folder, but there is no such folder "
                         f"(relative to {os.getcwd()}).")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):  # a Hub id org/name: a reward model TRL loads
        return "model"
    target = _import_path(spec)
    if target is None:
        raise ValueError(
            f"reward_funcs: {spec!r} is not a registered reward ({', '.join(available_rewards())}), not one of TRL's "
            f"({', '.join(TRL_REWARDS)}), not a local folder, a Hub id org/name (a reward model) or an import path "
            "package.module.function. A misspelt name?")
    _load(spec, *target)
    return "import"


def _load(spec: str, module_name: str, attribute: str) -> RewardFunc:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - a missing module, or one that fails while importing
        raise ValueError(
            f"reward_funcs: {spec!r}: cannot import {module_name!r} ({type(err).__name__}: {err}).") from err
    func = getattr(module, attribute, None)
    if not callable(func):
        raise ValueError(f"reward_funcs: {spec!r}: {module_name} has no function {attribute!r}.")
    return func


def resolve_reward(spec: Any, args: Any = None, processing_class: Any = None) -> Any:
    """One `reward_funcs` entry as TRL's GRPOTrainer takes it: callables and models pass through; a string is built
    (registered), looked up (TRL's, an import path) or kept for TRL to load (a reward model), per `reward_source`."""
    if not isinstance(spec, str):
        return spec
    source = reward_source(spec)
    if source == "registered":
        return get_reward_funcs([spec], args, processing_class)[0]
    if source == "trl":
        from trl import rewards as trl_rewards

        return getattr(trl_rewards, spec)
    if source == "import":
        return _load(spec, *_import_path(spec))
    return spec


class RewardFailed(RuntimeError):
    """A reward function raised; the message names the reward and the first sample it fails on."""


def _excerpt(value: Any, limit: int = 160) -> str:
    if isinstance(value, list) and value and isinstance(value[-1], dict):  # conversational: the last message
        value = value[-1].get("content", value[-1])
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


class NamingFailures:
    """A synchronous reward function whose exceptions name it and the first sample it fails on (RewardFailed, the
    original chained): the batch is scored again one sample at a time, metrics off, to find it. Keeps the function's
    name (TRL logs rewards/<name>/mean) and pickles when the function does."""

    def __init__(self, func: RewardFunc, name: str):
        self.func, self.__name__ = func, name

    def __getattr__(self, name: str) -> Any:  # the function's own attributes (a reward's settings) read through
        if name == "func" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.func, name)

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        try:
            return self.func(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any failure of a user's reward is reported the same way
            raise RewardFailed(self._describe(args, kwargs, err)) from err

    def _describe(self, args: tuple[Any, ...], kwargs: dict[str, Any], err: Exception) -> str:
        if args:  # called as f(completions, **columns)
            kwargs = kwargs | {"completions": args[0]}
        completions = kwargs.get("completions") or []
        n = len(completions)
        quiet = kwargs | {k: _ignore for k in ("log_metric", "log_extra") if k in kwargs}  # nothing logged twice
        for i in range(n):
            one = {k: v[i:i + 1] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in quiet.items()}
            try:
                self.func(**one)
            except Exception as alone:  # noqa: BLE001
                prompt = _excerpt(kwargs["prompts"][i]) if len(kwargs.get("prompts") or []) == n else "n/a"
                return (f"The reward {self.__name__!r} raised {type(alone).__name__}: {alone}, on sample {i} of the "
                        f"{n} in this batch (prompt {prompt}; completion {_excerpt(completions[i])}).")
        return (f"The reward {self.__name__!r} raised {type(err).__name__}: {err}, on a batch of {n} completions "
                "(no sample fails alone).")


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


__all__ = ["REWARDS", "TRL_REWARDS", "NamingFailures", "RewardFailed", "available_rewards", "get_reward_funcs",
           "register_reward", "resolve_reward", "reward_source"]
