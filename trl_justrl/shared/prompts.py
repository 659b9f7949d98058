"""The recipe's prompt suffix and where it goes: after a blank line in training, after a space in evaluation."""

from __future__ import annotations

PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."  # RECIPE: prompt suffix
TRAIN_SUFFIX_SEPARATOR = "\n\n"  # RECIPE: the training data path appends the suffix after a blank line
EVAL_PROMPT_SEPARATOR = " "  # RECIPE: the evaluation script appends the suffix after a space


def with_suffix(problem: str, separator: str = TRAIN_SUFFIX_SEPARATOR) -> str:
    """The recipe's user turn: the problem text, the separator, then PROMPT_SUFFIX (never appended twice)."""
    problem = problem.rstrip()
    if problem.endswith(PROMPT_SUFFIX):
        return problem
    return f"{problem}{separator}{PROMPT_SUFFIX}"


def eval_messages(problem: str) -> list[dict[str, str]]:
    """The evaluation user turn: problem, a space, the recipe suffix."""
    return [{"role": "user", "content": with_suffix(problem, EVAL_PROMPT_SEPARATOR)}]
