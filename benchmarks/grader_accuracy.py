"""How often the grader accepts right answers in other forms and rejects wrong ones, on the nine benchmarks' answers.

    python benchmarks/grader_accuracy.py --data-dir DIR [--processes N] [--json PATH]

DIR holds the nine `<benchmark>/test.parquet` files as released (e.g. the `data/` folder of github.com/thunlp/JustRL).
For every released ground truth, `labelled_answers` writes the forms a model boxes, each labelled right or wrong by
construction: the answer as released and in other notations (currency, unit words in the usual LaTeX spellings, a
restated left-hand side `x = ...`, unbraced `\\frac13` / `\\sqrt2`, an explicit `\\cdot`, a word in lower case),
lists reordered, as a set, joined by "and", and `\\pm` written out (right unless the problem wants an order); and
wrong ones: the value changed, infinity or 1/0 for a finite number, a list with an element dropped, added or changed,
a swapped ordered pair. Prints the share of right forms accepted and the count of wrong forms accepted, by kind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_UNIT_SPELLINGS = ("\\ \\mathrm{{{unit}}}", "\\text{{ {unit}}}", "\\,\\text{{{unit}}}", " {unit}", "\\mbox{{ {unit}}}",
                   "\\ \\text{{{unit}}}")
_UNIT_WORDS = ("minutes", "cents", "miles", "dollars", "cm", "degrees", "units", "meters")
_RESTATED = ("x", "a_1", "f(3)", "p(0) + p(4)", "N", "P(5)")
_VARIABLE = r"(?:[A-Za-z]\b|\\(?:alpha|beta|gamma|lambda|mu|omega|pi|rho|sigma|tau|theta)\b)"


def _top_level_items(truth: str) -> list[str]:
    from trl_justrl.grading.grader import split_top_level

    return split_top_level(truth)


def labelled_answers(truth: str, problem: str | None, index: int = 0) -> list[tuple[str, str, bool]]:
    """(kind, answer, right) forms of `truth`; `index` rotates the spelling used (unit words, restated names)."""
    from trl_justrl.grading.grader import container, normalize_answer

    forms: list[tuple[str, str, bool]] = [("as released", truth, True)]
    if re.fullmatch(r"-?\d{1,3}(?:,(?:\\!)?\s*\d{3})+", truth.strip()):  # `11,\! 111,\! 100`: the number itself
        forms.append(("without thousands separators", re.sub(r"[^\d-]", "", truth), True))
    plain = normalize_answer(truth)
    kind, _ = container(plain)
    number = _NUMBER.fullmatch(plain)
    if number:
        wrong = str(int(plain) + 1) if plain.lstrip("-").isdigit() else f"{float(plain) + 1:g}"
        unit = _UNIT_WORDS[index % len(_UNIT_WORDS)]
        spelling = _UNIT_SPELLINGS[index % len(_UNIT_SPELLINGS)]
        forms += [
            ("other notation", f"{plain}.0" if plain.lstrip("-").isdigit() else f"{plain}0", True),
            ("currency", f"\\${plain}", True),
            ("unit word", plain + spelling.format(unit=unit), True),
            ("wrong", wrong, False),
            ("wrong currency", f"\\${wrong}", False),
            ("wrong with unit", wrong + spelling.format(unit=unit), False),
            ("infinity", "\\infty", False),
            ("one over zero", "\\frac{1}{0}", False),
        ]
    else:
        forms.append(("wrong", f"{truth}+1", False))
    if "=" not in truth and "\\in " not in truth and kind == "value":
        name = _RESTATED[index % len(_RESTATED)]
        forms.append(("restated", f"{name} = {truth}", True))
        if number:
            forms.append(("restated wrong", f"{name} = {wrong}", False))
    if re.fullmatch(r"\\text\{\s*[A-Za-z]{3,}\s*\}", truth.strip()):
        forms.append(("word in lower case", normalize_answer(truth).lower(), True))
    unbraced = re.sub(r"\\frac\{(\w)\}\{(\w)\}", r"\\frac\1\2", re.sub(r"\\sqrt\{(\w)\}", r"\\sqrt\1", truth))
    if unbraced != truth:
        forms.append(("unbraced", unbraced, True))
    dotted = re.sub(rf"(?<=[\d}}])\s+(?={_VARIABLE})", " \\\\cdot ", truth, count=1)  # 2.2 \tau -> 2.2 \cdot \tau
    if dotted != truth and kind == "value" and "\\mbox" not in truth and "\\text" not in truth and "\\log" not in truth:
        forms.append(("explicit cdot", dotted, True))
    forms += _list_forms(plain, kind, problem)
    if "\\pm" in plain and kind == "value" and plain.count("\\pm") == 1:
        plus, minus = plain.replace("\\pm", "+"), plain.replace("\\pm", "-")
        forms += [("plus-minus written out", f"{plus}, {minus}", True),
                  ("plus-minus reversed", f"{minus}, {plus}", True),
                  ("plus-minus one sign", plus, False)]
    return forms


def _list_forms(plain: str, kind: str, problem: str | None) -> list[tuple[str, str, bool]]:
    from trl_justrl.grading.grader import ordered

    items = _top_level_items(plain[1:-1] if kind in ("tuple", "set") else plain)
    if len(items) < 2 or kind == "interval":
        return []
    forms: list[tuple[str, str, bool]] = []
    if kind == "list":
        any_order = not ordered(problem) or all(item.startswith("(") and item.endswith(")") for item in items)
        reversed_items = list(reversed(items))
        if reversed_items != items:
            forms.append(("list reversed", ", ".join(reversed_items), any_order))
            forms.append(("list rotated", ", ".join(items[1:] + items[:1]), any_order))
        if any_order:
            forms.append(("list as a set", f"\\{{{', '.join(reversed_items)}\\}}", True))
            if len(items) == 2:
                forms.append(("list joined by and", f"{items[1]} \\text{{ and }} {items[0]}", True))
        if len(set(items)) == len(items):
            forms.append(("list, an element dropped", ", ".join(items[:-1]), False))
            forms.append(("list, an element added", ", ".join(items + ["1000"]), False))
        forms.append(("list, an element changed", ", ".join(items[:-1] + [f"{items[-1]}+1"]), False))
    elif kind == "tuple" and len(items) == 2 and items[0] != items[1] and not any("(" in item for item in items):
        forms.append(("ordered pair swapped", f"({items[1]}, {items[0]})", False))
    return forms


def measure(cases: list[tuple[str, str, str | None]], processes: int | None = None) -> dict:
    """Grade every labelled form of every (benchmark, ground truth, problem); rates by kind and every miss."""
    from trl_justrl.grading.grader import grade_many

    labelled = [(benchmark, truth, problem, kind, answer, right)
                for index, (benchmark, truth, problem) in enumerate(cases)
                for kind, answer, right in labelled_answers(truth, problem, index)]
    grades = grade_many([(f"Reasoning.\n\nSo the answer is $\\boxed{{{answer}}}$.", truth, problem)
                         for _, truth, problem, _, answer, _ in labelled], processes=processes)
    by_kind: Counter = Counter()
    accepted: Counter = Counter()
    misses = []
    for (benchmark, truth, _, kind, answer, right), grade in zip(labelled, grades, strict=True):
        by_kind[kind, right] += 1
        accepted[kind, right] += grade
        if grade != right:
            misses.append({"benchmark": benchmark, "gold": truth, "kind": kind, "answer": answer, "right": right})
    right_total = sum(n for (_, right), n in by_kind.items() if right)
    wrong_total = sum(n for (_, right), n in by_kind.items() if not right)
    right_accepted = sum(n for (_, right), n in accepted.items() if right)
    wrong_accepted = sum(n for (_, right), n in accepted.items() if not right)
    return {"right": right_total, "right_accepted": right_accepted, "wrong": wrong_total,
            "wrong_accepted": wrong_accepted,
            "by_kind": [{"kind": kind, "right": right, "forms": n, "accepted": accepted[kind, right]}
                        for (kind, right), n in sorted(by_kind.items())],
            "misses": misses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder of <benchmark>/test.parquet files")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="also write the full result (every miss) here")
    args = parser.parse_args(argv)

    from trl_justrl.evaluation.problem_sets import BENCHMARKS, load_problems

    cases = [(benchmark.name, problem.ground_truth, problem.problem)
             for benchmark in BENCHMARKS.values() for problem in load_problems(benchmark, args.data_dir)]
    start = time.perf_counter()
    result = measure(cases, args.processes)
    seconds = time.perf_counter() - start
    print(f"{len(cases)} ground truths, {result['right'] + result['wrong']} labelled answers, {seconds:.0f} s "
          f"on {args.processes} processes")
    print(f"right forms accepted: {result['right_accepted']} of {result['right']} "
          f"({100 * result['right_accepted'] / result['right']:.2f}%)")
    print(f"wrong forms accepted: {result['wrong_accepted']} of {result['wrong']}")
    for row in result["by_kind"]:
        label = "right" if row["right"] else "wrong"
        print(f"  {row['kind']:28s} {label}  {row['accepted']:5d} accepted of {row['forms']}")
    for miss in result["misses"][:40]:
        print(f"  miss: {miss['benchmark']}: gold {miss['gold']!r}, {miss['kind']} {miss['answer']!r} "
              f"({'right' if miss['right'] else 'wrong'})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
