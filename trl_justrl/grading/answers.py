"""Answers: the last `\\boxed{...}` of a response and a row's ground truth in the verl or plain data layout.

Training (the strict DAPO reward, the data loaders) and evaluation (the grader, the benchmark loader) read answers
the same way, through this module.
"""

from __future__ import annotations

from typing import Any

from ..data_errors import DataError

BOX_OPENER = "\\boxed{"


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


def unbox_ground_truth(truth: str) -> str:
    """`\\boxed{204}` -> `204` when the whole ground truth is one box (some released sets store it so)."""
    if truth.startswith(BOX_OPENER) and last_boxed_content(truth) == truth[len(BOX_OPENER) : -1]:
        return truth[len(BOX_OPENER) : -1]
    return truth


def row_ground_truth(row: dict[str, Any], *, where: str) -> str:
    """The answer of a row in any layout, unboxed: verl `reward_model.ground_truth`, plain `answer` (or
    `ground_truth`), or, as TRL's and open-r1's math data have it, the last `\\boxed{}` of a worked `solution`."""
    reward_model = row.get("reward_model")
    if isinstance(reward_model, dict) and "ground_truth" in reward_model:
        field, truth = "reward_model.ground_truth", reward_model["ground_truth"]
    elif "answer" in row:
        field, truth = "answer", row["answer"]
    elif "ground_truth" in row:
        field, truth = "ground_truth", row["ground_truth"]
    elif isinstance(row.get("solution"), str):  # TRL's and open-r1's math layout: the worked solution's last box
        field, truth = "solution", last_boxed_content(row["solution"])
        if truth is None:
            raise DataError(f"{where}: no answer: no 'answer' field, and field 'solution' has no \\boxed{{...}} "
                            "answer to take as the ground truth.")
    else:
        raise DataError(f"{where}: no answer (expected 'reward_model.ground_truth', 'answer', or a 'solution' with "
                        f"a \\boxed{{...}} answer; got {sorted(row)}).")
    if truth is None or (isinstance(truth, str) and not truth.strip()):
        raise DataError(f"{where}: field '{field}' is missing or empty.")
    if isinstance(truth, bool) or not isinstance(truth, (str, int, float)):
        raise DataError(
            f"{where}: field '{field}' must be one answer (text or a number), got {type(truth).__name__} "
            f"{str(truth)[:60]!r}; a list or a mapping would never match a response."
        )
    if isinstance(truth, float) and truth.is_integer():
        truth = int(truth)  # parquet may store integer answers as floats
    return unbox_ground_truth(str(truth).strip())
