"""Open-RS's accuracy and cosine rewards as they ran (knoveleng/open-rs `src/open_r1/rewards.py`), for `trainer: grpo`.

Both grade like the original: the gold is the first LaTeX answer math-verify finds in the row's `solution` (the full
worked solution, not the short `answer`); the prediction is parsed from the completion as LaTeX with boxed answers
tried first; math-verify's `verify` decides. A gold that does not parse gives 1.0 to every completion of that row (the
original's rule, kept for fidelity); how often is logged as `open_rs/gold_unparsed` and counted on the reward object.
Only LaTeX extraction is used, so model text is never evaluated (no sympy `parse_expr`).

`open_rs_cosine_as_run` keeps the original's two quirks: length counts characters of the completion text (the
recipes' `cosine_max_len` of 3,584 characters is reached by ~1,000 tokens, far below the 3,584-token cap), and
progress is not clamped, so past `cosine_max_len` the cosine turns back up (a wrong answer's penalty shrinks again, a
right answer's reward grows again). The project's corrected variant is `open_rs_cosine` (tokens, clamped; rewards.py).
Importing `trl_justrl` registers these rewards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from latex2sympy2_extended import NormalizationConfig
from math_verify import LatexExtractionConfig, parse, verify

from .rewards import (
    _as_int,
    completion_text,
    cosine_scaled_reward,
    cosine_settings,
    cosine_values,
    register_reward_factory,
)
from .shared.answers import DataError
from .shared.grading import math_verify_timeout

logger = logging.getLogger(__name__)

ACCURACY_CORRECT = 1.0  # Open-RS accuracy reward: 1.0 when math-verify accepts the prediction
ACCURACY_WRONG = 0.0  # Open-RS accuracy reward: 0.0 otherwise
UNPARSED_GOLD_REWARD = 1.0  # Open-RS: "If the gold solution is not parseable, we reward 1 to skip this example"
GOLD_UNPARSED_METRIC = "open_rs/gold_unparsed"
_EQUATIONS_NOTICE = "equations=True in NormalizationConfig is deprecated"


class _QuietEquationsNotice(logging.Filter):
    """latex2sympy warns on every parse that `equations=True` (which Open-RS set, and which still splits `a = b`
    answers) is deprecated; the setting is kept for fidelity and the repeated notice dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _EQUATIONS_NOTICE not in record.getMessage()


logging.getLogger("latex2sympy2_extended.math_normalization").addFilter(_QuietEquationsNotice())


def parse_gold(solution: str) -> list:
    """The first LaTeX answer of a worked solution, as Open-RS parsed it ([] when none parses)."""
    return parse(solution, extraction_mode="first_match", extraction_config=[LatexExtractionConfig()],
                 parsing_timeout=math_verify_timeout())


def parse_prediction(text: str, *, boxed: str | bool = "all") -> list:
    """The completion's answer as Open-RS parsed it: LaTeX only, boxed answers first, no unanchored extraction.

    The accuracy reward normalised with `boxed="all"`, the cosine reward with `boxed=True`, as in the original."""
    config = LatexExtractionConfig(
        normalization_config=NormalizationConfig(
            nits=False, malformed_operators=False, basic_latex=True, equations=True, boxed=boxed, units=True
        ),
        boxed_match_priority=0,
        try_extract_without_anchor=False,
    )
    return parse(text, extraction_config=[config], extraction_mode="first_match", parsing_timeout=math_verify_timeout())


def is_correct(gold: list, prediction: list) -> bool:
    """math-verify's verdict; an exception inside it counts as wrong (the accuracy reward's own rule)."""
    try:
        return bool(verify(gold, prediction, timeout_seconds=math_verify_timeout()))
    except Exception as exc:  # noqa: BLE001 - math-verify raises many types on odd inputs
        logger.debug("verify failed (%s): counted as wrong", exc)
        return False


def solutions(columns: dict[str, Any], n: int, reward: str) -> list[str]:
    """The `solution` column TRL passes to a reward, checked: Open-RS's rewards read the worked solution."""
    values = columns.get("solution")
    if values is None:
        raise DataError(
            f"Reward {reward!r} reads the Open-RS `solution` column (a worked solution whose first LaTeX answer is "
            f"the gold); this data has none (columns passed: {sorted(k for k in columns if k != 'trainer_state')}). "
            "Use Open-RS data (knoveleng/open-rs, open-s1, open-deepscaler) or rows with a `solution` field."
        )
    if len(values) != n:
        raise DataError(f"Reward {reward!r}: {len(values)} solutions for {n} completions.")
    return ["" if v is None else str(v) for v in values]


