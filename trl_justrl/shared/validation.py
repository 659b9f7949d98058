"""In-training validation: sample a benchmark subset every `eval_steps` and log `eval/<benchmark>/avg@<n>`.

Problems are split over the training processes, generated with the training model (transformers generation at the
evaluation temperature), graded with `grade_answer`, and gathered; the numbers join the next log entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl.models.utils import unwrap_model_for_generation

from .benchmarks import get_benchmark, load_problems
from .grading import grade_answer
from .sampling import SamplingSettings, TransformersBackend


class ValidationCallback(TrainerCallback):
    """Validate on `benchmarks` (e.g. AIME24 with n samples) every `every_steps` optimizer steps (default: the
    trainer's `eval_steps`), and before training when `on_start` is set (the JustRL script validates first)."""

    def __init__(
        self,
        trainer,
        benchmarks: Sequence[str] = ("AIME24",),
        *,
        n: int = 4,
        data_dir: str | Path | None = None,
        limit: int | None = None,
        settings: SamplingSettings | None = None,
        every_steps: int | None = None,
        on_start: bool = True,
    ):
        self.trainer = trainer
        self.n = n
        self.settings = settings or SamplingSettings(max_new_tokens=trainer.args.max_completion_length)
        self.every_steps = every_steps
        self.on_start = on_start
        # load (and check) the problems now, so a bad name or file fails before training starts
        self.problems = {b: load_problems(get_benchmark(b), data_dir, limit) for b in benchmarks}

    def validate(self) -> dict[str, float]:
        """avg@n per benchmark over all processes, in percent."""
        trainer = self.trainer
        accelerator = trainer.accelerator
        metrics = {}
        with unwrap_model_for_generation(trainer.model_wrapped, accelerator) as model:
            was_training = model.training
            model.eval()
            backend = TransformersBackend(model, trainer.processing_class)
            for name, problems in self.problems.items():
                shard = problems[accelerator.process_index :: accelerator.num_processes]
                groups = backend.generate(shard, self.n, self.settings) if shard else []
                rates = [
                    sum(grade_answer(s.response, p.ground_truth, problem=p.problem) for s in group) / len(group)
                    for p, group in zip(shard, groups, strict=True)
                ]
                everyone = gather_object(rates)
                metrics[f"eval/{name}/avg@{self.n}"] = 100.0 * sum(everyone) / max(len(everyone), 1)
            if was_training:
                model.train()
        return metrics

    def _record(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():  # GRPOTrainer averages and logs these with its own metrics
            self.trainer._metrics["train"][key].append(value)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.on_start and state.global_step == 0:
            self.trainer.log(self.validate())  # a step-0 entry of its own
        return control

    def on_step_end(self, args, state, control, **kwargs):
        every = self.every_steps or args.eval_steps
        if every and state.global_step % int(every) == 0:
            self._record(self.validate())
            control.should_log = True
        return control
