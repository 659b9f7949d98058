"""Per-benchmark statistics the authors log: avg@N, best-of-N, solved by none / all, length, no box, distinct-4."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..grading.grader import extract_answer
from .sampling import Sample


@dataclass(frozen=True)
class BenchmarkStats:
    """Aggregate results of one benchmark (percentages in 0-100)."""

    problems: int
    samples_per_problem: int
    avg_at_n: float  # mean over problems of the fraction of correct samples (pass@1 averaged over N)
    best_of_n: float  # problems with at least one correct sample
    solved_by_none: int
    solved_by_all: int
    mean_length: float  # tokens per response
    truncated: float  # responses that hit max_new_tokens
    no_box: float  # responses without a closed \boxed{...}
    distinct_4gram: float  # unique / total word 4-grams over all responses

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def distinct_ngrams(texts: Sequence[str], n: int = 4) -> float:
    """Unique n-grams over all n-grams of whitespace-split words, in percent (100 when there are none)."""
    grams = [tuple(words[i : i + n]) for text in texts for words in [text.split()] for i in range(len(words) - n + 1)]
    return 100.0 * len(set(grams)) / len(grams) if grams else 100.0


def compute_stats(samples: dict[str, list[Sample]], correct: dict[str, list[bool]]) -> BenchmarkStats:
    """Statistics from each problem's samples and their grades."""
    if not samples:
        raise ValueError("No samples to summarise.")
    rates = [sum(c) / len(c) for c in correct.values()]
    every = [s for group in samples.values() for s in group]
    return BenchmarkStats(
        problems=len(samples),
        samples_per_problem=len(next(iter(samples.values()))),
        avg_at_n=100.0 * sum(rates) / len(rates),
        best_of_n=100.0 * sum(r > 0 for r in rates) / len(rates),
        solved_by_none=sum(r == 0 for r in rates),
        solved_by_all=sum(r == 1 for r in rates),
        mean_length=sum(s.num_tokens for s in every) / len(every),
        truncated=100.0 * sum(s.finish_reason == "length" for s in every) / len(every),
        no_box=100.0 * sum(extract_answer(s.response) is None for s in every) / len(every),
        distinct_4gram=distinct_ngrams([s.response for s in every]),
    )
