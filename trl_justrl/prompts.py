"""Prompts: JustRL's suffix (after a blank line in training, after a space in evaluation) and Open-RS's evaluation
template (lighteval's math prompt, knoveleng/open-rs `src/open_r1/evaluate.py`)."""

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


# Open-RS's evaluation user turn (its lighteval task's MATH_QUERY_TEMPLATE), the problem in place of {problem}.
OPEN_RS_EVAL_TEMPLATE = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of the "
    "following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' (without quotes) "
    "where ANSWER is just the final number or expression that solves the problem. Think step by step before "
    "answering.\n\n{problem}"
)
PROMPT_STYLES = ("justrl", "open-rs")


def eval_messages(problem: str, style: str = "justrl") -> list[dict[str, str]]:
    """The evaluation user turn: JustRL's (problem, a space, the recipe suffix) or Open-RS's template."""
    if style == "justrl":
        return [{"role": "user", "content": with_suffix(problem, EVAL_PROMPT_SEPARATOR)}]
    if style == "open-rs":
        return [{"role": "user", "content": OPEN_RS_EVAL_TEMPLATE.format(problem=problem)}]
    raise ValueError(f"Unknown prompt style {style!r}; known: {', '.join(PROMPT_STYLES)}.")
