"""Math answers: the last `\\boxed{}` of a response, a data row's ground truth, and the rule-based grader.

The bottom of the package: it imports nothing else of the project (training rewards and evaluation both use it).
"""

from .answers import DataError, last_boxed_content, row_ground_truth
from .grader import DEFAULT_TIMEOUT_S, extract_answer, grade_answer, grade_many, normalize_answer

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DataError",
    "extract_answer",
    "grade_answer",
    "grade_many",
    "last_boxed_content",
    "normalize_answer",
    "row_ground_truth",
]
