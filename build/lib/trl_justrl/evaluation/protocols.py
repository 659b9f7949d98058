"""Evaluation protocols: each paper's benchmarks, samples per problem, sampling settings, prompt and table.

`justrl` (the default): nine benchmarks, avg@N (N = 4 or 32), temperature 0.7, top-p 0.9, 31,744 new tokens, the
problem plus the recipe suffix. `open-rs` (lighteval, zero-shot): five benchmarks, pass@1, temperature 0.6, top-p
0.95, 32,768 new tokens, its lighteval math prompt. Explicit flags (`--n`, `--temperature`, ...) override them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..benchmarks.sampling import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from .table import JUSTRL_TABLE, OPEN_RS_TABLE, ReferenceTable


@dataclass(frozen=True)
class EvalProtocol:
    """One paper's evaluation settings."""

    name: str
    benchmarks: tuple[str, ...]
    n: int | None  # samples per problem for every benchmark; None: each benchmark's own N (JustRL's 4 or 32)
    max_new_tokens: int
    temperature: float
    top_p: float
    prompt_style: str  # trl_justrl.prompts.eval_messages
    table: ReferenceTable
    metric: str  # how the table's numbers are named


PROTOCOLS: dict[str, EvalProtocol] = {
    "justrl": EvalProtocol(
        name="justrl",
        benchmarks=JUSTRL_TABLE.columns,
        n=None,  # RECIPE: 4 for MATH-500, Minerva, OlympiadBench; 32 for the small sets
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
        temperature=DEFAULT_TEMPERATURE,
        top_p=DEFAULT_TOP_P,
        prompt_style="justrl",
        table=JUSTRL_TABLE,
        metric="avg@N",
    ),
    "open-rs": EvalProtocol(
        name="open-rs",
        benchmarks=OPEN_RS_TABLE.columns,  # RECIPE (Open-RS): AIME24, MATH-500, AMC23, Minerva, OlympiadBench
        n=1,  # RECIPE (Open-RS): zero-shot pass@1, one sample per problem
        max_new_tokens=32768,  # RECIPE (Open-RS): up to 32,768 new tokens
        temperature=0.6,  # RECIPE (Open-RS): temperature 0.6
        top_p=0.95,  # RECIPE (Open-RS): top-p 0.95
        prompt_style="open-rs",
        table=OPEN_RS_TABLE,
        metric="pass@1",
    ),
}
DEFAULT_PROTOCOL = "justrl"
