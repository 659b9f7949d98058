"""Open-RS's rewards (knoveleng/open-rs `src/open_r1/rewards.py`, its paper's sec. 3 and Table 5) and their settings.

As they ran: `open_rs_format` (the reasoning closed by `\\n</think>\\n` exactly once), `open_rs_accuracy` and
`open_rs_cosine_as_run` (gold = the first LaTeX answer of the row's worked `solution`, prediction parsed as LaTeX with
boxed answers first, math-verify decides; a gold that does not parse rewards 1.0, the original's rule). The cosine as
run counts characters and does not clamp past `cosine_max_len`; `open_rs_cosine` is the project's corrected variant
(tokens, clamped, graded by `trl_justrl.grading`). Model text is never evaluated (LaTeX extraction only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from latex2sympy2_extended import NormalizationConfig
from math_verify import LatexExtractionConfig, parse, verify

from ..data_errors import DataError
from ..grading.grader import math_verify_timeout
from .inputs import as_int, completion_lengths, completion_text, grade_texts, grader_timeout, ground_truths, setting

logger = logging.getLogger(__name__)

THINK_CLOSE = "\n</think>\n"  # Open-RS format reward: the closing tag of the reasoning
FORMAT_SCORE = 1.0  # Open-RS format reward: 1.0 when the reasoning is closed exactly once, else 0.0

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


def is_correct(prediction: list, gold: list) -> bool:
    """math-verify's verdict in Open-RS's order, `verify(prediction, gold)` (verify is not symmetric: docs/open-rs.md
    gives how often the two orders disagree); an exception inside it counts as wrong."""
    try:
        return bool(verify(prediction, gold, timeout_seconds=math_verify_timeout()))
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
            graded.append((text, bool(gold), bool(gold) and is_correct(parse_prediction(text, boxed=boxed), gold)))
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
        self.max_len = as_int("cosine_max_len", max_len, minimum=1)
        self.values = cosine_values(**values)
        self.name = self.__name__ = "open_rs_cosine_as_run"

    def __call__(self, completions: list[Any], log_metric=None, **columns: Any) -> list[float]:
        return [
            cosine_scaled_reward(right, len(text), self.max_len, clamp=False, **self.values) if gold_ok
            else UNPARSED_GOLD_REWARD
            for text, gold_ok, right in self.grade(completions, columns, log_metric, boxed=True)
        ]



def think_closed(text: str) -> bool:
    """Open-RS's format check: the response closes its reasoning with `\\n</think>\\n` exactly once (the chat
    template of the R1-distilled models already opens `<think>` in the prompt)."""
    return text.count(THINK_CLOSE) == 1


def open_rs_format(completions: list[Any], **_: Any) -> list[float]:
    """TRL reward (Open-RS's format reward): 1.0 when the reasoning is closed by `</think>` exactly once, else 0.0.

    It reads the decoded text; a tokenizer with a response parser that moves the reasoning out of `content` (TRL's
    `parse_response`) would hide the tag, so use it with plain decoding (the default for the R1-distilled models).
    """
    return [FORMAT_SCORE if think_closed(completion_text(c)) else 0.0 for c in completions]


COSINE_VALUE_FIELDS = ("min_value_wrong", "max_value_wrong", "min_value_correct", "max_value_correct")


def cosine_scaled_reward(
    correct: bool,
    length: int,
    max_len: int,
    *,
    min_value_wrong: float,
    max_value_wrong: float,
    min_value_correct: float,
    max_value_correct: float,
    clamp: bool = True,
) -> float:
    """open-r1's / Open-RS's cosine length-scaled accuracy reward of one response.

    With progress p = min(length / max_len, 1) and c = cos(pi * p) (1 at length 0, -1 at max_len):
    reward = at_max_len + (at_zero - at_max_len) * (1 + c) / 2, where for a correct answer at_zero =
    max_value_correct and at_max_len = min_value_correct (shorter right answers earn more), and for a wrong one
    at_zero = min_value_wrong and at_max_len = max_value_wrong (open-r1's naming, kept as is).
    `clamp=False` is the formula as Open-RS ran it: p = length / max_len unclamped, so past max_len the cosine turns
    back up (at 2 x max_len a response earns its length-0 value again). The `open_rs_cosine` reward clamps and counts
    tokens; `open_rs_cosine_as_run` does neither, as the original.
    """
    length = as_int("length", length, minimum=0)
    max_len = as_int("max_len", max_len, minimum=1)
    progress = length / max_len
    cosine = math.cos(math.pi * (min(progress, 1.0) if clamp else progress))
    at_zero, at_max = (max_value_correct, min_value_correct) if correct else (min_value_wrong, max_value_wrong)
    return at_max + (at_zero - at_max) * (1.0 + cosine) / 2.0


def cosine_values(**values: Any) -> dict[str, float]:
    """A cosine reward's four end values (COSINE_VALUE_FIELDS), as finite floats; an error names any other."""
    if sorted(values) != sorted(COSINE_VALUE_FIELDS):
        raise TypeError(f"Cosine reward values are {list(COSINE_VALUE_FIELDS)}, got {sorted(values)}.")
    out = {k: float(v) for k, v in values.items()}
    bad = {k: v for k, v in out.items() if not math.isfinite(v)}
    if bad:
        raise ValueError(f"Cosine reward values must be finite numbers, got {bad}.")
    return out


class CosineScaledAccuracy:
    """TRL reward: Open-RS's cosine length-scaled accuracy, correctness from the evaluation's grader (symbolic,
    time-limited, as robust_math). Logs `cosine/accuracy`."""

    def __init__(
        self,
        max_len: int,
        *,
        min_value_wrong: float,
        max_value_wrong: float,
        min_value_correct: float,
        max_value_correct: float,
        timeout_s: int,
        processing_class: Any = None,
    ):
        self.max_len = as_int("max_len", max_len, minimum=1)
        self.values = cosine_values(min_value_wrong=min_value_wrong, max_value_wrong=max_value_wrong,
                                    min_value_correct=min_value_correct, max_value_correct=max_value_correct)
        self.timeout_s = as_int("timeout_s", timeout_s, minimum=1)
        self.processing_class = processing_class
        self.__name__ = "open_rs_cosine"

    def __call__(self, completions: list[Any], completion_ids=None, log_metric=None, **columns: Any) -> list[float]:
        truths = ground_truths(columns, len(completions))
        lengths = completion_lengths(completions, completion_ids, self.processing_class)
        correct = grade_texts([completion_text(c) for c in completions], truths, self.timeout_s, columns.get("prompts"))
        if log_metric is not None and correct:
            log_metric("cosine/accuracy", sum(correct) / len(correct))
        pairs = zip(correct, lengths, strict=True)
        return [cosine_scaled_reward(ok, n, self.max_len, **self.values) for ok, n in pairs]


@dataclass
class OpenRSRewardSettings:
    """The cosine rewards' settings (open-r1's names and Open-RS's defaults); only `trainer: grpo` configs
    (GRPORunConfig) carry them, so JustRL's --help does not list them (a JustRL run that names a cosine reward gets
    these defaults)."""

    cosine_min_value_wrong: float = field(
        default=0.0,  # Open-RS: knoveleng/open-rs src/open_r1/grpo.py default (open-r1's own default is -1.0)
        metadata={"help": "Cosine rewards: a wrong answer's reward at length 0 (open-r1's naming)."},
    )
    cosine_max_value_wrong: float = field(
        default=-0.5,  # Open-RS: knoveleng/open-rs src/open_r1/grpo.py default
        metadata={"help": "Cosine rewards: a wrong answer's reward at cosine_max_len (open-r1's naming)."},
    )
    cosine_min_value_correct: float = field(
        default=0.5,  # Open-RS: knoveleng/open-rs src/open_r1/grpo.py default
        metadata={"help": "Cosine rewards: a correct answer's reward at cosine_max_len."},
    )
    cosine_max_value_correct: float = field(
        default=1.0,  # Open-RS: knoveleng/open-rs src/open_r1/grpo.py default
        metadata={"help": "Cosine rewards: a correct answer's reward at length 0."},
    )
    cosine_max_len: int | None = field(
        default=None,  # Open-RS Experiment 3 (its README: `--cosine_max_len 3584`)
        metadata={
            "help": "Cosine rewards: the length where the cosine reaches its end value (tokens for open_rs_cosine, "
            "clamped beyond; characters for open_rs_cosine_as_run, as the original). Null: max_completion_length."
        },
    )

    def check_cosine_settings(self) -> None:
        if self.cosine_max_len is not None and self.cosine_max_len < 1:
            raise ValueError(f"Reward settings out of range: {{'cosine_max_len': {self.cosine_max_len}}}; it must be "
                             "at least 1, or null.")


def cosine_settings(args: Any, reward: str) -> tuple[int, dict[str, float]]:
    """A cosine reward's length scale (cosine_max_len, else max_completion_length) and its four end values, from
    `args` when it carries the cosine settings, else OpenRSRewardSettings' defaults."""
    source = args if hasattr(args, "cosine_max_len") else OpenRSRewardSettings()
    max_len = source.cosine_max_len
    if max_len is None:
        max_len = setting(args, "max_completion_length")
    if max_len is None:
        raise ValueError(f"{reward} needs cosine_max_len or max_completion_length to be set.")
    return max_len, {"min_value_wrong": source.cosine_min_value_wrong, "max_value_wrong": source.cosine_max_value_wrong,
                     "min_value_correct": source.cosine_min_value_correct,
                     "max_value_correct": source.cosine_max_value_correct}



def open_rs_accuracy_from_config(args: Any = None, processing_class: Any = None) -> OpenRSAccuracy:
    """A fresh `open_rs_accuracy` (its own unparsed-gold counter) per run."""
    return OpenRSAccuracy()


def open_rs_cosine_as_run_from_config(args: Any, processing_class: Any = None) -> OpenRSCosineAsRun:
    max_len, values = cosine_settings(args, "open_rs_cosine_as_run")
    return OpenRSCosineAsRun(max_len, **values)


def open_rs_cosine_from_config(args: Any, processing_class: Any = None) -> CosineScaledAccuracy:
    max_len, values = cosine_settings(args, "open_rs_cosine")
    return CosineScaledAccuracy(max_len, **values, timeout_s=grader_timeout(args), processing_class=processing_class)
