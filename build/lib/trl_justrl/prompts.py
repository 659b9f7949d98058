"""Prompts: JustRL's suffix (after a blank line in training and in-training validation, after a space in the
evaluation script) and Open-RS's evaluation template (lighteval's math prompt, knoveleng/open-rs
`src/open_r1/evaluate.py`)."""

from __future__ import annotations

PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."  # RECIPE: prompt suffix
# RECIPE: the released script's data loader (verl rl_dataset.py) appends the suffix after a blank line, to the
# training and to the validation files alike; its evaluation script (evals/gen_vllm.py) after a space
TRAIN_SUFFIX_SEPARATOR = "\n\n"
EVAL_PROMPT_SEPARATOR = " "


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
VALIDATION_STYLE = "justrl-validation"
PROMPT_STYLES = ("justrl", VALIDATION_STYLE, "open-rs")


def eval_messages(problem: str, style: str = "justrl") -> list[dict[str, str]]:
    """The user turn of a benchmark problem: `justrl`, as the paper's evaluation script (problem, a space, the
    suffix); `justrl-validation`, as the script's in-training validation (problem, a blank line, the suffix); or
    `open-rs`, Open-RS's lighteval template."""
    if style == "justrl":
        return [{"role": "user", "content": with_suffix(problem, EVAL_PROMPT_SEPARATOR)}]
    if style == VALIDATION_STYLE:
        return [{"role": "user", "content": with_suffix(problem, TRAIN_SUFFIX_SEPARATOR)}]
    if style == "open-rs":
        return [{"role": "user", "content": OPEN_RS_EVAL_TEMPLATE.format(problem=problem)}]
    raise ValueError(f"Unknown prompt style {style!r}; known: {', '.join(PROMPT_STYLES)}.")
