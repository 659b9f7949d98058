"""Rewards: the strict DAPO rule-based verifier and a small name -> TRL reward function registry.

The verifier follows the recipe exactly (RECIPE.md, "Reward"): look at the last 300 characters of the response, of
those the last 100; take the last `\\boxed{` there with its brace-matched closing brace; the content must equal the
ground-truth string exactly. Correct: +1.0, otherwise -1.0. No normalisation, no symbolic math.

Besides it, the rewards of the ablation switches (off by default; see "Ablation rewards" below and JustRLConfig's
"Ablation switches"): the DAPO soft overlong penalty and a symbolic ("robust") verifier, the two ablations the paper
ran, and Open-RS's format and cosine length-scaled rewards. Rewards that need the run's settings are registered as
factories (`register_reward_factory`) and built from the JustRLConfig by `get_reward_funcs(names, args)`.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .shared.answers import BOX_OPENER as BOX_OPENER  # re-exported for reward writers
from .shared.answers import last_boxed_content
from .shared.grading import DEFAULT_TIMEOUT_S, extract_answer, grade_answer

logger = logging.getLogger(__name__)

RESPONSE_WINDOW_CHARS = 300  # RECIPE: only the last 300 characters of the decoded response are looked at
BOX_WINDOW_CHARS = 100  # RECIPE: of those, the last 100
CORRECT_SCORE = 1.0  # RECIPE: reward +1.0 when correct
INCORRECT_SCORE = -1.0  # RECIPE: reward -1.0 otherwise

RewardFunc = Callable[..., list[float]]


@dataclass(frozen=True)
class Verdict:
    """What the verifier reports: the score, 0/1 accuracy and the extracted prediction (None if no box)."""

    score: float
    accuracy: float
    prediction: str | None


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
# name -> factory(args, processing_class) building the reward function from the run's config (JustRLConfig)
RewardFactory = Callable[[Any, Any], RewardFunc]
_FACTORIES: dict[str, RewardFactory] = {}


def _check_free(name: str, obj: Any) -> None:
    existing = _REGISTRY.get(name) or _FACTORIES.get(name)
    if existing is not None and existing is not obj:
        raise ValueError(f"A reward named {name!r} is already registered ({existing.__qualname__}).")


def register_reward(name: str) -> Callable[[RewardFunc], RewardFunc]:
    """Register a TRL reward function under `name`, so recipes can refer to it (`reward_funcs: [name]`)."""

    def decorator(func: RewardFunc) -> RewardFunc:
        _check_free(name, func)
        _REGISTRY[name] = func
        return func

    return decorator


def register_reward_factory(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Register a reward that takes settings from the run's config: `factory(args, processing_class)` returns the
    TRL reward function. `get_reward_funcs(names, args)` (and so JustRLTrainer) builds it; the built function's
    `__name__` is `name`, which TRL uses in its logs (`rewards/<name>/mean`)."""

    def decorator(factory: RewardFactory) -> RewardFactory:
        _check_free(name, factory)
        _FACTORIES[name] = factory
        return factory

    return decorator


def available_rewards() -> list[str]:
    """Names of the registered reward functions (plain ones and those built from the config)."""
    return sorted({*_REGISTRY, *_FACTORIES})


