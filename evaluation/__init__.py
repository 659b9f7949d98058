"""The paper's evaluation: nine benchmarks, avg@N sampling, rule-based grading (+ optional CompassVerifier)."""

from trl_justrl.shared.grading import grade_answer

__all__ = ["grade_answer"]
