"""JustRL's reward, the strict DAPO verifier, and the two rewards of the paper's ablations (DAPO's soft overlong
penalty, a symbolic "robust" verifier).

Source: DAPO's rule-based verifier as the JustRL script ran it (verl `math_dapo`, strict mode; JustRL paper, sec. 3)
and DAPO's overlong reward shaping (DAPO paper, sec. 3.4); the ablations are JustRL's sec. 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..grading.answers import last_boxed_content
from ..grading.grader import extract_answer
from .inputs import (
    as_int,
    completion_lengths,
    completion_text,
    grade_texts,
    grader_timeout,
    ground_truths,
    setting,
)

RESPONSE_WINDOW_CHARS = 300  # RECIPE: only the last 300 characters of the decoded response are looked at
BOX_WINDOW_CHARS = 100  # RECIPE: of those, the last 100
CORRECT_SCORE = 1.0  # RECIPE: reward +1.0 when correct
INCORRECT_SCORE = -1.0  # RECIPE: reward -1.0 otherwise
OVERLONG_BUFFER_TOKENS = 4096  # RECIPE: overlong-penalty ablation, buffer B = 4,096 tokens (expected length L_max - B)
OVERLONG_PENALTY_FACTOR = 1.0  # RECIPE: overlong-penalty ablation, penalty factor 1.0


@dataclass(frozen=True)
class Verdict:
    """What the verifier reports: the score, 0/1 accuracy and the extracted prediction (None if no box)."""

    score: float
    accuracy: float
    prediction: str | None


def dapo_verify(response: str, ground_truth: str) -> Verdict:
    """Strict DAPO verification: the last `\\boxed{}` in the last 100 of the last 300 characters must equal the
    ground-truth string exactly (no normalisation): +1.0, else -1.0."""
    window = response[-RESPONSE_WINDOW_CHARS:][-BOX_WINDOW_CHARS:]
    prediction = last_boxed_content(window)
    correct = prediction is not None and prediction == str(ground_truth)
    return Verdict(CORRECT_SCORE if correct else INCORRECT_SCORE, float(correct), prediction)


def dapo_score(response: str, ground_truth: str) -> float:
    """+1.0 if the response's last box (in its last 100 characters) equals `ground_truth` exactly, else -1.0."""
    return dapo_verify(response, ground_truth).score


def dapo_strict(completions: list[Any], log_metric=None, log_extra=None, **columns: Any) -> list[float]:
    """TRL reward: strict DAPO score (+1 / -1) per completion; logs `accuracy` and the extracted predictions."""
    truths = ground_truths(columns, len(completions))
    verdicts = [dapo_verify(completion_text(c), gt) for c, gt in zip(completions, truths, strict=True)]
    if log_metric is not None and verdicts:
        log_metric("accuracy", sum(v.accuracy for v in verdicts) / len(verdicts))
    if log_extra is not None:
        log_extra("prediction", [v.prediction for v in verdicts])
    return [v.score for v in verdicts]


@dataclass
class DapoRewardSettings:
    """Settings of the ablation rewards (both trainers' configs inherit these fields); a reward is on only when its
    name is in `reward_funcs`. Reward choices, not objective changes: JustRLTrainer accepts any of them."""

    overlong_buffer_length: int = field(
        default=OVERLONG_BUFFER_TOKENS,  # RECIPE: overlong-penalty ablation, buffer B
        metadata={
            "help": "Reward `dapo_overlong_penalty`: buffer B in tokens. Responses longer than "
            "max_completion_length - B get a penalty falling linearly from 0 to -overlong_penalty_factor at "
            "max_completion_length."
        },
    )
    overlong_penalty_factor: float = field(
        default=OVERLONG_PENALTY_FACTOR,  # RECIPE: overlong-penalty ablation, factor
        metadata={"help": "Reward `dapo_overlong_penalty`: the penalty at max_completion_length is -factor."},
    )
    robust_verifier_timeout_s: int | None = field(
        default=None,  # the grader's own limit (grading.grader.DEFAULT_TIMEOUT_S): training and evaluation alike
        metadata={
            "help": "Rewards `robust_math` and `open_rs_cosine`: seconds allowed to grade one response (all its "
            "parses and comparisons together), in any thread; past it the response counts as wrong. Null: "
            "trl_justrl.grading.grader.DEFAULT_TIMEOUT_S."
        },
    )

    def check_reward_settings(self) -> None:
        """Range checks (the rewards check the settings against each other when built)."""
        positive = {"overlong_buffer_length": self.overlong_buffer_length,
                    "robust_verifier_timeout_s": self.robust_verifier_timeout_s}
        wrong: dict[str, Any] = {name: value for name, value in positive.items() if value is not None and value < 1}
        if self.overlong_penalty_factor < 0:
            wrong["overlong_penalty_factor"] = self.overlong_penalty_factor
        if wrong:
            raise ValueError(f"Reward settings out of range: {wrong}; lengths and time limits must be at least 1, "
                             "the overlong penalty factor at least 0.")


