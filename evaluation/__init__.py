"""The paper's evaluation: nine benchmarks, avg@N sampling, rule-based grading (+ optional CompassVerifier)."""

from .grader import grade_answer

__all__ = ["grade_answer"]
