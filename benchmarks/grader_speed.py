"""Benchmark: grading rate of `grade_answer` on one core and of `grade_many` on all cores, on a realistic mix.

    python benchmarks/grader_speed.py --data-dir DIR [--repeat 2] [--processes N]

DIR holds the nine `<benchmark>/test.parquet` files as released (e.g. the `data/` folder of github.com/thunlp/JustRL).

The mix is built from the nine benchmarks' released answers: for each ground truth, a response boxing the same
answer, one boxing it in another notation (decimal for a fraction, `\\dfrac`, spaces, a trailing `$`), and one boxing a
wrong answer; so exact matches, symbolic comparisons and rejections all occur, in the proportions an evaluation of a
mediocre model sees. Prints items, seconds, items per second, the median and p99 per-item time on one core.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`


def variants(truth: str) -> list[str]:
    """The same answer, another notation of it, a wrong one."""
    other = truth.replace("\\frac", "\\dfrac") if "\\frac" in truth else f" {truth} "
    if truth.lstrip("-").isdigit():
        other, wrong = f"{truth}.0", str(int(truth) + 1)
    else:
        wrong = f"{truth}+1"
    return [truth, other, wrong]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder of <benchmark>/test.parquet files")
    parser.add_argument("--repeat", type=int, default=1, help="copies of the mix (more items, steadier rates)")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)

    from trl_justrl.evaluation.problem_sets import BENCHMARKS, load_problems
    from trl_justrl.grading.grader import grade_answer, grade_many

    items = []
    for benchmark in BENCHMARKS.values():
        for problem in load_problems(benchmark, args.data_dir):
            items += [(f"Reasoning.\n\nSo the answer is $\\boxed{{{v}}}$.", problem.ground_truth, problem.problem)
                      for v in variants(problem.ground_truth)]
    items *= args.repeat

    per_item = []
    start = time.perf_counter()
    for response, truth, problem in items:
        t0 = time.perf_counter()
        grade_answer(response, truth, problem=problem)
        per_item.append(time.perf_counter() - t0)
    one_core = time.perf_counter() - start
    start = time.perf_counter()
    grades = grade_many(items, processes=args.processes)
    all_cores = time.perf_counter() - start

    per_item.sort()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"items: {len(items)} ({sum(grades)} graded right)")
    print(f"one core (grade_answer, main thread): {one_core:.1f} s, {len(items) / one_core:.0f} items/s, "
          f"median {1e3 * statistics.median(per_item):.2f} ms, p99 {1e3 * per_item[int(0.99 * len(per_item))]:.1f} ms, "
          f"max {per_item[-1]:.2f} s")
    print(f"{args.processes} processes (grade_many, start-up included): {all_cores:.1f} s, "
          f"{len(items) / all_cores:.0f} items/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