def overlong_penalty(
    length: int, max_length: int, buffer: int = OVERLONG_BUFFER_TOKENS, factor: float = OVERLONG_PENALTY_FACTOR
) -> float:
    """DAPO's soft overlong punishment of a response of `length` tokens, added to its score.

    0 up to the expected length L_max - B; over it -(l - (L_max - B)) / B * factor, reaching -factor at L_max and
    clamped there beyond (a run capped at max_completion_length never goes beyond).
    Arguments: integers with 0 <= length, 1 <= buffer <= max_length; factor a finite number >= 0.
    """
    length = as_int("length", length, minimum=0)
    max_length = as_int("max_length", max_length, minimum=1)
    buffer = as_int("buffer", buffer, minimum=1)
    if buffer > max_length:
        raise ValueError(
            f"buffer ({buffer}) must not exceed max_length ({max_length}): the expected length max_length - buffer "
            "would be negative."
        )
    factor = float(factor)
    if not math.isfinite(factor) or factor < 0:
        raise ValueError(f"factor must be a finite number >= 0, got {factor}.")
    excess = min(length, max_length) - (max_length - buffer)
    return -(excess / buffer) * factor if excess > 0 else 0.0


class DapoOverlongPenalty:
    """TRL reward: the DAPO overlong penalty (0 down to -factor) of each completion's token length.

    TRL sums the weighted rewards, so listing it after the verifier (`reward_funcs: [dapo_strict,
    dapo_overlong_penalty]`) adds the penalty to the score, as DAPO does. Logs `overlong/penalized_fraction`.
    """

    def __init__(self, max_length: int, buffer: int, factor: float, processing_class: Any = None):
        overlong_penalty(0, max_length, buffer, factor)  # invalid settings fail here, not at the first batch
        self.max_length, self.buffer, self.factor = max_length, buffer, float(factor)
        self.processing_class = processing_class
        self.__name__ = "dapo_overlong_penalty"

    def __call__(self, completions: list[Any], completion_ids=None, log_metric=None, **_: Any) -> list[float]:
        lengths = completion_lengths(completions, completion_ids, self.processing_class)
        penalties = [overlong_penalty(n, self.max_length, self.buffer, self.factor) for n in lengths]
        if log_metric is not None and lengths:
            over = sum(n > self.max_length - self.buffer for n in lengths)
            log_metric("overlong/penalized_fraction", over / len(lengths))
        return penalties


def overlong_penalty_from_config(args: Any, processing_class: Any = None) -> DapoOverlongPenalty:
    """`dapo_overlong_penalty` with L_max = max_completion_length and the run's buffer and factor."""
    max_length = setting(args, "max_completion_length")
    buffer = setting(args, "overlong_buffer_length")
    if max_length is None:
        raise ValueError("dapo_overlong_penalty needs max_completion_length (L_max) to be set.")
    if buffer > max_length:
        raise ValueError(
            f"overlong_buffer_length ({buffer}) exceeds max_completion_length ({max_length}); the overlong penalty "
            "needs an expected length max_completion_length - overlong_buffer_length >= 0."
        )
    return DapoOverlongPenalty(max_length, buffer, setting(args, "overlong_penalty_factor"), processing_class)


class RobustMathVerifier:
    """TRL reward: +1.0 / -1.0 from the evaluation's rule-based grader instead of strict DAPO matching.

    `trl_justrl.grading.grader.grade_answer`: the last `\\boxed{}` anywhere in the response, symbolic equivalence with
    math-verify (`\\frac{1}{2}` = `0.5`), the grader's policy on lists, order, bases and units; each parse and
    comparison limited to `timeout_s` seconds. Logs `accuracy` and the predictions, as dapo_strict does: use one of
    the two.
    """

    def __init__(self, timeout_s: int):
        self.timeout_s = as_int("timeout_s", timeout_s, minimum=1)
        self.__name__ = "robust_math"

    def __call__(self, completions: list[Any], log_metric=None, log_extra=None, **columns: Any) -> list[float]:
        truths = ground_truths(columns, len(completions))
        texts = [completion_text(c) for c in completions]
        correct = grade_texts(texts, truths, self.timeout_s, columns.get("prompts"))
        if log_metric is not None and correct:
            log_metric("accuracy", sum(correct) / len(correct))
        if log_extra is not None:
            log_extra("prediction", [extract_answer(t) for t in texts])
        return [CORRECT_SCORE if ok else INCORRECT_SCORE for ok in correct]


def robust_math_from_config(args: Any, processing_class: Any = None) -> RobustMathVerifier:
    """`robust_math` with the run's grader time limit."""
    return RobustMathVerifier(grader_timeout(args))
