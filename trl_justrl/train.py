"""Training entry point: parse a recipe with TRL's `TrlParser`, train `JustRLTrainer`, save, summarise.

`launch/train.py` calls `cli()`; it runs under `accelerate launch`, `torchrun` and plain `python`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers.trainer_utils import IntervalStrategy, get_last_checkpoint
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from .config import JustRLConfig
from .data import DEFAULT_DATASET, load_training_data
from .reporting.console import install_compact_console
from .reporting.summary import format_summary, summarize_run
from .shared.sampling import SamplingSettings
from .shared.validation import ValidationCallback
from .trainer import DEFAULT_REWARDS, JustRLTrainer

logger = logging.getLogger("trl_justrl")


@dataclass
class JustRLScriptArguments(ScriptArguments):
    """Data and reward choices of a run (TRL's ScriptArguments plus JustRL's)."""

    dataset_name: str | None = field(
        default=DEFAULT_DATASET,
        metadata={"help": "Training data: a Hub id, a .parquet/.jsonl/.json file, a folder of them, or 'synthetic'."},
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Optional held-out data (same forms as dataset_name) for TRL's in-training evaluation."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: list(DEFAULT_REWARDS),
        metadata={"help": "Registered reward function names (trl_justrl.rewards)."},
    )
    strip_dapo_instruction: bool = field(
        default=False,  # RECIPE: the released script appends the suffix to DAPO-Math-17k's text as shipped
        metadata={"help": "Remove DAPO-Math-17k's 'Answer:' instruction wrapper, so the user turn is the bare problem "
                  "+ suffix (a deviation: the released script kept the wrapper)."},
    )
    synthetic_size: int = field(default=256, metadata={"help": "Rows of the built-in synthetic data set."})
    validation_benchmarks: list[str] = field(
        default_factory=list,
        metadata={"help": "Benchmarks to validate on every eval_steps (e.g. AIME24); empty: no validation."},
    )
    validation_n: int = field(default=4, metadata={"help": "Samples per validation problem."})
    validation_limit: int | None = field(default=None, metadata={"help": "First K problems of each benchmark."})
    validation_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Validation response cap (default: max_completion_length)."}
    )
    validation_data_dir: str | None = field(
        default=None, metadata={"help": "Local benchmark folder (<name>/test.parquet); default: the Hub."}
    )
    validation_on_start: bool = field(default=True, metadata={"help": "Validate before the first step too."})
    print_summary: bool = field(default=True, metadata={"help": "Print the run summary at the end."})
    console_log: str = field(
        default="compact",
        metadata={"help": "compact: one line per logged step (step, reward, accuracy, mixed groups, entropy, length, "
                  "seconds); trl: TRL's progress bar and raw metric dicts. The full metrics go to trainer_state.json "
                  "and report_to either way.", "choices": ["compact", "trl"]},
    )


def make_parser() -> TrlParser:
    return TrlParser((JustRLScriptArguments, JustRLConfig, ModelConfig))


def main(script_args: JustRLScriptArguments, training_args: JustRLConfig, model_args: ModelConfig) -> Path:
    """Train with the given arguments; return the output folder (final model and trainer_state.json)."""
    start = time.time()
    if not model_args.model_name_or_path:
        raise ValueError("Set model_name_or_path (a Hub id, a local folder, or 'smollm2-135m-instruct').")
    init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    if model_args.attn_implementation is not None:
        init_kwargs["attn_implementation"] = model_args.attn_implementation
    training_args.model_init_kwargs = {**init_kwargs, **(training_args.model_init_kwargs or {})}

    load = dict(strip_dapo=script_args.strip_dapo_instruction, synthetic_size=script_args.synthetic_size,
                seed=training_args.seed)
    train_dataset = load_training_data(script_args.dataset_name, split=script_args.dataset_train_split, **load)
    eval_dataset = None
    if script_args.eval_dataset_name:
        eval_dataset = load_training_data(script_args.eval_dataset_name, split=script_args.dataset_test_split, **load)
    elif training_args.eval_strategy != IntervalStrategy.NO:
        logger.warning(
            "eval_strategy=%s but no eval_dataset_name is set: in-training evaluation is off for this run.",
            training_args.eval_strategy.value,
        )
        training_args.eval_strategy = IntervalStrategy.NO
        training_args.do_eval = False

    trainer = JustRLTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=script_args.reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.training_data_name = script_args.dataset_name
    if script_args.console_log == "compact":
        install_compact_console(trainer)
    if script_args.validation_benchmarks:
        trainer.add_callback(make_validation_callback(trainer, script_args))
    trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args))

    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))  # also when save_strategy is "no"
    trainer.save_state()  # trainer_state.json with the full log history
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    if trainer.accelerator.is_main_process and script_args.print_summary:
        print(format_summary(summarize_run(output_dir, draw_plot=True), wall_time_s=time.time() - start), flush=True)
    return output_dir


RESUME_LATEST = ("latest", "last", "auto", "true")


def resolve_resume_checkpoint(args: JustRLConfig) -> str | None:
    """`--resume_from_checkpoint latest`: the newest checkpoint-N in output_dir, or None (a fresh start) if none.

    That one flag makes a relaunched or requeued job continue where it stopped. A path must exist.
    """
    value = args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in RESUME_LATEST:
        last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        if last is None:
            logger.info("No checkpoint in %s yet: starting from scratch.", args.output_dir)
        else:
            logger.info("Resuming from %s", last)
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(
            f"resume_from_checkpoint={value!r} is not a folder; give a checkpoint-N folder, or 'latest' for the newest "
            f"one in output_dir ({args.output_dir})."
        )
    return str(value)


def make_validation_callback(trainer: JustRLTrainer, script_args: JustRLScriptArguments):
    """The in-training validation (trl_justrl.shared.validation), at the recipe's evaluation temperature and top-p."""

    settings = SamplingSettings(
        max_new_tokens=script_args.validation_max_new_tokens or trainer.args.max_completion_length,
        seed=trainer.args.seed,
    )
    return ValidationCallback(
        trainer,
        script_args.validation_benchmarks,
        n=script_args.validation_n,
        data_dir=script_args.validation_data_dir,
        limit=script_args.validation_limit,
        settings=settings,
        on_start=script_args.validation_on_start,
    )


def cli(argv: Sequence[str] | None = None) -> Path:
    """Parse `--config recipe.yaml [--key value ...]` and train."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        args=list(argv) if argv is not None else sys.argv[1:]
    )
    return main(script_args, training_args, model_args)
