"""What TRL hands a reward function, read the same way by every reward: completion text, ground truths, token
lengths, the problem, and the run's settings."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

from ..grading.grader import DEFAULT_TIMEOUT_S, grade_answer

RewardFunc = Callable[..., list[float]]
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


def as_int(name: str, value: Any, minimum: int) -> int:
    """`value` as an int of at least `minimum`; an error names the setting otherwise (bools are refused)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}.") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    return value


def setting(args: Any, name: str) -> Any:
    """A field of the run's config, with an error naming what is missing when `args` lacks it."""
    if not hasattr(args, name):
        raise TypeError(f"This reward reads {name!r} from the run's config; got a {type(args).__name__} without it.")
    return getattr(args, name)


def grader_timeout(args: Any) -> int:
    """Seconds per response (all its parses and comparisons) for the rewards that use the grader
    (`robust_verifier_timeout_s`)."""
    value = setting(args, "robust_verifier_timeout_s")
    return as_int("robust_verifier_timeout_s", DEFAULT_TIMEOUT_S if value is None else value, minimum=1)


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


def prompt_text(prompt: Any) -> str | None:
    """The last user turn of a TRL prompt (text or chat messages): the problem, for the grader's list policy."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users and isinstance(users[-1], str) else None
    return None


def grade_texts(texts: Sequence[str], truths: Sequence[str], timeout_s: int, prompts: Sequence[Any] | None
                ) -> list[bool]:
    """The project's grader (`trl_justrl.grading.grader.grade_answer`, the evaluation's code too) on each response; its
    time limit holds in any thread (TRL may run reward functions in threads)."""
    problems = [prompt_text(p) for p in prompts] if prompts is not None else [None] * len(texts)
    triples = zip(texts, truths, problems, strict=True)
    return [grade_answer(text, truth, problem=problem, timeout_s=timeout_s) for text, truth, problem in triples]
