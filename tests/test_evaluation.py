"""Evaluation: the grader, benchmark loading and bad input, statistics, the table, the pipeline and its resume."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import SHARED_BENCHMARKS

from trl_justrl.evaluation.cli import main as cli_main
from trl_justrl.evaluation.compass import (
    CompassVerifier,
    build_prompt,
    build_released_prompt,
    parse_released_verdict,
    parse_verdict,
)
from trl_justrl.evaluation.problem_sets import BENCHMARKS, BenchmarkError, get_benchmark, load_problems
from trl_justrl.evaluation.runner import EvalOptions, run_evaluation
from trl_justrl.evaluation.sampling import Sample, SamplingSettings, TransformersBackend
from trl_justrl.evaluation.stats import compute_stats, distinct_ngrams
from trl_justrl.evaluation.store import GenerationStore
from trl_justrl.evaluation.table import render_table
from trl_justrl.grading.grader import grade_answer
from trl_justrl.prompts import eval_messages

SHARED = SHARED_BENCHMARKS


# ---- grader ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "gold", "correct"),
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
        ("0.5", "\\frac12", True),
        ("\\frac{2}{4}", "\\frac{1}{2}", True),
        ("\\frac{1}{3}", "\\frac{1}{2}", False),
        ("[1,2)", "[1, 2)", True),
        ("(1,2]", "[1,2)", False),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("(3, \\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
        ("5\\text{ cm}", "5", True),
        ("10^\\circ", "10", True),
        ("x = 5", "5", True),
        ("x = 6", "5", False),
        ("1,000", "1000", True),
        ("2^{99}", "2^{99}", True),
        ("\\sqrt{8}", "2\\sqrt{2}", True),
        ("204", "\\boxed{204}", True),  # ground truths that are themselves boxed
        ("205", "\\boxed{204}", False),
    ],
)
def test_tricky_equivalences(predicted, gold, correct):
    assert grade_answer(f"Some reasoning. The answer is $\\boxed{{{predicted}}}$.", gold) is correct


def test_grader_needs_a_closed_box():
    assert not grade_answer("The answer is 5.", "5")
    assert not grade_answer("The answer is \\boxed{5", "5")
    assert not grade_answer("\\boxed{}", "5")
    assert grade_answer("first \\boxed{4}, finally \\boxed{5}", "5")
    with pytest.raises(ValueError, match="empty"):
        grade_answer("\\boxed{5}", " ")


def test_grader_never_executes_model_text(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    assert not grade_answer(f"\\boxed{{{payload}}}", "5")
    assert not marker.exists()


def test_grader_time_limit_on_pathological_input():
    start = time.monotonic()
    assert not grade_answer("\\boxed{9^{9^{9^{9^{9}}}} - 9^{9^{9^{9^{8}}}}}", "1", timeout_s=1)
    assert time.monotonic() - start < 30  # bounded by the per-item limit, not by sympy


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/benchmarks is not present")
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_grader_on_released_ground_truths(name):
    problems = load_problems(get_benchmark(name), SHARED)
    assert len(problems) == get_benchmark(name).size
    for p in problems:
        assert grade_answer(f"Reasoning...\n\nSo the final answer is $\\boxed{{{p.ground_truth}}}$.", p.ground_truth), p
        if p.ground_truth.lstrip("-").isdigit():
            changed = str(int(p.ground_truth) + 1)
            assert grade_answer(f"\\boxed{{{p.ground_truth}.0}}", p.ground_truth), p  # symbolic path
        else:
            changed = "123456789"
        assert not grade_answer(f"So the final answer is $\\boxed{{{changed}}}$.", p.ground_truth), p


# ---- benchmarks and bad input ------------------------------------------------------------------------------


def make_data_dir(root: Path) -> Path:
    """Two tiny benchmarks in the two released layouts."""
    (root / "AIME24").mkdir(parents=True)
    pd.DataFrame([
        {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "data_source": "AIME24",
         "reward_model": {"ground_truth": f"\\boxed{{{2 * i}}}", "style": "rule"},
         "extra_info": {"index": f"AIME24-{i}", "split": "test"}}
        for i in range(3)
    ]).to_parquet(root / "AIME24" / "test.parquet")
    (root / "BRUMO25").mkdir()
    pd.DataFrame([{"problem_idx": str(i), "problem": f"What is {i} times 3?", "answer": str(3 * i)} for i in range(3)]
                 ).to_parquet(root / "BRUMO25" / "test.parquet")
    return root


def test_benchmark_registry_is_the_paper():
    assert list(BENCHMARKS) == ["AIME24", "AIME25", "AMC23", "MATH-500", "Minerva", "OlympiadBench", "HMMT25",
                                "BRUMO25", "CMIMC25"]
    assert {b.name: b.n for b in BENCHMARKS.values()} == {
        "AIME24": 32, "AIME25": 32, "AMC23": 32, "MATH-500": 4, "Minerva": 4, "OlympiadBench": 4,
        "HMMT25": 32, "BRUMO25": 32, "CMIMC25": 32,
    }
    assert get_benchmark("olympiad-bench").name == "OlympiadBench" and get_benchmark("math500").name == "MATH-500"


def test_problems_load_in_both_layouts(tmp_path):
    data = make_data_dir(tmp_path)
    aime = load_problems(get_benchmark("AIME24"), data, limit=2)
    assert [(p.problem_id, p.ground_truth) for p in aime] == [("AIME24-0", "0"), ("AIME24-1", "2")]
    brumo = load_problems(get_benchmark("BRUMO25"), data)
    assert brumo[2].problem == "What is 2 times 3?" and brumo[2].ground_truth == "6"
    suffix = "Please reason step by step, and put your final answer within \\boxed{}."
    assert eval_messages("Q?")[0]["content"] == "Q? " + suffix  # evaluation: the suffix after a space


def test_bad_input_is_named(tmp_path):
    data = make_data_dir(tmp_path)
    with pytest.raises(BenchmarkError, match="Unknown benchmark 'AIME23'"):
        get_benchmark("AIME23")
    with pytest.raises(BenchmarkError, match="no test.parquet"):
        load_problems(get_benchmark("AMC23"), data)
    pd.DataFrame([{"question_text": "x", "solution": "1"}]).to_parquet(data / "BRUMO25" / "test.parquet")
    with pytest.raises(BenchmarkError, match=r"BRUMO25/test.parquet: row 1 \(counted from 1\): no problem text"):
        load_problems(get_benchmark("BRUMO25"), data)
    pd.DataFrame([{"problem": "x", "answer": ""}]).to_parquet(data / "BRUMO25" / "test.parquet")
    with pytest.raises(BenchmarkError, match=r"row 1 \(counted from 1\): field 'answer' is missing or empty"):
        load_problems(get_benchmark("BRUMO25"), data)
    assert cli_main(["--model", "m", "--benchmarks", "NOPE", "--data-dir", str(data)]) == 2


# ---- statistics and table ----------------------------------------------------------------------------------


def sample(pid: str, i: int, text: str, tokens: int = 10, finish: str = "stop") -> Sample:
    return Sample(pid, i, 1, text, tokens, finish)


def test_statistics():
    samples = {
        "a": [sample("a", 0, "\\boxed{1}"), sample("a", 1, "\\boxed{1}")],
        "b": [sample("b", 0, "\\boxed{2}"), sample("b", 1, "no box", 30, "length")],
        "c": [sample("c", 0, "\\boxed{9}"), sample("c", 1, "\\boxed{8}")],
    }
    correct = {"a": [True, True], "b": [True, False], "c": [False, False]}
    s = compute_stats(samples, correct)
    assert s.avg_at_n == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert s.best_of_n == pytest.approx(200 / 3)
    assert (s.solved_by_none, s.solved_by_all) == (1, 1)
    assert s.mean_length == pytest.approx(80 / 6) and s.no_box == pytest.approx(100 / 6)
    assert s.truncated == pytest.approx(100 / 6)
    assert distinct_ngrams(["a b c d a b c d"]) == pytest.approx(100 * 4 / 5)


def test_table_has_the_paper_rows():
    table = render_table("my-model", {"AIME24": 50.0, "MATH-500": 90.0})
    lines = table.splitlines()
    assert lines[0].startswith("| model | AIME24 | AIME25")
    assert "| JustRL-DeepSeek-1.5B (4,380 steps) | 52.60 | 38.75 | 91.02" in table and "| 54.87 |" in table
    assert lines[-1] == "| **my-model** | 50.00 | - | - | 90.00 | - | - | - | - | - | 70.00 (2/9) |"
    full = render_table("m", dict.fromkeys(["AIME24", "AIME25", "AMC23", "MATH-500", "Minerva", "OlympiadBench",
                                            "HMMT25", "BRUMO25", "CMIMC25"], 10.0))
    assert full.splitlines()[-1].endswith("| 10.00 |")


# ---- the pipeline and its resume -----------------------------------------------------------------------------


class FakeBackend:
    """Answers 'What is i + i?' right for even i; counts the problems it was asked for."""

    def __init__(self):
        self.asked: list[str] = []

    def generate(self, problems, n, settings):
        self.asked += [p.problem_id for p in problems]
        return [[sample(p.problem_id, i, f"\\boxed{{{p.ground_truth if int(p.ground_truth) % 4 == 0 else -1}}}")
                 for i in range(n)] for p in problems]


def test_resume_skips_finished_problems_and_drops_half_written_ones(tmp_path):
    data = make_data_dir(tmp_path / "data")
    out = tmp_path / "out"
    opts = EvalOptions(model="fake", benchmarks=["AIME24"], data_dir=str(data), output_dir=str(out), n=2)
    first = FakeBackend()
    report = run_evaluation(opts, lambda: first)
    assert first.asked == ["AIME24-0", "AIME24-1", "AIME24-2"]
    assert report.results["AIME24"].stats.avg_at_n == pytest.approx(200 / 3)  # 0 and 4 right, 2 wrong

    # a crash: the last problem lost one sample and the file ends in a torn line
    path = out / "AIME24" / "generations.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + '\n{"problem_id": "AIME24-2", "sam')
    (out / "AIME24" / "grading.json").unlink()
    second = FakeBackend()
    report = run_evaluation(opts, lambda: second)
    assert second.asked == ["AIME24-2"] and report.newly_generated == 1
    assert len(path.read_text().splitlines()) == 6 and report.results["AIME24"].regraded

    def must_not_load():
        raise AssertionError("nothing should be generated")

    report = run_evaluation(opts, must_not_load)
    assert report.newly_generated == 0 and not report.results["AIME24"].regraded

    changed = EvalOptions(**{**opts.__dict__, "settings": SamplingSettings(temperature=1.0)})
    with pytest.raises(BenchmarkError, match="other settings"):
        run_evaluation(changed, must_not_load)


def test_store_keeps_only_complete_problems(tmp_path):
    store = GenerationStore(tmp_path / "g.jsonl")
    store.append([sample("p", 0, "x"), sample("p", 1, "y")])
    store.append([sample("q", 0, "z")])
    assert list(store.load_complete(2)) == ["p"]
    assert len((tmp_path / "g.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_full_pipeline_with_the_embedded_model(tmp_path, smollm2_path):
    data = make_data_dir(tmp_path / "data")
    out = tmp_path / "ev"
    args = ["--model", "smollm2-135m-instruct", "--data-dir", str(data), "--benchmarks", "AIME24", "BRUMO25",
            "--limit", "2", "--n", "2", "--backend", "transformers", "--max-new-tokens", "16", "--output-dir", str(out)]
    assert cli_main(args) == 0
    for name in ("AIME24", "BRUMO25"):
        rows = [json.loads(line) for line in (out / name / "generations.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and {r["sample_index"] for r in rows} == {0, 1}
        assert all(r["num_tokens"] <= 16 and r["finish_reason"] in ("stop", "length") and r["seed"] for r in rows)
        grading = json.loads((out / name / "grading.json").read_text())
        assert set(grading["stats"]) >= {"avg_at_n", "best_of_n", "solved_by_none", "solved_by_all", "mean_length",
                                         "no_box", "distinct_4gram"}
    table = (out / "results.md").read_text()
    assert "JustRL-Nemotron-1.5B" in table and "**smollm2-135m-instruct** (limit 2)" in table
    before = (out / "AIME24" / "generations.jsonl").read_text()
    assert cli_main(args) == 0  # resumed: nothing new
    assert (out / "AIME24" / "generations.jsonl").read_text() == before


@pytest.mark.slow
def test_same_seed_same_samples(tmp_path, tiny_model_path):
    backend = TransformersBackend.from_pretrained(str(tiny_model_path), dtype="float32")
    problems = load_problems(get_benchmark("AIME24"), make_data_dir(tmp_path), limit=2)
    settings = SamplingSettings(max_new_tokens=6, seed=3)
    first = list(backend.generate(problems, 2, settings))
    assert list(backend.generate(problems[::-1], 2, settings))[::-1] == first  # order and batch do not matter
    assert list(backend.generate(problems, 2, SamplingSettings(max_new_tokens=6, seed=4))) != first


# ---- CompassVerifier -----------------------------------------------------------------------------------------


def test_compass_prompt_and_verdicts():
    prompt = build_prompt("What is 1+1?", "2", "x" * 10000 + " so \\boxed{two}")
    assert "What is 1+1?" in prompt and "Reference answer:\n2" in prompt and prompt.count("x") < 5000
    assert [parse_verdict(t) for t in ["A", " b\n", "C.", "The answer", ""]] == ["A", "B", "C", "C", "C"]
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs vLLM"):
            CompassVerifier()


# sha256 of JustRL's evals/grade.py CV_PROMPT.format(question="", gold_answer="GOLD", llm_response="RESPONSE")
RELEASED_PROMPT_SHA256 = "68ade8c8c08dcf2f1b4c4faa36806c61b7a796a588d14e1d4c83e43af11b26e5"


class FakeVLLM:
    """What CompassVerifier calls of vLLM: LLM(...).chat(messages, SamplingParams, use_tqdm), outputs[0].text."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, model, **kwargs):
                fake.model = model

            def chat(self, messages, params, use_tqdm=True):
                fake.calls.append((messages, params.kwargs))
                texts = [fake.replies.pop(0) for _ in messages]
                return [SimpleNamespace(outputs=[SimpleNamespace(text=text)]) for text in texts]

        self.module = SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_compass_as_released_asks_and_reads_as_justrls_script(monkeypatch):
    """The released protocol (the paper's table): its exact prompt with an empty question and the whole response,
    greedy, 2,048 new tokens, and only an exact "A" is correct; the runner uses it for --verifier compass."""
    import hashlib

    from trl_justrl.evaluation.problem_sets import Problem
    from trl_justrl.evaluation.runner import _grade

    message = build_released_prompt("ignored problem", "GOLD", "RESPONSE")
    assert hashlib.sha256(message.encode()).hexdigest() == RELEASED_PROMPT_SHA256
    long = "y" * 20000 + " so \\boxed{two}"
    assert long in build_released_prompt("What is 1+1?", "2", long)  # the whole response, no problem text
    assert [parse_released_verdict(t) for t in ["A", " A\n", "a", "The answer is A", "B", ""]] == [
        "A", "A", "C", "C", "B", "C"]

    fake = FakeVLLM(["A", "The answer is A", "A"])
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    problems = [Problem("p1", "What is 1+1?", "2"), Problem("p2", "What is 2+2?", "4")]
    samples = {"p1": [Sample("p1", 0, 0, "so \\boxed{2}", 5, "stop"), Sample("p1", 1, 0, "so \\boxed{two}", 5, "stop")],
               "p2": [Sample("p2", 0, 0, "so \\boxed{four}", 5, "stop"), Sample("p2", 1, 0, "no box", 5, "length")]}
    graded = _grade(problems, samples, "compass")
    assert fake.model == "opencompass/CompassVerifier-3B"
    (messages, params), = fake.calls
    assert params == {"temperature": 0.0, "max_tokens": 2048}
    rejected = [("2", "so \\boxed{two}"), ("4", "so \\boxed{four}"), ("4", "no box")]
    assert [m[0]["content"] for m in messages] == [build_released_prompt("", gold, text) for gold, text in rejected]
    assert graded["rule"] == {"p1": [True, False], "p2": [False, False]}
    assert graded["correct"] == {"p1": [True, True], "p2": [False, True]}

    fake = FakeVLLM(["b", "A."])
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    graded = _grade(problems[1:], {"p2": samples["p2"]}, "compass-short")
    (messages, params), = fake.calls
    assert params == {"temperature": 0.0, "max_tokens": 8} and "Reference answer:\n4" in messages[0][0]["content"]
    assert graded["correct"] == {"p2": [False, True]}


