"""Run an evaluation: load problems, generate what is missing, grade, compute statistics, render the table."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..grading.grader import grade_many
from .problem_sets import BENCHMARKS, Benchmark, BenchmarkError, Problem, get_benchmark, load_problems
from .sampling import Backend, Sample, SamplingSettings
from .stats import BenchmarkStats, compute_stats
from .store import GenerationStore, read_json, write_json_atomic
from .table import JUSTRL_TABLE, ReferenceTable, render_table

# --verifier -> the CompassVerifier protocol asked about the rule-rejected responses (compass.PROTOCOLS)
VERIFIERS: dict[str, str | None] = {"none": None, "compass": "released", "compass-short": "short"}


def verifier_record(verifier: str) -> str:
    """How grading.json names the verifier: with its protocol, so grades made under another protocol (or before
    `compass` meant the released one) are redone, not reused."""
    protocol = VERIFIERS[verifier]
    return verifier if protocol is None else f"{verifier} (CompassVerifier, {protocol} protocol)"

logger = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """What to evaluate and how (the CLI's options)."""

    model: str
    benchmarks: Sequence[str] = field(default_factory=lambda: list(BENCHMARKS))
    output_dir: str = "outputs/eval"
    data_dir: str | None = None
    n: int | None = None  # override every benchmark's N
    limit: int | None = None
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    verifier: str = "none"  # or a key of VERIFIERS: CompassVerifier on the rejected responses
    batch_problems: int = 64  # problems per backend call (vLLM batches them; transformers loops)
    shard: tuple[int, int] | None = None  # (rank, size): generate only problems rank, rank + size, ... (no grading)
    table: ReferenceTable = JUSTRL_TABLE  # the paper whose reference rows are printed beside the results
    metric: str = "avg@N"  # the table's metric name (Open-RS: pass@1, the mean over a problem's samples too)


@dataclass
class BenchmarkResult:
    benchmark: str
    stats: BenchmarkStats | None  # None for a data-parallel worker (it does not grade)
    newly_generated: int  # problems generated in this run (0 when everything was already on disk)
    regraded: bool


@dataclass
class EvalReport:
    results: dict[str, BenchmarkResult]
    table: str

    @property
    def newly_generated(self) -> int:
        return sum(r.newly_generated for r in self.results.values())


def _check_meta(path: Path, meta: dict) -> None:
    """Refuse to resume a benchmark folder written with other settings (its samples would mix)."""
    existing = read_json(path)
    if existing is not None and existing != meta:
        changed = sorted(k for k in set(existing) | set(meta) if existing.get(k) != meta.get(k))
        raise BenchmarkError(
            f"{path.parent} holds generations made with other settings ({', '.join(changed)}); "
            "use another --output-dir or delete that folder."
        )
    write_json_atomic(path, meta)


def _grade(problems: list[Problem], samples: dict[str, list[Sample]], verifier: str) -> dict:
    """Rule-based grades for every sample, plus CompassVerifier verdicts on the rejected ones when asked."""
    items = [(s.response, p.ground_truth, p.problem) for p in problems for s in samples[p.problem_id]]
    grades = iter(grade_many(items))  # on all cores; each item keeps its time limit
    rule = {p.problem_id: [next(grades) for _ in samples[p.problem_id]] for p in problems}
    compass: dict[str, dict[int, str]] = {}
    if verifier != "none":
        from .compass import CompassVerifier

        rejected = [(p, s) for p in problems for s, ok in zip(samples[p.problem_id], rule[p.problem_id], strict=True)
                    if not ok]
        verdicts = CompassVerifier(protocol=VERIFIERS[verifier]).judge(
            [(p.problem, p.ground_truth, s.response) for p, s in rejected])
        for (p, s), verdict in zip(rejected, verdicts, strict=True):
            compass.setdefault(p.problem_id, {})[s.sample_index] = verdict
    correct = {
        pid: [ok or compass.get(pid, {}).get(i) == "A" for i, ok in enumerate(oks)] for pid, oks in rule.items()
    }
    return {"rule": rule, "compass": compass, "correct": correct}


def evaluate_benchmark(
    benchmark: Benchmark, problems: list[Problem], opts: EvalOptions, get_backend: Callable[[], Backend]
) -> BenchmarkResult:
    """Generate the missing samples of one benchmark, grade (unless already graded), and summarise."""
    n = opts.n or benchmark.n
    folder = Path(opts.output_dir) / benchmark.name
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"model": opts.model, "n": n, "limit": opts.limit, "settings": asdict(opts.settings),
            "problem_ids": [p.problem_id for p in problems]}
    _check_meta(folder / "meta.json", meta)

    store = GenerationStore(folder / "generations.jsonl")
    if opts.shard is not None:  # a data-parallel worker: its own file, merged by the parent
        rank, size = opts.shard
        store = GenerationStore(folder / f"generations.shard{rank}-of-{size}.jsonl")
        problems = problems[rank::size]
    else:
        merge_shards(folder, store, n)
    done = store.load_complete(n)
    todo = [p for p in problems if p.problem_id not in done]
    if todo:
        backend = get_backend()
        with tqdm(total=len(problems), initial=len(problems) - len(todo), desc=f"{benchmark.name} (n={n})") as bar:
            for start in range(0, len(todo), opts.batch_problems):
                chunk = todo[start : start + opts.batch_problems]
                for problem, group in zip(chunk, backend.generate(chunk, n, opts.settings), strict=True):
                    store.append(group)  # durable before the next problem starts
                    done[problem.problem_id] = group
                    bar.update(1)
    samples = {p.problem_id: done[p.problem_id] for p in problems}
    if opts.shard is not None:
        return BenchmarkResult(benchmark.name, None, newly_generated=len(todo), regraded=False)

    grading_path = folder / "grading.json"
    graded = read_json(grading_path)
    record = verifier_record(opts.verifier)
    regraded = graded is None or graded.get("meta") != meta or graded.get("verifier") != record or bool(todo)
    if regraded:
        grades = _grade(problems, samples, opts.verifier)
        stats = compute_stats(samples, grades["correct"])
        write_json_atomic(grading_path, {"meta": meta, "verifier": record, "stats": stats.to_dict(), **grades})
    else:
        stats = BenchmarkStats(**graded["stats"])
    return BenchmarkResult(benchmark.name, stats, newly_generated=len(todo), regraded=regraded)


