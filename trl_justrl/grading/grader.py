"""Rule-based math grading: the last boxed answer against the ground truth, exactly or symbolically, time-limited.

`grade_answer(response, ground_truth, problem=...)` decides every benchmark score, the `robust_math` reward and the
in-training validation; its policy (notation, lists and order, numbers, bases and units, partial parses, time) is
the table in docs/evaluation.md. Answers are parsed as LaTeX only, never with sympy's `parse_expr` (which
evaluates its input), and every parse and comparison is bounded by `timeout_s`, in any thread.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

from math_verify.errors import TimeoutException

from .answers import unbox_ground_truth

DEFAULT_TIMEOUT_S = 5  # per parse and per comparison
RELATIVE_TOLERANCE = 1e-6  # project's choice: decimals agree to 6 significant digits
MAX_UNORDERED_ITEMS = 8  # any-order lists longer than this are matched greedily rather than by every permutation
MIN_ITEMS_PER_POOL = 64  # fewer items are graded here: spawning workers (~3 s of imports each) would cost more
MAX_NESTING = 12  # answers nested deeper (brackets within brackets) are compared as text only

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_SPACES = re.compile(r"\s+")
_TEXT_COMMANDS = re.compile(r"\\(text|mbox|mathrm|textbf|textrm|operatorname)\s*\{")
_WHOLE_TEXT = re.compile(r"^\\(?:text|mbox|mathrm|textrm)\{\s*([^{}]*?)\s*\}$")
_SINGLE_SCRIPT = re.compile(r"([\^_])(\w)")  # x^6 -> x^{6}, a_1 -> a_{1}
_THOUSANDS_LATEX = re.compile(r"(\d),\\!(?=\d{3})")
_THOUSANDS_PLAIN = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_TRAILING_DOT = re.compile(r"(\d)\.(?!\d)")
_E_NOTATION = re.compile(r"^(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)$")
_MIXED_FRAC = re.compile(r"^(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_MIXED_SLASH = re.compile(r"^(-?)(\d+)\s+(\d+)/(\d+)$")
_CDOT_I = re.compile(r"\\cdot\s*i(?![a-zA-Z])")
_BASE = re.compile(r"^(\w+)_\{?(\d+)\}?$")
_UNIT = re.compile(r"\\(?:text|mbox|mathrm|textrm)\{\s*([A-Za-z][A-Za-z ]*?)\s*\}(?:\^\{?(\d+)\}?)?")
_HEDGE = re.compile(r"\\text\{\s*or\s*\}|\bor\b")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_TEXT_BLOCK = re.compile(r"\\(?:text|mbox|mathrm|textbf|textrm|operatorname)\{[^{}]*\}")
_LETTER = re.compile(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])")
_UNORDERED_PROBLEM = re.compile(
    r"\b(?:find|determine|compute|list|enter|give|what are)\s+all\b|\ball\s+(?:possible|real|integer|positive|"
    r"negative|solutions|values|pairs|roots|ordered|triples|numbers|such)\b|separated by commas",
    re.IGNORECASE,
)


# ---- extraction and notation ----------------------------------------------------------------------------------


def extract_answer(response: str) -> str | None:
    """The content of the response's last `\\boxed{...}` / `\\boxed {...}` / `\\fbox{...}` (None without one)."""
    matches = list(_BOX.finditer(response))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for i in range(start, len(response)):
        if response[i] == "{":
            depth += 1
        elif response[i] == "}":
            depth -= 1
            if depth == 0:
                return response[start:i]
    return None


def normalize_answer(answer: str) -> str:
    """The answer's notation made canonical (see the policy above); the result is still LaTeX."""
    answer = answer.strip().strip("$").strip()
    answer = _TEXT_COMMANDS.sub(lambda m: f"\\{m.group(1)}{{", answer)
    if match := _WHOLE_TEXT.match(answer):  # a word answer: \text{Evelyn} = Evelyn
        answer = match.group(1)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"),
                     ("\\displaystyle", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("$", "")):
        answer = answer.replace(old, new)
    answer = _THOUSANDS_LATEX.sub(r"\1", answer)
    answer = _SPACES.sub(" ", answer).strip().rstrip(".").strip()
    if _THOUSANDS_PLAIN.match(answer):
        answer = answer.replace(",", "")
    answer = _TRAILING_DOT.sub(r"\1", answer)
    answer = _CDOT_I.sub("i", answer)
    answer = _SINGLE_SCRIPT.sub(r"\1{\2}", answer)
    if match := _E_NOTATION.match(answer):
        answer = f"{match.group(1)}\\times10^{{{int(match.group(2))}}}"
    for pattern in (_MIXED_FRAC, _MIXED_SLASH):
        if (match := pattern.match(answer)) and int(match.group(3)) < int(match.group(4)):
            sign, whole, num, den = match.groups()
            value = f"\\frac{{{int(whole) * int(den) + int(num)}}}{{{den}}}"
            answer = f"-{value}" if sign else value
    return answer


