"""How often math-verify's two argument orders disagree on the nine benchmarks' answers.

    python benchmarks/verify_order.py --data-dir DIR [--json PATH]

DIR holds `<benchmark>/test.parquet` as released (e.g. the `data/` folder of github.com/thunlp/JustRL). Open-RS's
rewards call `verify(prediction, gold)`; `verify` is not symmetric, so this counts, over model-style answers to every
released ground truth, the pairs where `verify(gold, prediction)` would decide otherwise. The gold is parsed as
Open-RS parsed a worked solution (first LaTeX answer), the prediction as its accuracy reward parsed a completion.
Answer forms: the gold itself, another notation of it and a wrong one (as `benchmarks/grader_speed.py`), and the forms a
model writes around an answer: an assignment (`x = ...`), a set, `\\text{}`, a percent sign, the right-hand side
of an equation, and a list in reverse order.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grader_speed import variants  # noqa: E402 - the grader speed benchmark's forms (same, other notation, wrong)


def answer_forms(truth: str) -> dict[str, str]:
    """Answer strings a model might box for `truth`, by kind."""
    same, other, wrong = variants(truth)
    forms = {"same": same, "other notation": other, "wrong": wrong, "assignment": f"x = {truth}",
             "set": f"\\{{{truth}\\}}", "text": f"\\text{{{truth}}}", "percent": f"{truth}\\%"}
    if "=" in truth:
        forms["right-hand side"] = truth.split("=")[-1].strip()
    items = [item.strip() for item in truth.split(",")]
    if len(items) > 1:
        forms["reversed list"] = ", ".join(reversed(items))
    return forms


def compare_orders(items: list[tuple[str, str, str, str]]) -> dict:
    """For (benchmark, ground truth, kind, answer) items: pairs compared, and those where the orders disagree."""
    from math_verify import verify

    from trl_justrl.grading.grader import math_verify_timeout
    from trl_justrl.rewards.open_rs import parse_gold, parse_prediction

    timeout = math_verify_timeout()
    compared, disagree, skipped = Counter(), [], 0
    for benchmark, truth, kind, answer in items:
        gold = parse_gold(f"The answer is $\\boxed{{{truth}}}$.")
        if not gold:
            skipped += 1
            continue
        prediction = parse_prediction(f"Reasoning.\n\nSo the answer is $\\boxed{{{answer}}}$.")
        as_run = bool(verify(prediction, gold, timeout_seconds=timeout))
        swapped = bool(verify(gold, prediction, timeout_seconds=timeout))
        compared[kind] += 1
        if as_run != swapped:
            disagree.append({"benchmark": benchmark, "gold": truth, "kind": kind, "answer": answer,
                             "verify(prediction, gold)": as_run, "verify(gold, prediction)": swapped})
    return {"compared": sum(compared.values()), "by_kind": dict(compared), "gold_unparsed": skipped,
            "disagree": disagree}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder of <benchmark>/test.parquet files")
    parser.add_argument("--json", help="also write the full result (every disagreement) here")
    args = parser.parse_args(argv)

    from trl_justrl.evaluation.problem_sets import BENCHMARKS, load_problems

    items = [(benchmark.name, problem.ground_truth, kind, answer)
             for benchmark in BENCHMARKS.values() for problem in load_problems(benchmark, args.data_dir)
             for kind, answer in answer_forms(problem.ground_truth).items()]
    start = time.perf_counter()
    result = compare_orders(items)
    seconds = time.perf_counter() - start
    disagree = result["disagree"]
    rate = len(disagree) / max(result["compared"], 1)
    print(f"machine: {platform.platform()}; python {platform.python_version()}; {seconds:.0f} s")
    print(f"pairs compared: {result['compared']} ({result['gold_unparsed']} golds unparsed, skipped)")
    print(f"orders disagree: {len(disagree)} ({100 * rate:.2f}%)")
    kinds = Counter(d["kind"] for d in disagree)
    for kind, count in sorted(result["by_kind"].items()):
        print(f"  {kind:16s} {kinds.get(kind, 0):4d} of {count}")
    for d in disagree[:10]:
        print(f"  e.g. {d['benchmark']}: gold {d['gold']!r}, answer {d['answer']!r}: "
              f"Open-RS's order {d['verify(prediction, gold)']}, swapped {d['verify(gold, prediction)']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
