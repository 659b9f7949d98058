"""In-training validation as the JustRL script ran it (the paper's Figure 1): benchmarks sampled `n` times per problem
before training and every `eval_steps`, graded with math-verify, logged as `eval/<benchmark>/mean@<n>`.

Sampling goes through the run's own generator: TRL's vLLM server client (main process), its colocated engine, or
transformers `generate`; the trainer's weights are synced to vLLM first. Predictions are parsed as LaTeX only (the
script also ran sympy's `parse_expr` on model text; docs/evaluation.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list, gather_object
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.models.utils import unwrap_model_for_generation

from ..generation.client import ServedGeneration, VLLMServerLost
from ..grading.grader import math_verify_timeout
from ..prompts import VALIDATION_STYLE, eval_messages
from ..trl_internals import mark_vllm_sleeping, mark_vllm_synced, trl_metrics, vllm_holds_step
from .problem_sets import Problem, get_benchmark, load_problems
from .sampling import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    Sample,
    SamplingSettings,
    TransformersBackend,
    problem_seed,
)

logger = logging.getLogger(__name__)

METRIC = "eval/{benchmark}/mean@{n}"
SERVER_CONCURRENCY = 32  # problems in flight at once on the vLLM server (each request carries its n samples)


@dataclass
class ValidationSettings:
    """In-training validation settings (GRPORunConfig and JustRLConfig inherit these fields); off by default.

    The paper's recipes validate AIME24, AIME25 and AMC23 (32 samples each, each benchmark's own N) before training
    and every 50 training steps, at the evaluation's sampling settings (the defaults below)."""

    validation_benchmarks: list[str] = field(
        default_factory=list,
        metadata={"help": "Benchmarks to validate on (e.g. AIME24 AIME25 AMC23); empty: no validation."},
    )
    validation_n: int | None = field(
        default=None, metadata={"help": "Samples per problem; null: each benchmark's own N (32 for AIME / AMC)."}
    )
    validation_limit: int | None = field(default=None, metadata={"help": "First K problems of each benchmark."})
    validation_max_new_tokens: int = field(
        default=DEFAULT_MAX_NEW_TOKENS,  # RECIPE: validation responses up to 31,744 new tokens
        metadata={"help": "Validation response cap in tokens; a vLLM server needs max_prompt_length + this context."},
    )
    validation_temperature: float = field(
        default=DEFAULT_TEMPERATURE,  # RECIPE: evaluation temperature 0.7
        metadata={"help": "Validation sampling temperature."},
    )
    validation_top_p: float = field(
        default=DEFAULT_TOP_P,  # RECIPE: evaluation top-p 0.9
        metadata={"help": "Validation nucleus sampling."},
    )
    validation_data_dir: str | None = field(
        default=None, metadata={"help": "Local benchmark folder (<name>/test.parquet); default: the Hub."}
    )
    validation_on_start: bool = field(
        default=True,  # RECIPE: the script validates before the first step
        metadata={"help": "Validate before the first step too."},
    )
    validation_every_steps: int | None = field(
        default=None, metadata={"help": "Validate every this many optimizer updates; null: eval_steps."}
    )
    validation_fail_fast: bool = field(
        default=False,
        metadata={"help": "Stop the run when a validation fails (server gone, unreadable file); default: log the "
                  "error loudly and keep training."},
    )

    def check_validation_settings(self) -> None:
        """Range checks, before any model loads."""
        wrong = {name: getattr(self, name) for name in ("validation_n", "validation_limit", "validation_max_new_tokens",
                                                         "validation_every_steps")
                 if getattr(self, name) is not None and getattr(self, name) < 1}
        if not 0.0 < self.validation_top_p <= 1.0:
            wrong["validation_top_p"] = self.validation_top_p
        if self.validation_temperature < 0:
            wrong["validation_temperature"] = self.validation_temperature
        if wrong:
            raise ValueError(f"Validation settings out of range: {wrong} (counts must be at least 1, top-p in (0, 1], "
                             "temperature at least 0).")