@pytest.mark.slow
def test_validation_callback_in_a_training_run(tmp_path, tiny_model_path):
    from trl_justrl import JustRLConfig, JustRLTrainer
    from trl_justrl.data import load_training_data
    from trl_justrl.evaluation.validation import ValidationCallback

    args = JustRLConfig(
        output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False, report_to="none", prompts_per_step=2,
        prompts_per_update=1, num_generations=2, per_device_train_batch_size=2, max_completion_length=4,
        warmup_rl_steps=0, save_every_rl_steps=None, save_strategy="no", max_steps=2, logging_steps=1,
        gradient_checkpointing=False, eval_steps=2,
    )
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"], args=args,
                            train_dataset=load_training_data("synthetic", synthetic_size=8))
    callback = ValidationCallback(trainer, ["AIME24"], n=2, data_dir=make_data_dir(tmp_path / "data"), limit=2,
                                  settings=SamplingSettings(max_new_tokens=4))
    trainer.add_callback(callback)
    trainer.train()
    logged = [(h["step"], h["eval/AIME24/mean@2"]) for h in trainer.state.log_history if "eval/AIME24/mean@2" in h]
    assert [step for step, _ in logged] == [0, 2]  # before training, then every eval_steps
    assert all(value == 0.0 for _, value in logged)  # a random model boxes nothing
    with pytest.raises(BenchmarkError, match="Unknown benchmark"):
        ValidationCallback(trainer, ["AIME2024"])


@pytest.mark.slow
def test_data_parallel_workers_match_a_single_process(tmp_path, tiny_model_path):
    data = make_data_dir(tmp_path / "data")
    common = ["--model", str(tiny_model_path), "--data-dir", str(data), "--benchmarks", "AIME24", "--n", "2",
              "--backend", "transformers", "--max-new-tokens", "6", "--dtype", "float32", "--seed", "5"]
    assert cli_main([*common, "--output-dir", str(tmp_path / "one")]) == 0
    assert cli_main([*common, "--output-dir", str(tmp_path / "two"), "--data-parallel-size", "2"]) == 0

    def rows(folder):
        lines = (tmp_path / folder / "AIME24" / "generations.jsonl").read_text().splitlines()
        return sorted(json.dumps(json.loads(line), sort_keys=True) for line in lines)

    assert rows("two") == rows("one") and len(rows("one")) == 6  # per-problem seeds: sharding changes nothing
    assert not list((tmp_path / "two" / "AIME24").glob("generations.shard*"))  # merged and removed
