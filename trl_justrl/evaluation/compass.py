"""Optional model-based second opinion: CompassVerifier-3B through vLLM, greedy, verdicts A / B / C.

Only responses the rule-based grader rejected are sent; A (correct) turns them correct, B (incorrect) and
C (invalid) leave them wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COMPASS_MODEL = "opencompass/CompassVerifier-3B"  # RECIPE: the model-based verifier
RESPONSE_TAIL_CHARS = 4000  # the verdict depends on the final answer; long reasoning is cut from the front

PROMPT = """You judge answers to math problems. Compare the final answer in the candidate response with the \
reference answer. Equivalent forms count as the same answer (for example 1/2 and 0.5, or x = 3 and 3).

Problem:
{problem}

Reference answer:
{reference}

Candidate response (its end):
{response}

Reply with one letter only:
A - the final answer is correct
B - the final answer is incorrect
C - the response is invalid (no final answer, cut off, or repeating itself)
Verdict:"""


def build_prompt(problem: str, reference: str, response: str) -> str:
    """The verifier's user message for one response."""
    return PROMPT.format(problem=problem.strip(), reference=reference.strip(), response=response[-RESPONSE_TAIL_CHARS:])


def parse_verdict(text: str) -> str:
    """The first of A / B / C in the verifier's output; anything else counts as C (invalid)."""
    for char in text.strip().upper():
        if char in "ABC":
            return char
        if char.isalpha():
            break
    return "C"


class CompassVerifier:
    """CompassVerifier served by vLLM's offline engine (needs a GPU)."""

    def __init__(self, model: str = COMPASS_MODEL, engine: Any = None, **engine_kwargs: Any):
        if engine is None:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise ImportError("--verifier compass needs vLLM: pip install -e '.[vllm]' (GPU machines).") from exc
            engine = LLM(model=model, enable_prefix_caching=True, **engine_kwargs)
        self.engine = engine

    def judge(self, items: Sequence[tuple[str, str, str]]) -> list[str]:
        """Verdicts for (problem, reference, response) triples, greedy decoding."""
        if not items:
            return []
        from vllm import SamplingParams

        messages = [[{"role": "user", "content": build_prompt(*item)}] for item in items]
        outputs = self.engine.chat(messages, SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=True)
        return [parse_verdict(o.outputs[0].text) for o in outputs]
