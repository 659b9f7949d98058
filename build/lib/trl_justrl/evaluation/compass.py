"""Optional model-based second opinion on the responses the rule-based grader rejected: CompassVerifier-3B through
vLLM, greedy, verdicts A (correct) / B (incorrect) / C (invalid); only A turns a response correct.

Two protocols. `released` is JustRL's `evals/grade.py`, behind the paper's table: its own prompt with an empty
question (its data carries none), the whole response, up to 2,048 new tokens, correct only when the stripped output
is exactly "A". `short` is this project's: a shorter prompt with the problem, the response's last 4,000 characters,
8 new tokens, the first letter read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

COMPASS_MODEL = "opencompass/CompassVerifier-3B"  # RECIPE: the model-based verifier

RELEASED_PROMPT = (  # JustRL's evals/grade.py CV_PROMPT, verbatim: str.format fields, {{}} a literal {}
    "\n"
    "Please as a grading expert, judge whether the final answers given by the candidates below are "
    "consistent with the standard answers, that is, whether the candidates answered correctly. \n"
    "Here are some evaluation criteria:\n"
    "1. Please refer to the given standard answer. You don't need to re-generate the answer to the "
    "question because the standard answer has been given. You only need to judge whether the candidate's "
    "answer is consistent with the standard answer according to the form of the question. THE STANDARD "
    "ANSWER IS ALWAYS CORRECT AND THE QUESTION IS PERFECTLY VALID. NEVER QUESTION THEM.\n"
    "2. ONLY compare the FINAL ANSWER - COMPLETELY IGNORE any potential errors in the REASONING "
    "PROCESSES.\n"
    "3. Some answers may be expressed in different ways, such as some answers may be a mathematical "
    "expression, some answers may be a textual description, as long as the meaning expressed is the "
    "same. Before making a judgment, please understand the question and the standard answer first, and "
    "then judge whether the candidate's answer is correct.\n"
    "4. Some answers may consist of multiple items, such as multiple-choice questions, multiple-select "
    "questions, fill-in-the-blank questions, etc. Regardless of the question type, the final answer will "
    "be considered correct as long as it matches the standard answer, regardless of whether the "
    "reasoning process is correct. For multiple-select questions and multi-blank fill-in-the-blank "
    "questions, all corresponding options or blanks must be answered correctly and match the standard "
    "answer exactly to be deemed correct.\n"
    "5. If the prediction is given with \\boxed{{}}, please ignore the \\boxed{{}} and only judge whether "
    "the candidate's answer is consistent with the standard answer.\n"
    "6. If the candidate's answer is invalid (e.g., incomplete (cut off mid-response), lots of unnormal "
    "repetitive content, or irrelevant to the question, saying it can't answer the question because some "
    "irresistible factors, like ethical issues, no enough information, etc.), select option C "
    "(INVALID).Please judge whether the following answers are consistent with the standard answer based "
    "on the above criteria. Grade the predicted answer of this new question as one of:\n"
    "A: CORRECT \n"
    "B: INCORRECT\n"
    "C: INVALID\n"
    "Just return the letters \"A\", \"B\", or \"C\", with no text around it.\n"
    "Here is your task. Simply reply with either CORRECT, INCORRECT, or INVALID. Don't apologize or "
    "correct yourself if there was a mistake; we are just trying to grade the answer.\n"
    "<Original Question Begin>:\n"
    "{question}\n"
    "<Original Question End>\n"
    "<Standard Answer Begin>:\n"
    "{gold_answer}\n"
    "<Standard Answer End>\n"
    "<Candidate's Answer Begin>: \n"
    "{llm_response}\n"
    "<Candidate's Answer End>\n"
    "Judging the correctness of the candidate's answer:\n"
)
RELEASED_MAX_NEW_TOKENS = 2048  # JustRL's evals/grade.py: SamplingParams(temperature=0.0, max_tokens=2048)

SHORT_TAIL_CHARS = 4000  # the verdict depends on the final answer; long reasoning is cut from the front
SHORT_MAX_NEW_TOKENS = 8
SHORT_PROMPT = """You judge answers to math problems. Compare the final answer in the candidate response with the \
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


def build_released_prompt(problem: str, reference: str, response: str) -> str:
    """The released user message: its template with an empty question (as its run had), the gold as given and the
    whole response. `problem` is not used, as in the released script."""
    return RELEASED_PROMPT.format(question="", gold_answer=reference, llm_response=response)


def parse_released_verdict(text: str) -> str:
    """The released reading: the stripped output is the verdict when it is exactly A, B or C; anything else is C
    (the released script counts only an exact "A" as correct)."""
    verdict = text.strip()
    return verdict if verdict in ("A", "B", "C") else "C"


def build_prompt(problem: str, reference: str, response: str) -> str:
    """The short protocol's user message for one response."""
    return SHORT_PROMPT.format(problem=problem.strip(), reference=reference.strip(),
                               response=response[-SHORT_TAIL_CHARS:])


def parse_verdict(text: str) -> str:
    """The short protocol's reading: the first of A / B / C in the output; anything else counts as C (invalid)."""
    for char in text.strip().upper():
        if char in "ABC":
            return char
        if char.isalpha():
            break
    return "C"


@dataclass(frozen=True)
class CompassProtocol:
    """How the verifier is asked and read: the user message, the new-token cap and the verdict parser."""

    name: str
    build: Callable[[str, str, str], str]
    max_new_tokens: int
    parse: Callable[[str], str]


PROTOCOLS = {
    "released": CompassProtocol("released", build_released_prompt, RELEASED_MAX_NEW_TOKENS, parse_released_verdict),
    "short": CompassProtocol("short", build_prompt, SHORT_MAX_NEW_TOKENS, parse_verdict),
}


class CompassVerifier:
    """CompassVerifier served by vLLM's offline engine (needs a GPU), asked as `protocol` says."""

    def __init__(self, model: str = COMPASS_MODEL, engine: Any = None, protocol: str = "released",
                 **engine_kwargs: Any):
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown CompassVerifier protocol {protocol!r}; known: {sorted(PROTOCOLS)}.")
        self.protocol = PROTOCOLS[protocol]
        if engine is None:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise ImportError("--verifier compass needs vLLM: pip install -e '.[vllm]' (GPU machines).") from exc
            engine = LLM(model=model, enable_prefix_caching=True, **engine_kwargs)
        self.engine = engine

    def judge(self, items: Sequence[tuple[str, str, str]]) -> list[str]:
        """Verdicts for (problem, reference, response) triples: greedy, through the verifier's chat template with
        the generation prompt (vLLM's `chat`, as the released script's `apply_chat_template` + `generate`)."""
        if not items:
            return []
        from vllm import SamplingParams

        messages = [[{"role": "user", "content": self.protocol.build(*item)}] for item in items]
        params = SamplingParams(temperature=0.0, max_tokens=self.protocol.max_new_tokens)
        outputs = self.engine.chat(messages, params, use_tqdm=True)
        return [self.protocol.parse(o.outputs[0].text) for o in outputs]