class _OpenRSGrader:
    """Open-RS's grading of a batch: gold from the solution, LaTeX prediction, math-verify; counts and logs how
    often the gold did not parse (rewarded 1.0 by the original rule)."""

    name: str

    def __init__(self) -> None:
        self.scored = 0
        self.gold_unparsed = 0
        self._gold_cache: dict[str, list] = {}

    def gold(self, solution: str) -> list:
        if solution not in self._gold_cache:
            if len(self._gold_cache) > 4096:
                self._gold_cache.clear()
            self._gold_cache[solution] = parse_gold(solution)
        return self._gold_cache[solution]

    def grade(self, completions: list[Any], columns: dict[str, Any], log_metric: Any, *, boxed: str | bool
              ) -> list[tuple[str, bool, bool]]:
        """(text, gold parsed, correct) per completion, as Open-RS graded; logs the counts (see `count`)."""
        graded = []
        for text, solution in zip(map(completion_text, completions),
                                  solutions(columns, len(completions), self.name), strict=True):
            gold = self.gold(solution)
            graded.append((text, bool(gold), bool(gold) and is_correct(gold, parse_prediction(text, boxed=boxed))))
        self.count([not ok for _, ok, _ in graded], [right for _, _, right in graded], log_metric)
        return graded

    def count(self, unparsed: Sequence[bool], correct: Sequence[bool], log_metric: Any) -> None:
        """Log the unparsed-gold rate, and `accuracy` (verified correct among rows whose gold parsed)."""
        graded = [ok for ok, skipped in zip(correct, unparsed, strict=True) if not skipped]
        if log_metric is not None and graded:
            log_metric("accuracy", sum(graded) / len(graded))
        self.scored += len(unparsed)
        self.gold_unparsed += sum(unparsed)
        if any(unparsed):
            logger.warning("%s: %d of %d completions have a gold solution math-verify cannot parse; rewarded %.1f "
                           "(Open-RS's rule).", self.name, sum(unparsed), len(unparsed), UNPARSED_GOLD_REWARD)
        if log_metric is not None and unparsed:
            log_metric(GOLD_UNPARSED_METRIC, sum(unparsed) / len(unparsed))


class OpenRSAccuracy(_OpenRSGrader):
    """TRL reward: Open-RS's accuracy reward, 1.0 / 0.0 by math-verify against the solution's first LaTeX answer."""

    def __init__(self) -> None:
        super().__init__()
        self.name = self.__name__ = "open_rs_accuracy"

    def __call__(self, completions: list[Any], log_metric=None, **columns: Any) -> list[float]:
        return [UNPARSED_GOLD_REWARD if not gold_ok else ACCURACY_CORRECT if right else ACCURACY_WRONG
                for _, gold_ok, right in self.grade(completions, columns, log_metric, boxed="all")]


class OpenRSCosineAsRun(_OpenRSGrader):
    """TRL reward: Open-RS's cosine length-scaled accuracy exactly as it ran (characters, unclamped progress)."""

    def __init__(self, max_len: int, **values: float):
        """`values`: min_value_wrong, max_value_wrong, min_value_correct, max_value_correct (open-r1's names)."""
        super().__init__()
        self.max_len = _as_int("cosine_max_len", max_len, minimum=1)
        self.values = cosine_values(**values)
        self.name = self.__name__ = "open_rs_cosine_as_run"

    def __call__(self, completions: list[Any], log_metric=None, **columns: Any) -> list[float]:
        return [
            cosine_scaled_reward(right, len(text), self.max_len, clamp=False, **self.values) if gold_ok
            else UNPARSED_GOLD_REWARD
            for text, gold_ok, right in self.grade(completions, columns, log_metric, boxed=True)
        ]


# A factory each (a fresh unparsed-gold counter per run), registered under the names the recipes use.
@register_reward_factory("open_rs_accuracy")
def open_rs_accuracy_from_config(args: Any = None, processing_class: Any = None) -> OpenRSAccuracy:
    return OpenRSAccuracy()


@register_reward_factory("open_rs_cosine_as_run")
def open_rs_cosine_as_run_from_config(args: Any, processing_class: Any = None) -> OpenRSCosineAsRun:
    max_len, values = cosine_settings(args, "open_rs_cosine_as_run")
    return OpenRSCosineAsRun(max_len, **values)