def grade_like_the_script(response: str, ground_truth: str) -> bool:
    """The script's validation grade (see the module docstring): gold `\\boxed{truth}` as LaTeX, prediction LaTeX
    only, math-verify's `verify`. Errors and timeouts count as wrong."""
    from math_verify import LatexExtractionConfig, parse, verify

    timeout = math_verify_timeout()
    try:
        gold = parse(f"\\boxed{{{ground_truth}}}", extraction_config=[LatexExtractionConfig()],
                     parsing_timeout=timeout)
        prediction = parse(response, extraction_config=[LatexExtractionConfig()], parsing_timeout=timeout)
        return bool(gold) and bool(prediction) and bool(verify(gold, prediction, timeout_seconds=timeout))
    except Exception as exc:  # noqa: BLE001 - math-verify raises many types on odd inputs
        logger.debug("validation grading failed (%s): counted as wrong", exc)
        return False


# ---- samplers: who generates -------------------------------------------------------------------------------------


def prompt_ids(tokenizer: Any, problem: Problem, settings: SamplingSettings) -> list[int]:
    """The evaluation prompt of one problem as token ids, through the chat template."""
    rendered = tokenizer.apply_chat_template(eval_messages(problem.problem, settings.prompt_style),
                                             add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(rendered["input_ids"])


def _samples(problem: Problem, seed: int, tokenizer: Any, completions: Sequence[Sequence[int]],
             max_new_tokens: int) -> list[Sample]:
    eos = tokenizer.eos_token_id
    out = []
    for index, ids in enumerate(completions):
        ids = list(ids)
        stopped = len(ids) < max_new_tokens or (bool(ids) and ids[-1] == eos)
        out.append(Sample(problem.problem_id, index, seed, tokenizer.decode(ids, skip_special_tokens=True), len(ids),
                          "stop" if stopped else "length"))
    return out


class ServerSampler:
    """Samples on TRL's vLLM server through a `VLLMClient` (the trainer's own): one `/v1/completions` request per
    problem with `n` samples and the problem's seed, `SERVER_CONCURRENCY` problems in flight."""

    def __init__(self, client: Any, tokenizer: Any, concurrency: int = SERVER_CONCURRENCY):
        self.client = client
        self.tokenizer = tokenizer
        self.concurrency = concurrency

    def _one(self, problem: Problem, n: int, settings: SamplingSettings) -> list[Sample]:
        seed = problem_seed(settings.seed, problem.problem_id)
        output = self.client.generate(
            prompts=[prompt_ids(self.tokenizer, problem, settings)], n=n, temperature=settings.temperature,
            top_p=settings.top_p, max_tokens=settings.max_new_tokens, logprobs=None, generation_kwargs={"seed": seed},
        )
        return _samples(problem, seed, self.tokenizer, output["completion_ids"], settings.max_new_tokens)

    def generate(self, problems: Sequence[Problem], n: int, settings: SamplingSettings) -> list[list[Sample]]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(problems)))) as pool:
            return list(pool.map(lambda p: self._one(p, n, settings), problems))


class ColocateSampler:
    """Samples with the trainer's colocated vLLM engine (`vllm.LLM`): one request per problem, its own seed."""

    def __init__(self, llm: Any, tokenizer: Any):
        self.llm = llm
        self.tokenizer = tokenizer

    def generate(self, problems: Sequence[Problem], n: int, settings: SamplingSettings) -> list[list[Sample]]:
        from vllm import SamplingParams

        seeds = [problem_seed(settings.seed, p.problem_id) for p in problems]
        params = [SamplingParams(n=n, temperature=settings.temperature, top_p=settings.top_p,
                                 max_tokens=settings.max_new_tokens, seed=seed) for seed in seeds]
        prompts = [{"prompt_token_ids": prompt_ids(self.tokenizer, p, settings)} for p in problems]
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False) if prompts else []
        return [_samples(p, seed, self.tokenizer, [c.token_ids for c in out.outputs], settings.max_new_tokens)
                for p, seed, out in zip(problems, seeds, outputs, strict=True)]


# ---- the callback ------------------------------------------------------------------------------------------------