def merge_shards(folder: Path, store: GenerationStore, n: int) -> None:
    """Move the complete problems of data-parallel workers' files into the benchmark's file, then delete them."""
    have = store.load_complete(n)
    for shard_file in sorted(folder.glob("generations.shard*.jsonl")):
        for problem_id, group in GenerationStore(shard_file).load_complete(n).items():
            if problem_id not in have:
                store.append(group)
                have[problem_id] = group
        shard_file.unlink()


def run_evaluation(opts: EvalOptions, get_backend: Callable[[], Backend]) -> EvalReport:
    """Evaluate every requested benchmark; bad names and files fail before any model is loaded."""
    benchmarks = [get_benchmark(name) for name in opts.benchmarks]
    problems = {b.name: load_problems(b, opts.data_dir, opts.limit) for b in benchmarks}
    backend: list[Backend] = []

    def lazy_backend() -> Backend:  # load the model only when something needs generating
        if not backend:
            backend.append(get_backend())
        return backend[0]

    results = {b.name: evaluate_benchmark(b, problems[b.name], opts, lazy_backend) for b in benchmarks}
    if opts.shard is not None:
        return EvalReport(results, table="")
    note = f" (limit {opts.limit})" if opts.limit else ""
    table = render_table(opts.model, {name: r.stats.avg_at_n for name, r in results.items()}, note=note,
                         table=opts.table)
    table = f"{opts.table.title}; this run: {opts.metric}\n\n{table}"
    out = Path(opts.output_dir)
    (out / "results.md").write_text(table + "\n")
    write_json_atomic(out / "results.json", {
        "model": opts.model, "settings": asdict(opts.settings), "verifier": verifier_record(opts.verifier),
        "metric": opts.metric,
        "benchmarks": {name: r.stats.to_dict() for name, r in results.items()},
    })
    return EvalReport(results, table)


def format_report(report: EvalReport) -> str:
    """The table plus one line of extra statistics per benchmark."""
    lines = [report.table, ""]
    for name, r in report.results.items():
        s = r.stats
        lines.append(
            f"{name}: avg@{s.samples_per_problem} {s.avg_at_n:.2f}, best-of-{s.samples_per_problem} "
            f"{s.best_of_n:.2f}, solved by none/all {s.solved_by_none}/{s.solved_by_all} of {s.problems}, "
            f"mean length {s.mean_length:.0f}, truncated {s.truncated:.1f}%, no box {s.no_box:.1f}%, "
            f"distinct-4 {s.distinct_4gram:.1f}% ({r.newly_generated} problems generated now)"
        )
    return "\n".join(lines)