def get_reward_funcs(names: Sequence[str], args: Any = None, processing_class: Any = None) -> list[RewardFunc]:
    """Look up reward functions by name; an unknown name is an error that lists the known ones.

    Rewards registered with `register_reward_factory` are built from `args` (the JustRLConfig) and, where they need
    to count tokens without TRL's `completion_ids`, `processing_class` (the tokenizer)."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in _REGISTRY and n not in _FACTORIES]
    if unknown:
        raise KeyError(f"Unknown reward function(s) {unknown}; registered: {available_rewards()}.")
    funcs = []
    for name in names:
        if name in _REGISTRY:
            funcs.append(_REGISTRY[name])
            continue
        if args is None:
            raise ValueError(
                f"The reward {name!r} takes its settings from the training config: call "
                f"get_reward_funcs({list(names)!r}, args=JustRLConfig(...)) (JustRLTrainer does this for you)."
            )
        func = _FACTORIES[name](args, processing_class)
        func.__name__ = name
        funcs.append(func)
    return funcs


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


# ---- Ablation rewards (off by default; RECIPE.md "Ablations the paper ran" and "The other seed: Open-RS") ---------

OVERLONG_BUFFER_TOKENS = 4096  # RECIPE: overlong-penalty ablation, buffer B = 4,096 tokens (expected length L_max - B)
OVERLONG_PENALTY_FACTOR = 1.0  # RECIPE: overlong-penalty ablation, penalty factor 1.0
THINK_CLOSE = "\n</think>\n"  # Open-RS format reward (knoveleng/open-rs src/open_r1/rewards.py): the closing tag
FORMAT_SCORE = 1.0  # Open-RS format reward: 1.0 when the reasoning is closed exactly once, else 0.0


@dataclass
class RewardSettings:
    """Settings of the ablation rewards, off by default (JustRLConfig inherits these fields).

    The recipe's reward is dapo_strict alone. An ablation reward is on when its name is in `reward_funcs` (TRL sums
    the rewards, weighted by its own `reward_weights`); these fields only set its parameters. They are reward choices,
    not objective changes, so the trainer accepts any of them.
    """

    overlong_buffer_length: int = field(
        default=OVERLONG_BUFFER_TOKENS,  # RECIPE: overlong-penalty ablation, buffer B (rewards.OVERLONG_BUFFER_TOKENS)
        metadata={
            "help": "Reward `dapo_overlong_penalty`: buffer B in tokens. Responses longer than "
            "max_completion_length - B get a penalty falling linearly from 0 to -overlong_penalty_factor at "
            "max_completion_length."
        },
    )
    overlong_penalty_factor: float = field(
        default=OVERLONG_PENALTY_FACTOR,  # RECIPE: overlong-penalty ablation, factor (rewards.OVERLONG_PENALTY_FACTOR)
        metadata={"help": "Reward `dapo_overlong_penalty`: the penalty at max_completion_length is -factor."},
    )
    robust_verifier_timeout_s: int | None = field(
        default=None,  # the shared grader's own limit (shared.grading.DEFAULT_TIMEOUT_S): train and eval alike
        metadata={
            "help": "Rewards `robust_math` and `open_rs_cosine`: seconds allowed to each math-verify parse and each "
            "comparison of one response (SIGALRM, main thread). Null: trl_justrl.shared.grading.DEFAULT_TIMEOUT_S."
        },
    )
    cosine_min_value_wrong: float = field(
        default=0.0,  # Open-RS: knoveleng/open-rs src/open_r1/grpo.py default (open-r1's own default is -1.0)
        metadata={"help": "Reward `open_rs_cosine`: a wrong answer's reward at length 0 (open-r1's naming)."},
    )
    cosine_max_value_wrong: float = field(
        default=-0.5,  # Open-RS: knoveleng/open-rs src/open_r1/grpo.py default
        metadata={"help": "Reward `open_rs_cosine`: a wrong answer's reward at cosine_max_len (open-r1's naming)."},
    )
    cosine_min_value_correct: float = field(
        default=0.5,  # Open-RS: knoveleng/open-rs src/open_r1/grpo.py default
        metadata={"help": "Reward `open_rs_cosine`: a correct answer's reward at cosine_max_len."},
    )
    cosine_max_value_correct: float = field(
        default=1.0,  # Open-RS: knoveleng/open-rs src/open_r1/grpo.py default
        metadata={"help": "Reward `open_rs_cosine`: a correct answer's reward at length 0."},
    )
    cosine_max_len: int | None = field(
        default=None,  # Open-RS Experiment 3 (README: `--cosine_max_len 3584`) sets it to its max_completion_length
        metadata={
            "help": "Reward `open_rs_cosine`: length in tokens where the cosine reaches its end value (clamped "
            "beyond). Null: max_completion_length."
        },
    )

    def check_reward_settings(self) -> None:
        """Range checks of the ablation rewards' settings (the rewards check them against each other when built)."""
        positive = {"overlong_buffer_length": self.overlong_buffer_length,
                    "robust_verifier_timeout_s": self.robust_verifier_timeout_s, "cosine_max_len": self.cosine_max_len}
        wrong = {name: value for name, value in positive.items() if value is not None and value < 1}
        if self.overlong_penalty_factor < 0:
            wrong["overlong_penalty_factor"] = self.overlong_penalty_factor
        if wrong:
            raise ValueError(f"Ablation settings out of range: {wrong}; lengths and time limits must be at least 1, "
                             "the overlong penalty factor at least 0.")