def _compact(text: str) -> str:
    return _SPACES.sub("", text)


# ---- several values -------------------------------------------------------------------------------------------

_OPEN, _CLOSE = "([{", ")]}"


def split_top_level(text: str) -> list[str]:
    """Split at commas outside any brackets (`\\{`, `{`, `(`, `[`)."""
    parts, depth, current = [], 0, []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            depth += 1 if text[i + 1] == "{" else -1
            current.append(text[i : i + 2])
            i += 2
            continue
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current).strip())
    return parts


def container(text: str) -> tuple[str, str]:
    """(kind, inside): kind is "set" for `\\{...\\}`, "tuple" for `(...)`, "interval" for `[...]`-like brackets,
    "list" for a bare comma-separated list, "value" otherwise."""
    if text.startswith("\\{") and text.endswith("\\}") and _encloses(text):
        return "set", text[2:-2].strip()
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _encloses(text):
        kind = "tuple" if (text[0], text[-1]) == ("(", ")") else "interval"
        return kind, text[1:-1].strip()
    if len(split_top_level(text)) > 1:
        return "list", text
    return "value", text


def _encloses(text: str) -> bool:
    """Whether the opening bracket of `text` closes only at its very end (not `(1,2)+(3,4)`)."""
    depth = 0
    for i, char in enumerate(text):
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
            if depth == 0 and i < len(text) - 1:
                return False
    return True


def order_free(problem: str | None) -> bool:
    """Whether the problem asks for all of something (a list of answers in any order)."""
    return bool(problem and _UNORDERED_PROBLEM.search(problem))


# ---- one value ------------------------------------------------------------------------------------------------


def _units(text: str) -> tuple[list[tuple[str, str]], str]:
    """The text units of a value with their powers (`\\text{ inches}^3` -> ("inches", "3")) and the value without
    them; no units when nothing but text is left (a word answer such as `\\text{Evelyn}`)."""
    value = _UNIT.sub("", text).strip()
    if not value:
        return [], text
    return [(m.group(1).strip().lower(), m.group(2) or "1") for m in _UNIT.finditer(text)], value


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _CLOSE:
            depth -= 1
    return deepest


def _letters(text: str) -> set[str]:
    """Variable letters of a LaTeX answer (outside commands and text), for detecting parses that dropped some."""
    text = _TEXT_BLOCK.sub(" ", text)
    text = _LATEX_COMMAND.sub(" ", text)
    return {letter for letter in _LETTER.findall(text) if letter not in ("i", "e")}  # the imaginary unit, Euler's e


