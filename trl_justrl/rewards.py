"""Rewards: the strict DAPO rule-based verifier and a small name -> TRL reward function registry.

The verifier follows the recipe exactly (RECIPE.md, "Reward"): look at the last 300 characters of the response, of
those the last 100; take the last `\\boxed{` there with its brace-matched closing brace; the content must equal the
ground-truth string exactly. Correct: +1.0, otherwise -1.0. No normalisation, no symbolic math.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

RESPONSE_WINDOW_CHARS = 300  # RECIPE: only the last 300 characters of the decoded response are looked at
BOX_WINDOW_CHARS = 100  # RECIPE: of those, the last 100
CORRECT_SCORE = 1.0  # RECIPE: reward +1.0 when correct
INCORRECT_SCORE = -1.0  # RECIPE: reward -1.0 otherwise
BOX_OPENER = "\\boxed{"

RewardFunc = Callable[..., list[float]]


@dataclass(frozen=True)
class Verdict:
    """What the verifier reports: the score, 0/1 accuracy and the extracted prediction (None if no box)."""

    score: float
    accuracy: float
    prediction: str | None


def last_boxed_content(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text`, braces matched by counting; None without a closed box."""
    start = text.rfind(BOX_OPENER)
    if start < 0:
        return None
    depth = 0
    for i in range(start + len(BOX_OPENER) - 1, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(BOX_OPENER) : i]
    return None


def dapo_verify(response: str, ground_truth: str) -> Verdict:
    """Strict DAPO verification of one response against its ground-truth string."""
    window = response[-RESPONSE_WINDOW_CHARS:][-BOX_WINDOW_CHARS:]
    prediction = last_boxed_content(window)
    correct = prediction is not None and prediction == str(ground_truth)
    return Verdict(CORRECT_SCORE if correct else INCORRECT_SCORE, float(correct), prediction)


def dapo_score(response: str, ground_truth: str) -> float:
    """+1.0 if the response's last box (in its last 100 characters) equals `ground_truth` exactly, else -1.0."""
    return dapo_verify(response, ground_truth).score


# ---- TRL reward functions ------------------------------------------------------------------------------------

GROUND_TRUTH_COLUMNS = ("ground_truth", "reward_model", "answer")


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a list of chat messages (assistant turns concatenated)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if m.get("role", "assistant") == "assistant")
    raise TypeError(f"A completion must be text or a list of chat messages, got {type(completion).__name__}.")


def ground_truths(columns: dict[str, Any], n: int) -> list[str]:
    """Ground truths for a batch from whichever layout the data has: `ground_truth`, verl `reward_model`, `answer`."""
    if columns.get("ground_truth") is not None:
        values = columns["ground_truth"]
    elif columns.get("reward_model") is not None:
        values = [rm.get("ground_truth") if isinstance(rm, dict) else None for rm in columns["reward_model"]]
    elif columns.get("answer") is not None:
        values = columns["answer"]
    else:
        present = sorted(k for k in columns if k not in ("trainer_state", "log_extra", "log_metric"))
        raise KeyError(
            f"No ground truth in the batch: expected one of the columns {list(GROUND_TRUTH_COLUMNS)} "
            f"(reward_model as a dict with 'ground_truth'); the batch has {present}."
        )
    if len(values) != n:
        raise ValueError(f"Got {len(values)} ground truths for {n} completions.")
    missing = [i for i, v in enumerate(values) if v is None or str(v) == ""]
    if missing:
        raise ValueError(f"Empty or missing ground truth for completions {missing[:10]} of the batch.")
    return [str(v) for v in values]


_REGISTRY: dict[str, RewardFunc] = {}


def register_reward(name: str) -> Callable[[RewardFunc], RewardFunc]:
    """Register a TRL reward function under `name`, so recipes can refer to it (`reward_funcs: [name]`)."""

    def decorator(func: RewardFunc) -> RewardFunc:
        if name in _REGISTRY and _REGISTRY[name] is not func:
            raise ValueError(f"A reward named {name!r} is already registered ({_REGISTRY[name].__qualname__}).")
        _REGISTRY[name] = func
        return func

    return decorator


def available_rewards() -> list[str]:
    """Names of the registered reward functions."""
    return sorted(_REGISTRY)


def get_reward_funcs(names: Sequence[str]) -> list[RewardFunc]:
    """Look up reward functions by name; an unknown name is an error that lists the known ones."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise KeyError(f"Unknown reward function(s) {unknown}; registered: {available_rewards()}.")
    return [_REGISTRY[n] for n in names]


@register_reward("dapo_strict")
def dapo_strict(completions: list[Any], log_metric=None, log_extra=None, **columns: Any) -> list[float]:
    """TRL reward: strict DAPO score (+1 / -1) per completion; logs `accuracy` and the extracted predictions."""
    truths = ground_truths(columns, len(completions))
    verdicts = [dapo_verify(completion_text(c), gt) for c, gt in zip(completions, truths, strict=True)]
    if log_metric is not None and verdicts:
        log_metric("accuracy", sum(v.accuracy for v in verdicts) / len(verdicts))
    if log_extra is not None:
        log_extra("prediction", [v.prediction for v in verdicts])
    return [v.score for v in verdicts]
