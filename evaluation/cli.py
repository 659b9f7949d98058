"""`python -m evaluation`: the paper's avg@N evaluation of a checkpoint on the nine benchmarks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .benchmarks import BENCHMARKS, BenchmarkError
from .generation import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, SamplingSettings
from .runner import EvalOptions, format_report, run_evaluation


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__)
    p.add_argument("--model", required=True, help="Hub id, local checkpoint, or 'smollm2-135m-instruct'.")
    p.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), help="Default: all nine.")
    p.add_argument("--data-dir", help="Folder laid out as <benchmark>/test.parquet; default: load from the Hub.")
    p.add_argument("--n", type=int, help="Samples per problem for every benchmark (default: 4 or 32 as the paper).")
    p.add_argument("--limit", type=int, help="Only the first K problems of each benchmark (smoke runs).")
    p.add_argument("--backend", choices=["vllm", "transformers"], default="vllm")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verifier", choices=["none", "compass"], default="none",
                   help="compass: send rule-rejected responses to CompassVerifier-3B (vLLM).")
    p.add_argument("--output-dir", default="outputs/eval")
    p.add_argument("--dtype", default="auto", help="Model dtype (auto, bfloat16, float32).")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism.")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM GPU memory fraction.")
    p.add_argument("--batch-problems", type=int, default=64, help="Problems per generation call.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    for name in ("n", "limit", "max_new_tokens", "batch_problems"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')} must be positive, got {value}", file=sys.stderr)
            return 2
    settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    opts = EvalOptions(
        model=args.model, benchmarks=args.benchmarks, output_dir=args.output_dir, data_dir=args.data_dir,
        n=args.n, limit=args.limit, settings=settings, verifier=args.verifier, batch_problems=args.batch_problems,
    )

    def backend():
        if args.backend == "vllm":
            from .generation import VLLMBackend

            return VLLMBackend(args.model, tensor_parallel_size=args.tensor_parallel_size,
                               gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype)
        from .generation import TransformersBackend

        return TransformersBackend.from_pretrained(args.model, dtype=args.dtype)

    try:
        report = run_evaluation(opts, backend)
    except (BenchmarkError, FileNotFoundError, ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"\nSaved to {args.output_dir}/ (results.md, results.json, <benchmark>/generations.jsonl, grading.json)")
    return 0