def _parse_whole(text: str, timeout_s: int | None):
    """The answer parsed as LaTeX, or None when it does not parse or parses only in part."""
    from math_verify import LatexExtractionConfig, parse

    if _nesting(text) > MAX_NESTING:
        return None  # the parser mis-reads very deep nests (200 nested fractions came out as their innermost one)
    text_compact = _compact(text)
    parsed = parse(f"\\boxed{{{text}}}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                   parsing_timeout=timeout_s)
    if len(parsed) < 2:
        return None
    expression, matched = parsed[0], _compact(parsed[1])
    if matched != text_compact and matched in text_compact:
        return None  # only part of the answer was read (e.g. the first of two alternatives)
    if _letters(text) and not getattr(expression, "free_symbols", None):
        return None  # variables the parse lost (e.g. E_1 in a sum it reduced to a number)
    return expression


def _numbers_equal(gold, pred, timeout_s: int | None) -> bool | None:
    """Exact comparison of exact numbers, relative tolerance where a decimal is involved; None if not numbers."""
    from math_verify.utils import timeout

    return timeout(timeout_seconds=timeout_s)(_compare_numbers)(gold, pred) if timeout_s else _compare_numbers(
        gold, pred)


def _compare_numbers(gold, pred) -> bool | None:
    import sympy

    if not (isinstance(gold, sympy.Basic) and isinstance(pred, sympy.Basic)):
        return None
    if not (gold.is_number and pred.is_number):
        return None
    a, b = gold.evalf(30), pred.evalf(30)  # arbitrary precision: 2024^4046 does not overflow
    gap, size = abs(a - b), max(abs(a), abs(b))
    close = bool(gap <= RELATIVE_TOLERANCE * size)
    if gold.has(sympy.Float) or pred.has(sympy.Float) or not close:
        return close  # a decimal: the tolerance decides; exact values this far apart differ
    difference = sympy.simplify(gold - pred)
    if difference == 0:
        return True
    if difference.is_Rational:
        return False  # an exact non-zero difference, however small beside the values (2^1009 + 1 against 2^1009)
    # an identity simplify could not prove (nested radicals): zero to 60 digits, relative to the values' size
    return bool(abs(difference.evalf(60)) <= sympy.Float(10) ** -45 * max(size, 1))


def _value_equal(gold: str, pred: str, timeout_s: int | None) -> bool:
    """One value (no top-level commas) of the gold against one of the prediction."""
    if gold == pred:
        return True
    if _HEDGE.search(pred) and not _HEDGE.search(gold):
        return False  # "5.4 or 5.5" hedges
    if _BASE.match(gold) or _BASE.match(pred):
        return False  # numbers with a base subscript must match as written (equal strings handled above)
    gold_units, gold_value = _units(gold)
    pred_units, pred_value = _units(pred)
    if gold_units and pred_units and sorted(gold_units) != sorted(pred_units):
        return False
    if gold_value == pred_value:
        return True
    try:
        gold_parsed = _parse_whole(gold_value, timeout_s)
        pred_parsed = _parse_whole(pred_value, timeout_s)
        if gold_parsed is None or pred_parsed is None:
            return _compact(gold_value) == _compact(pred_value)
        numeric = _numbers_equal(gold_parsed, pred_parsed, timeout_s)
        if numeric is not None:
            return numeric
        from math_verify import verify

        return bool(verify([gold_parsed, gold_value], [pred_parsed, pred_value], float_rounding=12,
                           timeout_seconds=timeout_s))
    except (Exception, TimeoutException):  # sympy raises on pathological input; timeouts: not equivalent
        return False


def _answers_equal(gold: str, pred: str, problem: str | None, timeout_s: int | None) -> bool:
    """Gold and prediction, both normalised: one value or several (see the policy)."""
    gold_kind, gold_inside = container(gold)
    pred_kind, pred_inside = container(pred)
    gold_items, pred_items = split_top_level(gold_inside), split_top_level(pred_inside)
    if len(gold_items) == 1 and len(pred_items) == 1:
        if gold_kind == pred_kind or "value" in (gold_kind, pred_kind):
            return _value_equal(gold, pred, timeout_s) or (
                gold_kind == pred_kind != "value" and _value_equal(gold_inside, pred_inside, timeout_s))
        return False
    if len(gold_items) != len(pred_items):
        return False  # a value missing or repeated
    if {gold_kind, pred_kind} == {"set", "tuple"}:
        return False  # a tuple written as a set, or the reverse
    if gold_kind == "interval" or pred_kind == "interval":
        return gold_kind == pred_kind and gold[0] == pred[0] and gold[-1] == pred[-1] and all(
            _answers_equal(g, p, None, timeout_s) for g, p in zip(gold_items, pred_items, strict=True))
    unordered = gold_kind == "set" or (gold_kind == "list" and order_free(problem))
    if pred_kind == "set" and not unordered:
        return False  # an order-free notation for an ordered answer
    if not unordered:
        return all(_answers_equal(g, p, None, timeout_s) for g, p in zip(gold_items, pred_items, strict=True))
    return _match_any_order(gold_items, pred_items, timeout_s)


def _match_any_order(gold_items: list[str], pred_items: list[str], timeout_s: int | None) -> bool:
    """A one-to-one matching of the items (multiplicity counts)."""
    if len(gold_items) <= MAX_UNORDERED_ITEMS:
        same = {(i, j): _answers_equal(g, p, None, timeout_s)
                for i, g in enumerate(gold_items) for j, p in enumerate(pred_items)}
        return any(all(same[i, j] for i, j in enumerate(order))
                   for order in itertools.permutations(range(len(pred_items))))
    remaining = list(pred_items)
    for g in gold_items:
        hit = next((k for k, p in enumerate(remaining) if _answers_equal(g, p, None, timeout_s)), None)
        if hit is None:
            return False
        remaining.pop(hit)
    return True


# ---- the grader -----------------------------------------------------------------------------------------------


def _grade_in_this_thread(predicted: str, gold: str, problem: str | None, timeout_s: int | None) -> bool:
    return _answers_equal(normalize_answer(gold), normalize_answer(predicted), problem, timeout_s)


def math_verify_timeout(seconds: int = DEFAULT_TIMEOUT_S) -> int | None:
    """math-verify's own time limit where its SIGALRM timer works (the main thread); None (no limit) elsewhere."""
    return seconds if threading.current_thread() is threading.main_thread() else None


def grade_answer(
    response: str, ground_truth: str, *, problem: str | None = None, timeout_s: int = DEFAULT_TIMEOUT_S
) -> bool:
    """True when the response's last boxed answer equals the ground truth (see the module's policy).

    `problem` (the question's text, when known) decides whether a list of answers may come in any order.
    """
    predicted = extract_answer(response)
    if predicted is None or not predicted.strip():
        return False
    gold = unbox_ground_truth(str(ground_truth).strip())
    if not gold:
        raise ValueError("grade_answer: the ground truth is empty.")
    if _compact(normalize_answer(predicted)) == _compact(normalize_answer(gold)):
        return True
    if threading.current_thread() is threading.main_thread():
        return _grade_in_this_thread(predicted, gold, problem, timeout_s)
    return _HELPER.grade(predicted, gold, problem, timeout_s)


class _HelperProcess:
    """A process that grades for threads other than the main one (math-verify's SIGALRM timer needs a main thread),
    with a deadline: a helper that overruns is killed and replaced, and the answer counts as wrong."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process = None
        self._connection = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_helper_main, args=(child,), daemon=True)
        self._process.start()
        self._connection = parent

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._process = self._connection = None

    def grade(self, predicted: str, gold: str, problem: str | None, timeout_s: int) -> bool:
        # a parse of each side plus comparisons of up to MAX_UNORDERED_ITEMS values, each bounded in the helper
        deadline = 4 * timeout_s + 30  # the helper's start-up (imports) included
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._start()
            try:
                self._connection.send((predicted, gold, problem, timeout_s))
                if self._connection.poll(deadline):
                    return bool(self._connection.recv())
            except (EOFError, OSError, BrokenPipeError):
                pass
            self.stop()  # overran or died: kill it; the next call starts a fresh one
            return False


def _helper_main(connection) -> None:
    while True:
        try:
            predicted, gold, problem, timeout_s = connection.recv()
        except EOFError:
            return
        try:
            result = _grade_in_this_thread(predicted, gold, problem, timeout_s)
        except Exception:
            result = False
        connection.send(result)


_HELPER = _HelperProcess()
atexit.register(_HELPER.stop)


def _grade_item(item: tuple[str, str, str | None, int]) -> bool:
    response, truth, problem, timeout_s = item
    return grade_answer(response, truth, problem=problem, timeout_s=timeout_s)


def grade_many(
    items: Iterable[tuple[str, str] | tuple[str, str, str | None]],
    *,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    processes: int | None = None,
) -> list[bool]:
    """`grade_answer` over (response, ground_truth[, problem]) items, on `processes` worker processes (default: the
    machine's cores; 1 grades here). Each worker grades in its main thread, so every item keeps its time limit."""
    work: list[tuple[str, str, str | None, int]] = [
        (item[0], item[1], item[2] if len(item) > 2 else None, timeout_s) for item in items
    ]
    processes = processes or os.cpu_count() or 1
    if processes == 1 or len(work) < MIN_ITEMS_PER_POOL:
        return [_grade_item(item) for item in work]
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_grade_item, work, chunksize=max(1, len(work) // (processes * 8))))

