"""The paper's nine evaluation benchmarks (`registry`) and how N responses per problem are sampled (`sampling`).

Used by the in-training validation (`trl_justrl.validation`) and by the evaluation (`trl_justrl.evaluation`).
"""

from .registry import BENCHMARKS, Benchmark, BenchmarkError, Problem, get_benchmark, load_problems
from .sampling import Sample, SamplingSettings

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkError", "Problem", "Sample", "SamplingSettings", "get_benchmark",
           "load_problems"]
