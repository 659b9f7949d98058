"""Benchmark: start-up cost of the released training file, DAPO-Math-17k's 1,791,700 rows (17,917 problems ~100x).

    python benchmarks/load_dapo.py [--problems 17917] [--copies 100] [--workdir outputs/benchmark_load_dapo]

Writes a synthetic parquet in the file's layout (verl: `prompt` messages with DAPO's "Answer:" wrapper,
`reward_model.ground_truth`, `extra_info`; problems of realistic length, each stored `--copies` times), then times
what a run does before its first step: `load_training_data` (read + normalise + suffix) and the 1,024-token prompt
filter (`PromptLengthFilter` with the SmolLM2 chat template; each distinct prompt is measured once). Prints seconds
and the peak resident memory of this process.
"""

from __future__ import annotations

import argparse
import platform
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

WRAP_HEAD = ("Solve the following math problem step by step. The last line of your response should be of the form "
             "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n")
WRAP_TAIL = '\n\nRemember to put your answer on its own line after "Answer:".'
WORDS = ("Let", "triangle", "$ABC$", "have", "integer", "sides", "and", "the", "sum", "of", "all", "possible",
         "values", "$x^2+y^2$", "is", "$\\frac{m}{n}$", "where", "$m$", "$n$", "are", "relatively", "prime.", "Find")


def write_file(path: Path, problems: int, copies: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    texts = [WRAP_HEAD + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) + WRAP_TAIL
             for _ in range(problems)]
    answers = [str(rng.randint(0, 999)) for _ in range(problems)]
    order = [i for _ in range(copies) for i in range(problems)]
    table = pa.table({
        "data_source": ["math_dapo"] * len(order),
        "prompt": [[{"role": "user", "content": texts[i]}] for i in order],
        "ability": ["MATH"] * len(order),
        "reward_model": [{"ground_truth": answers[i], "style": "rule-lighteval/MATH_v2"} for i in order],
        "extra_info": [{"index": f"{i}-{k}"} for k, i in enumerate(order)],
    })
    pq.write_table(table, path)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=17917)
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=Path("outputs/benchmark_load_dapo"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"dapo-math-17k-{args.problems}x{args.copies}.parquet"
    if not path.is_file():
        start = time.perf_counter()
        write_file(path, args.problems, args.copies)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s",
              flush=True)

    from transformers import AutoTokenizer

    from trl_justrl.data import PromptLengthFilter, load_training_data
    from trl_justrl.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    start = time.perf_counter()
    dataset = load_training_data(str(path))
    loaded = time.perf_counter() - start
    print(f"load + normalise: {loaded:.0f} s, {len(dataset):,} rows, peak RSS {peak_rss_gib():.1f} GiB", flush=True)
    start = time.perf_counter()
    length_filter = PromptLengthFilter(tokenizer, 1024)
    kept = length_filter.apply(dataset)
    filtered = time.perf_counter() - start
    print(f"length filter: {filtered:.0f} s, kept {len(kept):,}, dropped {length_filter.dropped:,}, "
          f"{len(length_filter._measured):,} distinct prompts measured, peak RSS {peak_rss_gib():.1f} GiB")
    print(f"total before the first step: {loaded + filtered:.0f} s on {platform.platform()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