class ValidationCallback(TrainerCallback):
    """Validate on `benchmarks` every `every_steps` optimizer steps (default: the trainer's `eval_steps`) and before
    training when `on_start` is set. `n` None: each benchmark's own N. The sampler follows the trainer's generation
    (vLLM server, colocated vLLM, or transformers); `sampler` overrides it (tests, custom servers)."""

    def __init__(
        self,
        trainer,
        benchmarks: Sequence[str] = ("AIME24",),
        *,
        n: int | None = None,
        data_dir: str | Path | None = None,
        limit: int | None = None,
        settings: SamplingSettings | None = None,
        every_steps: int | None = None,
        on_start: bool = True,
        fail_fast: bool = False,
        sampler: Any = None,
        grade: Callable[[str, str], bool] = grade_like_the_script,
    ):
        self.trainer = trainer
        self.settings = settings or SamplingSettings(prompt_style=VALIDATION_STYLE)
        self.every_steps = every_steps
        self.on_start = on_start
        self.fail_fast = fail_fast
        self.sampler = sampler
        self.grade = grade
        # load (and check) the problems now, so a bad name or file fails before training starts
        self.problems = {b: load_problems(get_benchmark(b), data_dir, limit) for b in benchmarks}
        self.n = {b: n or get_benchmark(b).n for b in benchmarks}
        self.failures = 0

    @classmethod
    def from_config(cls, trainer, args: ValidationSettings) -> ValidationCallback:
        """The callback a GRPORunConfig / JustRLConfig asks for (its `validation_*` fields)."""
        settings = SamplingSettings(max_new_tokens=args.validation_max_new_tokens,
                                    temperature=args.validation_temperature, top_p=args.validation_top_p,
                                    seed=getattr(args, "seed", 0), prompt_style=VALIDATION_STYLE)
        return cls(trainer, args.validation_benchmarks, n=args.validation_n, data_dir=args.validation_data_dir,
                   limit=args.validation_limit, settings=settings, every_steps=args.validation_every_steps,
                   on_start=args.validation_on_start, fail_fast=args.validation_fail_fast)

    # -- generation ------------------------------------------------------------------------------------------------

    def _mode(self) -> str:
        if self.sampler is not None:
            return "custom"
        if getattr(self.trainer, "use_vllm", False):
            return self.trainer.args.vllm_mode
        return "transformers"

    def _sync_vllm_weights(self) -> None:
        """vLLM holds the weights of the last rollout; send the current ones first (every process: collective). A
        sync that fails ends the run: it is not a validation problem, and vLLM's weights are then unknown."""
        trainer = self.trainer
        if self._mode() not in ("server", "colocate"):
            return
        if not vllm_holds_step(trainer):
            generation = trainer.vllm_generation
            if isinstance(generation, ServedGeneration):
                generation.sync_weights(outside_step=True)  # kept out of the training steps' time split
            else:
                generation.sync_weights()
            mark_vllm_synced(trainer)

    def _metric(self, name: str, scores: Sequence[float]) -> tuple[str, float]:
        """(`eval/<benchmark>/mean@<n>`, the mean of the per-problem scores in percent)."""
        return METRIC.format(benchmark=name, n=self.n[name]), 100.0 * sum(scores) / max(len(scores), 1)

    def _score(self, name: str, problems: Sequence[Problem], generate: Callable) -> list[float]:
        """Per-problem mean scores of `problems`, generating with `generate(problems, n, settings)`, with a log line."""
        n, start = self.n[name], time.perf_counter()
        groups = generate(problems, n, self.settings) if problems else []
        scores = [sum(self.grade(s.response, p.ground_truth) for s in group) / len(group)
                  for p, group in zip(problems, groups, strict=True)]
        logger.info("validation %s: %d problems x %d samples in %.0f s", name, len(problems), n,
                    time.perf_counter() - start)
        return scores

    def _validate_all(self) -> dict[str, float]:
        """mean@n per benchmark, sampled the way the trainer generates (see the module docstring)."""
        mode = self._mode()
        if mode in ("server", "custom"):
            return self._validate_on_main()
        if mode == "colocate":
            return self._validate_colocated()
        return self._validate_with_transformers()

    def _validate_on_main(self) -> dict[str, float]:
        """The main process samples everything (one server serves all); the others wait for its scores or error."""
        trainer = self.trainer
        metrics: dict[str, float] = {}
        error = None
        if trainer.accelerator.is_main_process:
            sampler = self.sampler or ServerSampler(trainer.vllm_generation.vllm_client, trainer.processing_class)
            try:
                metrics = dict(self._metric(name, self._score(name, problems, sampler.generate))
                               for name, problems in self.problems.items())
            except VLLMServerLost as exc:  # the server is gone: every process ends the run
                error = (True, str(exc))
            except Exception as exc:  # noqa: BLE001 - shared with the other processes, then handled there
                error = (False, f"{type(exc).__name__}: {exc}")
                logger.debug("validation failed", exc_info=True)
        metrics, error = broadcast_object_list([metrics, error], from_process=0)
        if error is not None:
            lost, message = error
            raise VLLMServerLost(message) if lost else ValidationFailed(message)
        return metrics

    def _validate_colocated(self) -> dict[str, float]:
        """Every tensor-parallel group samples its share of each benchmark with the colocated engine."""
        trainer = self.trainer
        accelerator, generation = trainer.accelerator, trainer.vllm_generation
        tp = max(1, int(getattr(generation, "tensor_parallel_size", 1)))
        share, shares = accelerator.process_index // tp, accelerator.num_processes // tp
        keep = accelerator.process_index % tp == 0  # one copy of each group's scores
        sampler = ColocateSampler(generation.llm, trainer.processing_class)
        sleeps = bool(getattr(generation, "enable_sleep_mode", False))
        if sleeps:  # TRL puts the engine to sleep between rollouts; its KV cache is needed now
            generation.llm.wake_up(tags=["kv_cache"])
        metrics: dict[str, float] = {}
        try:
            for name, problems in self.problems.items():
                scores = self._score(name, list(problems[share::shares]), sampler.generate)
                metrics.update([self._metric(name, gather_object(scores if keep else []))])
        finally:
            if sleeps:
                generation.llm.sleep(level=2)
                mark_vllm_sleeping(generation)
        return metrics

    def _validate_with_transformers(self) -> dict[str, float]:
        """Every training process samples its share with transformers `generate` on the training model."""
        trainer = self.trainer
        accelerator = trainer.accelerator
        metrics: dict[str, float] = {}
        with unwrap_model_for_generation(trainer.model_wrapped, accelerator) as model:
            was_training = model.training
            model.eval()
            backend = TransformersBackend(model, trainer.processing_class)
            try:
                for name, problems in self.problems.items():
                    shard = list(problems[accelerator.process_index :: accelerator.num_processes])
                    metrics.update([self._metric(name, gather_object(self._score(name, shard, backend.generate)))])
            finally:
                if was_training:
                    model.train()
        return metrics

    def validate(self) -> dict[str, float]:
        """mean@n per benchmark over all processes, in percent; {} after a logged failure (unless fail_fast)."""
        start = time.perf_counter()
        self._sync_vllm_weights()
        try:
            metrics = self._validate_all()
        except VLLMServerLost:  # not a validation problem: the run cannot generate any more
            raise
        except Exception as exc:
            self.failures += 1
            if self.fail_fast:
                raise
            logger.error("VALIDATION FAILED at step %d (%s); training goes on without this validation "
                         "(set validation_fail_fast to stop instead).", self.trainer.state.global_step, exc)
            return {"eval/validation_failures": float(self.failures)}
        logger.info("validation at step %d: %s (%.0f s)", self.trainer.state.global_step,
                    ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()), time.perf_counter() - start)
        return metrics

    def _record(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():  # GRPOTrainer averages and logs these with its own metrics
            trl_metrics(self.trainer, "train")[key].append(value)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.on_start and state.global_step == 0:
            self.trainer.log(self.validate())  # a step-0 entry of its own
        return control

    def on_step_end(self, args, state, control, **kwargs):
        every = self.every_steps or args.eval_steps
        if every and state.global_step % int(every) == 0:
            metrics = self.validate()
            self._record(metrics)
            if control.should_save:  # DefaultFlowCallback decided already: this step's checkpoint will exist
                self._mark_best(args, state, metrics)
            control.should_log = True
        return control

    def _mark_best(self, args, state, metrics: dict[str, float]) -> None:
        """When the mean validation score beats the run's best, the checkpoint saved at this step (transformers saves
        after on_step_end) becomes `state.best_model_checkpoint`, which checkpoint rotation never deletes. Left alone
        when the run picks its best itself (`metric_for_best_model`)."""
        scores = [value for key, value in metrics.items() if "/mean@" in key]
        if not scores or args.metric_for_best_model is not None:
            return
        score = sum(scores) / len(scores)
        if state.best_metric is None or score > state.best_metric:
            state.best_metric = score
            state.best_model_checkpoint = str(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


class ValidationFailed(RuntimeError):
    """A validation that could not complete (its cause in the message), raised on every process."""
