"""Rule-based math grading: last boxed answer, normalisation, symbolic equivalence (math-verify), time-limited.

Model text is never executed: only LaTeX extraction is used (an ANTLR parser, no `eval`), never sympy's
`parse_expr`. The time limit uses math-verify's SIGALRM timer, so it applies in the main thread; elsewhere the
item is graded by exact string match of the normalised answers only.
"""

from __future__ import annotations

import re
import threading

from math_verify import LatexExtractionConfig, parse, verify

from .answers import last_boxed_content, unbox_ground_truth

DEFAULT_TIMEOUT_S = 5  # per parse and per comparison
_EXTRACTION = [LatexExtractionConfig(boxed_match_priority=0)]
_SPACES = re.compile(r"\s+")
_TEXT_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")


def normalize_answer(answer: str) -> str:
    """A light normalisation for the fast exact check: no spaces, no `\\left`/`\\right`, `\\dfrac` -> `\\frac`."""
    answer = _TEXT_WRAPPERS.sub(r"\1", answer)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\!", ""),
                     ("\\,", ""), ("$", "")):
        answer = answer.replace(old, new)
    return _SPACES.sub("", answer).rstrip(".")


def extract_answer(response: str) -> str | None:
    """The content of the response's last `\\boxed{...}` (None when it has no closed box)."""
    return last_boxed_content(response)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def grade_answer(response: str, ground_truth: str, *, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """True when the response's last boxed answer equals the ground truth, exactly or symbolically."""
    predicted = extract_answer(response)
    if predicted is None or not predicted.strip():
        return False
    gold = unbox_ground_truth(str(ground_truth).strip())
    if not gold:
        raise ValueError("grade_answer: the ground truth is empty.")
    if normalize_answer(predicted) == normalize_answer(gold):
        return True
    if not _in_main_thread():
        return False
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", extraction_config=_EXTRACTION, parsing_timeout=timeout_s)
        pred_parsed = parse(f"\\boxed{{{predicted}}}", extraction_config=_EXTRACTION, parsing_timeout=timeout_s)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))
    except Exception:  # math-verify raises on pathological input and on timeouts: not equivalent
        return False
