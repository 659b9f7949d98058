"""The paper's nine evaluation benchmarks: names, samples per problem, Hub ids, local layout, loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset

from ..data_errors import DataError, row_namer
from ..grading.answers import row_ground_truth


@dataclass(frozen=True)
class Benchmark:
    """One evaluation set: `n` samples per problem (RECIPE: 4 for the large sets, 32 for the small ones)."""

    name: str
    n: int
    hub_id: str
    folder: str  # the folder name under --data-dir (as in JustRL's released data/ folder)
    split: str = "test"
    size: int | None = None  # problems in the released file, for information


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("AIME24", 32, "math-ai/aime24", "AIME24", size=30),
        Benchmark("AIME25", 32, "math-ai/aime25", "AIME25", size=30),
        Benchmark("AMC23", 32, "math-ai/amc23", "AMC23", size=40),
        Benchmark("MATH-500", 4, "HuggingFaceH4/MATH-500", "MATH-500", size=500),
        Benchmark("Minerva", 4, "math-ai/minervamath", "Minerva", size=272),
        Benchmark("OlympiadBench", 4, "math-ai/olympiadbench", "Olympiad-Bench", size=674),
        Benchmark("HMMT25", 32, "MathArena/hmmt_feb_2025", "HMMT25", split="train", size=30),
        Benchmark("BRUMO25", 32, "MathArena/brumo_2025", "BRUMO25", split="train", size=30),
        Benchmark("CMIMC25", 32, "MathArena/cmimc_2025", "CMIMC25", split="train", size=40),
    )
}


class BenchmarkError(ValueError):
    """A benchmark problem: unknown name, missing file, missing columns, empty answer."""


def get_benchmark(name: str) -> Benchmark:
    """Look a benchmark up by name (case-insensitive, '-' and '_' ignored)."""
    key = name.lower().replace("-", "").replace("_", "")
    for benchmark in BENCHMARKS.values():
        if key in (benchmark.name.lower().replace("-", ""), benchmark.folder.lower().replace("-", "")):
            return benchmark
    raise BenchmarkError(f"Unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}.")


@dataclass(frozen=True)
class Problem:
    """One problem: an id stable across runs, the problem text (without suffix) and the ground truth."""

    problem_id: str
    problem: str
    ground_truth: str


def _problem_text(row: dict[str, Any], where: str) -> str:
    if row.get("prompt") is not None:
        prompt = row["prompt"]
        if isinstance(prompt, str):
            return prompt
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str) and users[-1].strip():
            return users[-1]
        raise BenchmarkError(f"{where}: field 'prompt' has no user message with text.")
    for field in ("problem", "question"):
        if isinstance(row.get(field), str) and row[field].strip():
            return row[field]
    raise BenchmarkError(f"{where}: no problem text (expected 'prompt' messages, 'problem' or 'question').")


def _problem_id(row: dict[str, Any], benchmark: Benchmark, index: int) -> str:
    extra = row.get("extra_info")
    if isinstance(extra, dict) and extra.get("index") is not None:
        return str(extra["index"])
    for field in ("problem_idx", "id", "unique_id"):
        if row.get(field) is not None:
            return f"{benchmark.name}-{row[field]}"
    return f"{benchmark.name}-{index}"


def benchmark_file(benchmark: Benchmark, data_dir: str | Path) -> Path:
    """The local file of a benchmark under `data_dir` (`<folder>/test.parquet`, or any parquet / jsonl there)."""
    folder = Path(data_dir) / benchmark.folder
    for candidate in (folder / "test.parquet", folder / "test.jsonl"):
        if candidate.is_file():
            return candidate
    found = sorted([*folder.glob("*.parquet"), *folder.glob("*.jsonl")]) if folder.is_dir() else []
    if not found:
        raise BenchmarkError(f"{benchmark.name}: no test.parquet or test.jsonl in {folder}.")
    return found[0]


def load_problems(benchmark: Benchmark, data_dir: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    """The benchmark's problems from `data_dir` when given, else from its Hub id; `limit` keeps the first K."""
    if data_dir is not None:
        path = benchmark_file(benchmark, data_dir)
        kind = "parquet" if path.suffix == ".parquet" else "json"
        dataset: Dataset = load_dataset(kind, data_files=str(path), split="train")
        source = str(path)
    else:
        dataset = load_dataset(benchmark.hub_id, split=benchmark.split)
        source = benchmark.hub_id
    if len(dataset) == 0:
        raise BenchmarkError(f"{source}: no problems.")
    rows = dataset.select(range(min(limit, len(dataset)))) if limit else dataset
    problems = []
    name_row = row_namer(source)
    for index, row in enumerate(rows):
        where = name_row(index)
        try:
            text, truth = _problem_text(row, where), row_ground_truth(row, where=where)
        except DataError as exc:
            raise BenchmarkError(str(exc)) from exc
        problems.append(Problem(_problem_id(row, benchmark, index), text, truth))
    ids = [p.problem_id for p in problems]
    if len(set(ids)) != len(ids):
        problems = [Problem(f"{benchmark.name}-{i}", p.problem, p.ground_truth) for i, p in enumerate(problems)]
    return problems
