"""Rule-based math grading: the last boxed answer against the ground truth, exactly or symbolically, time-limited.

`grade_answer(response, ground_truth, problem=...)` decides every benchmark score, the `robust_math` reward and the
in-training validation; its policy (notation, lists and order, numbers and infinity, currency and units, bases
and names, partial parses, time) is the table in docs/evaluation.md. Answers are parsed as LaTeX only, never with
sympy's `parse_expr` (which evaluates its input), and all the work on one response (every parse and comparison
together) is bounded by `timeout_s`, in any thread.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Iterable

import math_verify.grader
import math_verify.parser

from .answers import unbox_ground_truth
from .processes import GradingProcess, grade_in_processes

DEFAULT_TIMEOUT_S = 5  # per response: every parse and comparison of one answer together
RELATIVE_TOLERANCE = 1e-6  # project's choice: decimals agree to 6 significant digits
MAX_UNORDERED_ITEMS = 8  # any-order lists longer than this are matched greedily rather than by every permutation
MIN_ITEMS_PER_POOL = 64  # fewer items are graded here: starting helpers (~1 s of imports each) would cost more
MAX_NESTING = 12  # answers nested deeper (brackets within brackets) are compared as text only
FAST_PATH_CHARS = 2000  # answers this short are compared as written (one linear pass) before any time limit

# This module bounds each response with its own timer and calls math-verify without one: silence math-verify's
# one-time warning that its timer is off.
math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_SPACES = re.compile(r"\s+")
_TEXT_COMMANDS = re.compile(r"\\(text|mbox|mathrm|textbf|textrm|operatorname)\s*\{")
_WHOLE_TEXT = re.compile(r"^\\(?:text|mbox|mathrm|textrm)\{([^{}]*)\}$")  # its group stripped after: linear
_SINGLE_SCRIPT = re.compile(r"([\^_])(\w)")  # x^6 -> x^{6}, a_1 -> a_{1}
_THOUSANDS_LATEX = re.compile(r"(\d),\\!\s*(?=\d{3})")
_THOUSANDS_PLAIN = re.compile(  # also before a unit: `1,000 \text{ dollars}`
    r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?=$|\s*\\(?:text|mbox|mathrm|textrm)\{|\s+[A-Za-z]+$)")
_TRAILING_DOT = re.compile(r"(\d)\.(?!\d)")
_E_NOTATION = re.compile(r"^(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)$")
_MIXED_FRAC = re.compile(r"^(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_MIXED_SLASH = re.compile(r"^(-?)(\d+)\s+(\d+)/(\d+)$")
_CDOT_I = re.compile(r"\\cdot\s*i(?![a-zA-Z])")
_FRAC_OR_ROOT = re.compile(r"\\(frac|sqrt)(?![A-Za-z])")
_BASE = re.compile(r"^(\w+)_\{?(\d+)\}?$")
_TRAILING_UNIT = re.compile(  # one unit at the end of a value: `\text{ cm}^2`, `\mathrm{minutes}`, `^\circ`, `5 miles`
    r"(?:\\(?:text|mbox|mathrm|textrm)\{\s*(?P<text>[A-Za-z][A-Za-z ./]*?)\s*\}|(?<=[\d}] )(?P<word>[A-Za-z]{2,})"
    r"|(?P<degree>\^\{?\\circ\}?|\\degree))(?:\^\{?(?P<power>\d+)\}?)?\s*$"
)
_NOT_UNITS = frozenset(  # trailing words that change or deny the value: never dropped as units
    "thousand thousands million millions billion billions trillion trillions hundred hundreds dozen dozens percent "
    "negative positive not no none wrong or and pi only less more than times squared cubed over plus minus "
    "approximately about roughly is are".split())
_SHORT_UNITS = frozenset("cm mm km kg mg ml ft lb oz mi hr yd in".split())  # plain two-letter unit words
_PLAIN_NUMBER = re.compile(  # what units may follow: a number, not an expression (`3 + 2\mathrm{i}`, `2ab`)
    r"-?(?:\d+(?:\.\d+)?|\.\d+|\\frac\{\d+\}\{\d+\}|\\sqrt\{\d+\}|\\pi|\\times ?10\^\{-?\d+\}|\^\{?\d+\}?|\s)+")
_CURRENCY = re.compile(r"\\\$|\\(?:text|mbox|textrm)\{\s*\\?\$\s*\}|\\textdollar\b")
_AND = re.compile(r"\s*(?:\\(?:text|mbox|mathrm|textrm)\{\s*and\s*\}|(?<![\\A-Za-z])and(?![A-Za-z]))\s*")
_WORD_ANSWER = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")
_RELATION = re.compile(r"=|\\in(?![A-Za-z])")  # an equation or a membership (not `\infty`)
_RESTATED = re.compile(r"^([^=]+?)\s*(?:=|\\in(?![A-Za-z]))\s*([^=]+)$")  # one `=` or `\in`
_NAME_PARTS = re.compile(r"\([^()]*\)|[_^]\{[^{}]*\}|[_^]\w|\\text\{[^{}]*\}|\\[A-Za-z]+")
_PLUS_MINUS = re.compile(r"\\(?:pm|mp)(?![A-Za-z])")
_HEDGE = re.compile(r"\\text\{\s*or\s*\}|\bor\b")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_TEXT_BLOCK = re.compile(r"\\(?:text|mbox|mathrm|textbf|textrm|operatorname)\{[^{}]*\}")
_LETTER = re.compile(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])")
_ORDERED_PROBLEM = re.compile(  # the problem names the values it wants in an order
    r"\bin (?:this|that|the same|the given|increasing|decreasing|ascending|descending) order\b|\brespectively\b"
    r"|\bhow many of each\b|\b(?:solve|solutions? (?:to|of)) the (?:following )?system\b"
    r"|\b(?:values? of|determine|compute|find|solve for|what are|give)(?: both| all)?(?: (?:the )?(?:real |positive |"
    r"negative |non-?negative |prime )?(?:numbers?|integers?|constants?|digits?|values?))?"
    r"\s+\$[^$]+\$(?:\s*,\s*\$[^$]+\$)*\s*,?\s*and\s+\$",
    re.IGNORECASE,
)
_EXTREMUM = re.compile(r"\\?(?:max|min)(?:imum)?(?:_\{?\w+\}?)?|\\?(?:text|mathrm)\{(?:max|min)\w*\}", re.IGNORECASE)
_SUBSCRIPT = re.compile(r"_\{?\d+(?:,\d+)*\}?$")  # x_1, x_{2}: numbered values of one unknown (not v_A, v_B)
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")
_ASKING = re.compile(r"\b(?:find|determine|compute|calculate|solve|what|which|give|enter|list|express|how many)\b",
                     re.IGNORECASE)


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
    answer = _CURRENCY.sub("", answer.strip())  # `\\$50` is 50 (a bare `$` is math mode, removed below)
    answer = answer.strip().strip("$").strip()
    answer = _TEXT_COMMANDS.sub(lambda m: f"\\{m.group(1)}{{", answer)
    if match := _WHOLE_TEXT.match(answer):  # a word answer: \text{Evelyn} = Evelyn
        answer = match.group(1).strip()
    answer = _THOUSANDS_LATEX.sub(r"\1", answer)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"),
                     ("\\displaystyle", ""), ("\\!", ""), ("\\,", " "), ("\\;", " "), ("\\:", " "),
                     ("\\ ", " "), ("\\quad", " "), ("~", " "), ("°", "^\\circ"), ("$", "")):
        answer = answer.replace(old, new)
    answer = _SPACES.sub(" ", answer).strip().rstrip(".").strip()
    answer = _TRAILING_DOT.sub(r"\1", answer)
    answer = _CDOT_I.sub("i", answer)
    answer = _SINGLE_SCRIPT.sub(r"\1{\2}", answer)
    if _nesting(answer) <= MAX_NESTING:
        answer = brace_arguments(answer)
    if not _WORD_ANSWER.fullmatch(answer):  # `a \text{ and } b` lists two values; a name keeps its "and"
        answer = _AND.sub(", ", answer)
    # forms that must be the whole value: also after a restated left-hand side (`N = 10,080`, `x = 3e6`)
    left, equals, value = answer.rpartition("=") if answer.count("=") == 1 else ("", "", answer)
    return f"{left.strip()} = {_whole_number(value.strip())}" if equals else _whole_number(value)


def _whole_number(value: str) -> str:
    """Thousands separators (`10,080`), e-notation (`4.5e33`) and mixed numbers (`137 \\frac{1}{2}`) of a value."""
    if match := _THOUSANDS_PLAIN.match(value):
        return match.group(0).replace(",", "") + value[match.end():]
    if match := _E_NOTATION.match(value):
        return f"{match.group(1)}\\times10^{{{int(match.group(2))}}}"
    for pattern in (_MIXED_FRAC, _MIXED_SLASH):
        if (match := pattern.match(value)) and int(match.group(3)) < int(match.group(4)):
            sign, whole, num, den = match.groups()
            fraction = f"\\frac{{{int(whole) * int(den) + int(num)}}}{{{den}}}"
            return f"-{fraction}" if sign else fraction
    return value


def brace_arguments(text: str) -> str:
    """`\\frac13`, `\\frac 59`, `\\sqrt2` -> `\\frac{1}{3}`, `\\frac{5}{9}`, `\\sqrt{2}`: as TeX reads them, an unbraced
    argument is one token (a character or a command)."""
    out, i = [], 0
    while match := _FRAC_OR_ROOT.search(text, i):
        out.append(text[i : match.end()])
        j = match.end()
        if match.group(1) == "sqrt" and (index := re.match(r"\s*\[[^\]]*\]", text[j:])):  # \sqrt[3]{...}
            out.append(index.group(0))
            j += index.end()
        for _ in range(2 if match.group(1) == "frac" else 1):
            while j < len(text) and text[j] == " ":
                j += 1
            if j >= len(text):
                break
            if text[j] == "{":
                end = _closing_brace(text, j)
                if end is None:
                    return "".join(out) + text[j:]
                out.append("{" + brace_arguments(text[j + 1 : end]) + "}")
                j = end + 1
            elif command := re.match(r"\\(?:[A-Za-z]+|.)", text[j:]):
                out.append("{" + command.group(0) + "}")
                j += command.end()
            else:
                out.append("{" + text[j] + "}")
                j += 1
        i = j
    return "".join(out) + text[i:]


def _closing_brace(text: str, start: int) -> int | None:
    depth = 0
    for k in range(start, len(text)):
        if text[k] == "{" and text[k - 1 : k] != "\\":
            depth += 1
        elif text[k] == "}" and text[k - 1 : k] != "\\":
            depth -= 1
            if depth == 0:
                return k
    return None


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


def ordered(problem: str | None) -> bool:
    """Whether the problem's question wants its bare list of values in an order: it names them (`$a, b$ and $c$`,
    a system's unknowns, "how many of each") or asks for one ("in increasing order", "respectively"). A minimum and a
    maximum need no order: their values say which is which."""
    return bool(problem and _ORDERED_PROBLEM.search(question(problem)))


def question(problem: str) -> str:
    """The problem's last sentence that asks for something ("Find ...", "Determine ...", "What are ..."), else its
    last sentence: earlier sentences describe (a sequence "in increasing order", points "$A$, $B$ and $C$")."""
    sentences = _SENTENCE_END.split(problem.strip())
    asking = [sentence for sentence in sentences if _ASKING.search(sentence)]
    return (asking or sentences)[-1]


# ---- one value ------------------------------------------------------------------------------------------------


def _units(text: str) -> tuple[list[tuple[str, str]], str]:
    """The units at the end of a number with their powers (`12 \\text{ cm}^2` -> [("cm", "2")], `5 miles`,
    `\\mathrm{minutes}`, `^\\circ`) and the number without them; none when no number is left, when the words change
    the value (`5 \\text{ thousand}`) or when what precedes is an expression."""
    units, value = [], text
    while match := _TRAILING_UNIT.search(value):
        rest = value[: match.start()].rstrip()
        name = "degree" if match.group("degree") else (match.group("text") or match.group("word")).strip()
        words = name.lower().replace("/", " ").split()
        short = (match.group("word") and len(name) < 3 and name.lower() not in _SHORT_UNITS) or (
            match.group("text") and name.lower() in ("i", "e", "d"))  # the imaginary unit, Euler's e, a differential
        if not rest or short or any(word in _NOT_UNITS for word in words):
            break
        units.append((_singular(name.lower()), match.group("power") or "1"))
        value = rest
    if units and not _PLAIN_NUMBER.fullmatch(value):
        return [], text
    return units, value


def _singular(unit: str) -> str:
    if unit == "feet":
        return "foot"
    if unit.endswith(("ches", "shes", "sses")):
        return unit[:-2]
    return unit[:-1] if unit.endswith("s") and not unit.endswith("ss") and len(unit) > 3 else unit


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


@functools.lru_cache(maxsize=1024)  # an any-order list compares each item with every other: parse each once
def _parse_whole(text: str):
    """The answer parsed as LaTeX, or None when it does not parse or parses only in part."""
    from math_verify import LatexExtractionConfig, parse
    from math_verify.parser import NormalizationConfig

    if _nesting(text) > MAX_NESTING:
        return None  # the parser mis-reads very deep nests (200 nested fractions came out as their innermost one)
    text_compact = _compact(text)
    # units=False: units are this module's rule (`_units`); math-verify's would drop a trailing variable (`37/4 m`)
    config = LatexExtractionConfig(boxed_match_priority=0, normalization_config=NormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False))
    parsed = parse(f"\\boxed{{{text}}}", extraction_config=[config], parsing_timeout=None)
    if len(parsed) < 2:
        return None
    expression, matched = parsed[0], _compact(parsed[1])
    if matched != text_compact and matched in text_compact:
        return None  # only part of the answer was read (e.g. the first of two alternatives)
    if _letters(text) and not getattr(expression, "free_symbols", None):
        return None  # variables the parse lost (e.g. E_1 in a sum it reduced to a number)
    return expression


def _numbers_equal(gold, pred) -> bool | None:
    """Exact comparison of exact numbers, relative tolerance where a decimal is involved; None if not numbers."""
    import sympy

    if not (isinstance(gold, sympy.Basic) and isinstance(pred, sympy.Basic)):
        return None
    if not (gold.is_number and pred.is_number):
        return None
    a, b = gold.evalf(30), pred.evalf(30)  # arbitrary precision: 2024^4046 does not overflow
    if not (a.is_finite and b.is_finite):
        return bool(a == b)  # infinity (or 1/0) equals only itself: a relative tolerance would match any number
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


def _value_equal(gold: str, pred: str) -> bool:
    """One value (no top-level commas) of the gold against one of the prediction."""
    pred = _without_restatement(pred, gold)
    if gold == pred:
        return True
    if "=" in pred and "=" not in gold:
        return False  # an equation left after a name's restatement: `2x = 10`, `5 = 6`, `x = 5 = 6` for gold 10, 6
    if _HEDGE.search(pred) and not _HEDGE.search(gold):
        return False  # "5.4 or 5.5" hedges
    if _WORD_ANSWER.fullmatch(gold) and _WORD_ANSWER.fullmatch(pred) and (
            len(gold) >= 4 and not gold.isupper() or gold.istitle()):
        return gold.lower() == pred.lower()  # a word (`Evelyn`, `Red`), not a product of variables (`abc`, `AB`)
    gold_units, gold_value = _units(gold)
    pred_units, pred_value = _units(pred)
    if gold_units and pred_units and sorted(gold_units) != sorted(pred_units):
        return False
    if _BASE.match(gold_value) or _BASE.match(pred_value):
        return gold_value == pred_value  # numbers with a base subscript must match as written
    if gold_value == pred_value:
        return True
    try:
        gold_parsed = _parse_whole(gold_value)
        pred_parsed = _parse_whole(pred_value)
        if gold_parsed is None or pred_parsed is None:  # as text; an explicit product sign is juxtaposition
            return _compact(gold_value.replace("\\cdot", "")) == _compact(pred_value.replace("\\cdot", ""))
        numeric = _numbers_equal(gold_parsed, pred_parsed)
        if numeric is not None:
            return numeric
        from math_verify import verify

        return bool(verify([gold_parsed, gold_value], [pred_parsed, pred_value], float_rounding=12,
                           timeout_seconds=None))
    except Exception:  # sympy raises on pathological input: not equivalent
        return False


def _without_restatement(pred: str, gold: str) -> str:
    """`a_1 = 504`, `P(5) = 15`, `x = 52_8`, `x \\in \\{1, 2\\}` -> the value after `=` / `\\in`, when the gold is
    not an equation and the left-hand side is a name (not `2x` or `5`: an equation that states another value)."""
    if _RELATION.search(gold) or (match := _RESTATED.match(pred)) is None or not _is_name(match.group(1)):
        return pred
    return match.group(2).strip()


def _is_name(text: str) -> bool:
    """A name a model restates: letters, with arguments, subscripts and commands (`p(0) + p(4)`, `a_{1}`, `\\angle
    ABC`), but no number of its own."""
    bare = _NAME_PARTS.sub(" ", text)
    return bool(re.search(r"[A-Za-z]", text)) and not re.search(r"\d", bare) and _nesting(text) <= MAX_NESTING


def _answers_equal(gold: str, pred: str, problem: str | None) -> bool:
    """Gold and prediction, both normalised: one value or several (see the policy)."""
    if _nesting(gold) > MAX_NESTING or _nesting(pred) > MAX_NESTING:
        return _compact(gold) == _compact(pred)  # compared as text (the parser mis-reads very deep nests)
    as_written = pred
    pred = _without_restatement(pred, gold)  # `(x, y) = (1, 2)`: the restated collection
    gold_kind, gold_items = _collection(gold)
    pred_kind, pred_items = _collection(pred)
    if len(gold_items) == 1 and len(pred_items) == 1:
        if gold_kind == pred_kind or "value" in (gold_kind, pred_kind):
            return _value_equal(gold, pred) or (
                gold_kind == pred_kind != "value" and _value_equal(gold_items[0], pred_items[0]))
        return False
    if len(gold_items) != len(pred_items):
        return False  # a value missing, added or repeated
    if {gold_kind, pred_kind} == {"set", "tuple"}:
        return False  # a tuple written as a set, or the reverse
    if gold_kind == "interval" or pred_kind == "interval":
        return gold_kind == pred_kind and gold[0] == pred[0] and gold[-1] == pred[-1] and all(
            _answers_equal(g, p, None) for g, p in zip(gold_items, pred_items, strict=True))
    named = gold_kind == "list" and not _RELATION.search(gold) and _names_its_values(as_written)
    unordered = not named and (gold_kind in ("set", "solutions") or (gold_kind == "list" and (
        not ordered(problem) or all(container(item)[0] == "tuple" for item in gold_items))))  # solutions as tuples
    if pred_kind in ("set", "solutions") and not unordered:
        return False  # an order-free notation for an ordered answer
    if not unordered:
        return all(_answers_equal(g, p, None) for g, p in zip(gold_items, pred_items, strict=True))
    return _match_any_order(gold_items, pred_items)


def _names_its_values(pred: str) -> bool:
    """`a = 6, b = 5` or `(a, b) = (6, 5)`: values tied to different names, so a gold list of bare values is
    matched in the order written, never in any order (which would accept `a = 6, b = 5` for `a = 5, b = 6`)."""
    whole = _RESTATED.match(pred)
    if whole and _is_name(whole.group(1)) and container(whole.group(1).strip())[0] == "tuple":
        return True
    names = [match.group(1).strip() for item in split_top_level(container(pred)[1])
             if (match := _RESTATED.match(item.strip())) is not None and _is_name(match.group(1))]
    if any(_EXTREMUM.fullmatch(name) for name in names):
        return False  # a minimum and a maximum: their values say which is which
    # `x = 2, x = 3` and `x_1 = 2, x_2 = 1`: one unknown's solutions (numbered), in any order
    return len({_SUBSCRIPT.sub("", name) for name in names}) > 1


def _collection(text: str) -> tuple[str, list[str]]:
    """(kind, items) of a normalised answer: a set, tuple, interval or list's items; a value's `\\pm` gives the
    two solutions it stands for (kind "solutions", unordered)."""
    kind, inside = container(text)
    items = [item for item in split_top_level(inside) if item] or [""]  # `1, 2, and 3`: no empty third item
    if kind in ("value", "list", "set") and any(len(_PLUS_MINUS.findall(item)) == 1 for item in items):
        items = [signed for item in items for signed in _plus_minus(item)]
        kind = "set" if kind == "set" else "solutions"
    return kind, items


def _plus_minus(item: str) -> list[str]:
    """`1 \\pm \\sqrt{19}` -> `1 + \\sqrt{19}`, `1 - \\sqrt{19}` (one `\\pm` or `\\mp`; others are left as they are)."""
    if len(_PLUS_MINUS.findall(item)) != 1:
        return [item]
    first = "-" if "\\mp" in item else "+"
    second = "+" if first == "-" else "-"
    return [_PLUS_MINUS.sub(first, item).strip(), _PLUS_MINUS.sub(second, item).strip()]


def _match_any_order(gold_items: list[str], pred_items: list[str]) -> bool:
    """A one-to-one matching of the items (multiplicity counts)."""
    if len(gold_items) <= MAX_UNORDERED_ITEMS:
        same = {(i, j): _answers_equal(g, p, None)
                for i, g in enumerate(gold_items) for j, p in enumerate(pred_items)}
        return any(all(same[i, j] for i, j in enumerate(order))
                   for order in itertools.permutations(range(len(pred_items))))
    remaining = list(pred_items)
    for g in gold_items:
        hit = next((k for k, p in enumerate(remaining) if _answers_equal(g, p, None)), None)
        if hit is None:
            return False
        remaining.pop(hit)
    return True


# ---- the grader -----------------------------------------------------------------------------------------------


class ResponseTimeout(BaseException):
    """The whole-response time limit passed. A BaseException, and not math-verify's `TimeoutException`, so that
    neither this module's nor math-verify's handlers (which catch both `Exception` and their own timeout) swallow it."""


def _grade_in_this_thread(predicted: str, gold: str, problem: str | None, timeout_s: int | None) -> bool:
    """Grade within one SIGALRM deadline for the whole response (main thread only): past it, not equivalent.

    A caller's own SIGALRM timer waits while a response is graded (at most `timeout_s`) and is put back with its
    handler, less the time spent here: one that fell due meanwhile fires as soon as this returns."""
    if not timeout_s:
        return _grade_unbounded(predicted, gold, problem)
    armed = [True]

    def expire(signum: int, frame: object) -> None:
        if armed[0]:
            raise ResponseTimeout

    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    try:
        # re-fires every 0.1 s past the deadline, in case a dependency's bare `except:` swallowed it
        signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.1)
        try:
            return _grade_unbounded(predicted, gold, problem)
        finally:
            armed[0] = False
    except ResponseTimeout:  # also when it fell just before the disarm above
        return False
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        if outer_delay:
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - started), 1e-3),
                             outer_interval)


def _grade_unbounded(predicted: str, gold: str, problem: str | None) -> bool:
    try:
        gold, predicted = normalize_answer(gold), normalize_answer(predicted)
        return _compact(predicted) == _compact(gold) or _answers_equal(gold, predicted, problem)
    except RecursionError:  # pathological nesting the guards did not catch: not equivalent (as in a helper)
        return False


def math_verify_timeout(seconds: int = DEFAULT_TIMEOUT_S) -> int | None:
    """math-verify's own time limit where its SIGALRM timer works (the main thread); None (no limit) elsewhere."""
    return seconds if threading.current_thread() is threading.main_thread() else None


def grade_answer(
    response: str, ground_truth: str, *, problem: str | None = None, timeout_s: int = DEFAULT_TIMEOUT_S
) -> bool:
    """True when the response's last boxed answer equals the ground truth (see the module's policy).

    `problem` (the question's text, when known) decides whether a bare list must keep its order (`ordered`).
    """
    predicted = extract_answer(response)
    if predicted is None or not predicted.strip():
        return False
    gold = unbox_ground_truth(str(ground_truth).strip())
    if not gold:
        raise ValueError("grade_answer: the ground truth is empty.")
    if len(predicted) + len(gold) <= FAST_PATH_CHARS and _compact(predicted) == _compact(gold):
        return True  # the same answer as written (spaces aside): no helper process from another thread
    if threading.current_thread() is threading.main_thread():
        return _grade_in_this_thread(predicted, gold, problem, timeout_s)
    with _HELPER_LOCK:  # SIGALRM needs the main thread: a helper process grades for the others
        return _HELPER.grade(response, gold, problem, timeout_s)


_HELPER, _HELPER_LOCK = GradingProcess(), threading.Lock()
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
    return grade_in_processes(work, processes)

