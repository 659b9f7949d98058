"""Alias: the grader lives in `trl_justrl.shared.grading` (training's `robust_math` reward uses it too)."""

from trl_justrl.shared.grading import DEFAULT_TIMEOUT_S, extract_answer, grade_answer, normalize_answer

__all__ = ["DEFAULT_TIMEOUT_S", "extract_answer", "grade_answer", "normalize_answer"]