def _as_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}.") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    return value


def _setting(args: Any, name: str) -> Any:
    """A field of the run's config, with an error naming what is missing when `args` is not a JustRLConfig."""
    if not hasattr(args, name):
        raise TypeError(f"This reward reads {name!r} from a JustRLConfig; got a {type(args).__name__} without it.")
    return getattr(args, name)


def completion_lengths(completions: list[Any], completion_ids: Any = None, processing_class: Any = None) -> list[int]:
    """Token length of each completion: TRL's `completion_ids` when given (every generated token, up to and including
    the first EOS, as verl's DAPO counts the response), else the completion text tokenized without special tokens
    (one token fewer when the model stopped on EOS)."""
    if completion_ids is not None:
        if len(completion_ids) != len(completions):
            raise ValueError(f"Got {len(completion_ids)} completion_ids for {len(completions)} completions.")
        return [len(ids) for ids in completion_ids]
    if processing_class is None:
        raise ValueError(
            "Token lengths needed: TRL passes `completion_ids` to reward functions; without them, build the reward "
            "with a tokenizer (get_reward_funcs(names, args, processing_class=tokenizer))."
        )
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    return [len(tokenizer(completion_text(c), add_special_tokens=False)["input_ids"]) for c in completions]


def overlong_penalty(
    length: int, max_length: int, buffer: int = OVERLONG_BUFFER_TOKENS, factor: float = OVERLONG_PENALTY_FACTOR
) -> float:
    """DAPO's soft overlong punishment of a response of `length` tokens, added to its score.

    The expected length is L_max - B (`max_length - buffer`): up to it the penalty is 0; over it the penalty is
    -(l - (L_max - B)) / B * factor, reaching -factor at l = L_max. Beyond L_max (which a run capped at
    max_completion_length never produces) it stays at -factor: clamped, not extrapolated.
    Arguments: integers with 0 <= length, 1 <= buffer <= max_length; factor a finite number >= 0.
    """
    length = _as_int("length", length, minimum=0)
    max_length = _as_int("max_length", max_length, minimum=1)
    buffer = _as_int("buffer", buffer, minimum=1)
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


@register_reward_factory("dapo_overlong_penalty")
def _overlong_from_config(args: Any, processing_class: Any = None) -> DapoOverlongPenalty:
    max_length = _setting(args, "max_completion_length")
    buffer = _setting(args, "overlong_buffer_length")
    if max_length is None:
        raise ValueError("dapo_overlong_penalty needs max_completion_length (L_max) to be set.")
    if buffer > max_length:
        raise ValueError(
            f"overlong_buffer_length ({buffer}) exceeds max_completion_length ({max_length}); the overlong penalty "
            "needs an expected length max_completion_length - overlong_buffer_length >= 0."
        )
    return DapoOverlongPenalty(max_length, buffer, _setting(args, "overlong_penalty_factor"), processing_class)


def prompt_text(prompt: Any) -> str | None:
    """The last user turn of a TRL prompt (text or chat messages): the problem, for the grader's list policy."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users and isinstance(users[-1], str) else None
    return None


def _grade(texts: Sequence[str], truths: Sequence[str], timeout_s: int, prompts: Sequence[Any] | None) -> list[bool]:
    """The shared grader (trl_justrl.shared.grading.grade_answer) on each response: the evaluation's code too. Its
    time limit holds in any thread (TRL runs async reward functions elsewhere)."""
    problems = [prompt_text(p) for p in prompts] if prompts is not None else [None] * len(texts)
    triples = zip(texts, truths, problems, strict=True)
    return [grade_answer(text, truth, problem=problem, timeout_s=timeout_s) for text, truth, problem in triples]


def _timeout_from_config(args: Any, field_name: str = "robust_verifier_timeout_s") -> int:
    value = _setting(args, field_name)
    return _as_int(field_name, DEFAULT_TIMEOUT_S if value is None else value, minimum=1)


class RobustMathVerifier:
    """TRL reward: +1.0 / -1.0 from the evaluation's rule-based grader instead of strict DAPO matching.

    `trl_justrl.shared.grading.grade_answer`: the last `\\boxed{}` anywhere in the response, a light normalisation, then
    symbolic equivalence with math-verify (e.g. `\\frac{1}{2}` = `0.5`, `2\\sqrt{2}` = `\\sqrt{8}`), with the grader's
    policy on lists, order, bases, units and tolerance (the prompt decides whether a list may come in any order); each
    parse and comparison is limited to `timeout_s` seconds, in any thread. Logs `accuracy` and the extracted
    predictions, as dapo_strict does: use one of the two.
    """

    def __init__(self, timeout_s: int):
        self.timeout_s = _as_int("timeout_s", timeout_s, minimum=1)
        self.__name__ = "robust_math"

    def __call__(self, completions: list[Any], log_metric=None, log_extra=None, **columns: Any) -> list[float]:
        truths = ground_truths(columns, len(completions))
        texts = [completion_text(c) for c in completions]
        correct = _grade(texts, truths, self.timeout_s, columns.get("prompts"))
        if log_metric is not None and correct:
            log_metric("accuracy", sum(correct) / len(correct))
        if log_extra is not None:
            log_extra("prediction", [extract_answer(t) for t in texts])
        return [CORRECT_SCORE if ok else INCORRECT_SCORE for ok in correct]


@register_reward_factory("robust_math")
def _robust_from_config(args: Any, processing_class: Any = None) -> RobustMathVerifier:
    return RobustMathVerifier(_timeout_from_config(args))


def think_closed(text: str) -> bool:
    """Open-RS's format check: the response closes its reasoning with `\\n</think>\\n` exactly once (the chat
    template of the R1-distilled models already opens `<think>` in the prompt)."""
    return text.count(THINK_CLOSE) == 1


@register_reward("open_rs_format")
def open_rs_format(completions: list[Any], **_: Any) -> list[float]:
    """TRL reward (Open-RS's format reward): 1.0 when the reasoning is closed by `</think>` exactly once, else 0.0.

    It reads the decoded text; a tokenizer with a response parser that moves the reasoning out of `content` (TRL's
    `parse_response`) would hide the tag, so use it with plain decoding (the default for the R1-distilled models).
    """
    return [FORMAT_SCORE if think_closed(completion_text(c)) else 0.0 for c in completions]


COSINE_VALUE_FIELDS = ("min_value_wrong", "max_value_wrong", "min_value_correct", "max_value_correct")


def cosine_scaled_reward(
    correct: bool,
    length: int,
    max_len: int,
    *,
    min_value_wrong: float,
    max_value_wrong: float,
    min_value_correct: float,
    max_value_correct: float,
    clamp: bool = True,
) -> float:
    """open-r1's / Open-RS's cosine length-scaled accuracy reward of one response.

    With progress p = min(length / max_len, 1) and c = cos(pi * p) (1 at length 0, -1 at max_len):
    reward = at_max_len + (at_zero - at_max_len) * (1 + c) / 2, where for a correct answer at_zero =
    max_value_correct and at_max_len = min_value_correct (shorter right answers earn more), and for a wrong one
    at_zero = min_value_wrong and at_max_len = max_value_wrong (open-r1's naming, kept as is).
    `clamp=False` is the formula as Open-RS ran it: p = length / max_len unclamped, so past max_len the cosine turns
    back up (at 2 x max_len a response earns its length-0 value again). The `open_rs_cosine` reward clamps and counts
    tokens; `open_rs_cosine_as_run` (trl_justrl.open_rs) does neither, as the original.
    """
    length = _as_int("length", length, minimum=0)
    max_len = _as_int("max_len", max_len, minimum=1)
    progress = length / max_len
    cosine = math.cos(math.pi * (min(progress, 1.0) if clamp else progress))
    at_zero, at_max = (max_value_correct, min_value_correct) if correct else (min_value_wrong, max_value_wrong)
    return at_max + (at_zero - at_max) * (1.0 + cosine) / 2.0


def cosine_values(**values: Any) -> dict[str, float]:
    """A cosine reward's four end values (COSINE_VALUE_FIELDS), as finite floats; an error names any other."""
    if sorted(values) != sorted(COSINE_VALUE_FIELDS):
        raise TypeError(f"Cosine reward values are {list(COSINE_VALUE_FIELDS)}, got {sorted(values)}.")
    out = {k: float(v) for k, v in values.items()}
    bad = {k: v for k, v in out.items() if not math.isfinite(v)}
    if bad:
        raise ValueError(f"Cosine reward values must be finite numbers, got {bad}.")
    return out


class CosineScaledAccuracy:
    """TRL reward: Open-RS's cosine length-scaled accuracy, correctness from the evaluation's grader (symbolic,
    time-limited, as robust_math). Logs `cosine/accuracy`."""

    def __init__(
        self,
        max_len: int,
        *,
        min_value_wrong: float,
        max_value_wrong: float,
        min_value_correct: float,
        max_value_correct: float,
        timeout_s: int,
        processing_class: Any = None,
    ):
        self.max_len = _as_int("max_len", max_len, minimum=1)
        self.values = cosine_values(min_value_wrong=min_value_wrong, max_value_wrong=max_value_wrong,
                                    min_value_correct=min_value_correct, max_value_correct=max_value_correct)
        self.timeout_s = _as_int("timeout_s", timeout_s, minimum=1)
        self.processing_class = processing_class
        self.__name__ = "open_rs_cosine"

    def __call__(self, completions: list[Any], completion_ids=None, log_metric=None, **columns: Any) -> list[float]:
        truths = ground_truths(columns, len(completions))
        lengths = completion_lengths(completions, completion_ids, self.processing_class)
        correct = _grade([completion_text(c) for c in completions], truths, self.timeout_s, columns.get("prompts"))
        if log_metric is not None and correct:
            log_metric("cosine/accuracy", sum(correct) / len(correct))
        pairs = zip(correct, lengths, strict=True)
        return [cosine_scaled_reward(ok, n, self.max_len, **self.values) for ok, n in pairs]


def cosine_settings(args: Any, reward: str) -> tuple[int, dict[str, float]]:
    """A cosine reward's length scale (cosine_max_len, else max_completion_length) and its four end values."""
    max_len = _setting(args, "cosine_max_len")
    if max_len is None:
        max_len = _setting(args, "max_completion_length")
    if max_len is None:
        raise ValueError(f"{reward} needs cosine_max_len or max_completion_length to be set.")
    return max_len, {name: _setting(args, f"cosine_{name}") for name in COSINE_VALUE_FIELDS}


@register_reward_factory("open_rs_cosine")
def _cosine_from_config(args: Any, processing_class: Any = None) -> CosineScaledAccuracy:
    max_len, values = cosine_settings(args, "open_rs_cosine")
    return CosineScaledAccuracy(max_len, **values, timeout_s=_timeout_from_config(args),
                                processing_class=processing_class)
