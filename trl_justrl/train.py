"""Training entry point: parse a recipe with TRL's `TrlParser`, train, save, summarise.

The recipe's `trainer` key picks the objective: `justrl` (the default: `JustRLTrainer` with a `JustRLConfig`) or
`grpo` (TRL's GRPOTrainer objective, untouched: `GRPORunTrainer` with a `GRPORunConfig`; the Open-RS recipes).
Everything else (data, rewards, health monitor, budget, validation, resume, summary, plot, model card) is shared.
`launch/train.py` calls `cli()`; it runs under `accelerate launch`, `torchrun` and plain `python`.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers.trainer_utils import IntervalStrategy
from transformers.utils import is_bitsandbytes_available
from trl import ModelConfig, get_peft_config, get_quantization_config

from .config import RunConfig
from .data import SYNTHETIC, PromptLengthFilter, load_training_data, looks_local
from .data_errors import DataError
from .generation.client import VLLMServerLost
from .generation.server_checks import VLLMServerUnavailable
from .models import ModelFolderError, resolve_model
from .recipe_reader import JustRLScriptArguments, parse_args
from .reporting.console import install_compact_console
from .reporting.summary import format_summary, summarize_run
from .rewards import RewardFailed, reward_source
from .run_services.checkpoints import (
    RESUME_LATEST,
    CheckpointError,
    CheckpointWriteError,
    agreed_resume_checkpoint,
    resume_requested,
)
from .run_services.hub_push import HubPushError, push_final_model, pushes_off
from .run_services.preemption import EXIT_REQUEUE
from .run_services.resume import (
    ResumeSettingsError,
    check_resume_settings,
    finish_from_checkpoint,
    finished_message,
    write_finished,
)
from .run_services.run_folder import (
    FolderLock,
    FolderLocked,
    OutputDirError,
    check_output_dir,
    clear_previous_run,
)
from .trainer import TRAINERS, GRPORunTrainer, check_enough_prompts, load_processing_class

logger = logging.getLogger("trl_justrl")

def model_init_kwargs(model_args: ModelConfig, training_args: RunConfig) -> dict[str, Any]:
    """The model flags as `from_pretrained` keywords, as `trl grpo` builds them (revision, dtype, attention and the
    config's trust_remote_code)."""
    if not model_args.model_name_or_path:
        raise ValueError("Set model_name_or_path (a Hub id, a local folder, or 'smollm2-135m-instruct').")
    kwargs: dict[str, Any] = {"revision": model_args.model_revision, "dtype": model_args.dtype,
                              "trust_remote_code": training_args.trust_remote_code}
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    return kwargs


def quantization_config(model_args: ModelConfig) -> Any:
    """4- or 8-bit loading from the model flags (TRL's `get_quantization_config`), None without them; refused
    here, before any model loads, when bitsandbytes is missing."""
    config = get_quantization_config(model_args)
    if config is not None and not is_bitsandbytes_available():
        raise ValueError("load_in_4bit / load_in_8bit need bitsandbytes and a GPU: pip install bitsandbytes, or "
                         "unset them.")
    return config


def preflight(script_args: JustRLScriptArguments, training_args: RunConfig, model_args: ModelConfig) -> None:
    """The checks of the parsed flags that need no data and no model (ValueError naming the setting), and the model
    flags turned into `model_init_kwargs`. Idempotent: `cli` runs it before `main`, which runs it again."""
    check_script_flags(script_args)
    for spec in script_args.reward_funcs:  # a misspelt reward fails here, not as a Hub lookup after the model loads
        reward_source(spec)
    quantization_config(model_args)
    training_args.model_init_kwargs = {**model_init_kwargs(model_args, training_args),
                                       **(training_args.model_init_kwargs or {})}


def check_script_flags(script_args: JustRLScriptArguments) -> None:
    """Script flags this entry point does not honour are refused, naming what to do instead."""
    if script_args.dataset_streaming:
        raise ValueError("dataset_streaming is not offered: the training data is loaded whole (its rows are checked "
                         "and their prompt lengths measured before training). Unset it; pass an IterableDataset to "
                         "JustRLTrainer from Python to stream.")
    if script_args.dataset_config is not None and (script_args.dataset_name == SYNTHETIC
                                                   or looks_local(script_args.dataset_name)):
        raise ValueError(f"dataset_config ({script_args.dataset_config!r}) names a configuration of a Hub data set; "
                         f"{script_args.dataset_name!r} is local. Unset dataset_config.")


def main(script_args: JustRLScriptArguments, training_args: RunConfig, model_args: ModelConfig) -> Path:
    """Train with the given arguments; return the output folder (final model and trainer_state.json)."""
    start = time.time()
    preflight(script_args, training_args, model_args)

    trainer_class = TRAINERS[script_args.trainer]
    if not isinstance(training_args, trainer_class.config_class):
        raise TypeError(f"trainer: {script_args.trainer} needs a {trainer_class.config_class.__name__}, got "
                        f"{type(training_args).__name__} (build the parser with make_parser(argv)).")
    # Pre-flight, before any data or model loads: the checkpoint to resume from, the output folder, one writer.
    resume = agreed_resume_checkpoint(training_args)
    output_dir = Path(training_args.output_dir)
    lock = None
    if training_args.process_index == 0:
        check_output_dir(output_dir, resuming=resume_requested(training_args),
                         overwrite=training_args.overwrite_output_dir)
        lock = FolderLock(output_dir, f"training ({script_args.trainer})").acquire()
    try:
        if lock is not None and training_args.overwrite_output_dir and not resume_requested(training_args):
            clear_previous_run(output_dir, lock)  # only now that this run holds the folder
        latest = str(training_args.resume_from_checkpoint).lower() in RESUME_LATEST  # not a checkpoint given by path
        done = latest and (finished_message(output_dir, training_args, resume) or (resume is not None and (
            finish_from_checkpoint(resume, output_dir, training_args, write=training_args.process_index == 0))))
        if training_args.process_index == 0:
            (output_dir / STOP_RECORD).unlink(missing_ok=True)
        if done:
            logger.warning(done)  # a requeued or rerun finished job: exit 0 without training
            return output_dir
        if resume is not None:  # what this run would change (the trainer also checks the rewards, and records)
            check_resume_settings(resume, training_args, training_args.world_size,
                                  training_data=script_args.dataset_name)
        return _train(script_args, training_args, model_args, trainer_class, resume, output_dir, start)
    finally:
        if lock is not None:
            lock.release()


def _train(script_args: JustRLScriptArguments, training_args: RunConfig, model_args: ModelConfig,
           trainer_class: type[GRPORunTrainer], resume: str | None, output_dir: Path, start: float) -> Path:
    """Load the data, train, save (main's body once the pre-flight checks passed and the folder is locked)."""
    load = dict(strip_dapo=script_args.strip_dapo_instruction, suffix=script_args.prompt_suffix,
                system_prompt=script_args.system_prompt, synthetic_size=script_args.synthetic_size,
                seed=training_args.seed)
    train_dataset = load_training_data(script_args.dataset_name, split=script_args.dataset_train_split,
                                       config=script_args.dataset_config, **load)
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

    # pre-flight before the model loads: the prompts left after the length filter fill at least one step
    processing_class = load_processing_class(resolve_model(model_args.model_name_or_path), training_args)
    prompt_filter = PromptLengthFilter(processing_class, training_args.max_prompt_length,
                                       training_args.chat_template_kwargs)
    train_dataset = prompt_filter.apply(train_dataset, "training")
    check_enough_prompts(train_dataset, training_args, prompt_filter.dropped)
    trainer = trainer_class(
        model=model_args.model_name_or_path,  # the name the model card gives
        reward_funcs=script_args.reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        peft_config=get_peft_config(model_args),
        quantization_config=quantization_config(model_args),
        prompt_filter=prompt_filter,
    )
    trainer.training_data_name = script_args.dataset_name
    if script_args.ignore_bias_buffers:  # as TRL's scripts do: torch DDP cannot broadcast boolean buffers
        trainer.model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool]
    if script_args.console_log == "compact":
        install_compact_console(trainer)
    trainer.train(resume_from_checkpoint=resume)
    stopped_at = trainer.graceful_stop.stopped_at
    if stopped_at is not None and stopped_at < trainer.state.max_steps:  # a stop: checkpoint-N saved, no final model
        trainer.save_state()
        if trainer.accelerator.is_main_process:
            (output_dir / STOP_RECORD).write_text(json.dumps({"global_step": stopped_at,
                                                               "exit_code": EXIT_REQUEUE}))
        raise TrainingStopped(stopped_at, output_dir / f"checkpoint-{stopped_at}")
    save_final_model(trainer, output_dir)  # also when save_strategy is "no"
    trainer.save_state()  # trainer_state.json with the full log history
    if trainer.accelerator.is_main_process:
        write_finished(output_dir, trainer.state.global_step, training_args)
    if training_args.push_to_hub:
        push_final_model(trainer, script_args.dataset_name)
    if trainer.accelerator.is_main_process and script_args.print_summary:
        print(format_summary(summarize_run(output_dir, draw_plot=True), wall_time_s=time.time() - start), flush=True)
    return output_dir


STOP_RECORD = "stopped.json"  # written when a run stops on a signal (its step and exit code), removed at the next start


class TrainingStopped(Exception):
    """The run stopped on SIGTERM / SIGUSR1 after saving `checkpoint`; relaunch with resume to continue."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"Stopped on request at step {step}; {checkpoint} is saved. Relaunch with "
                         f"--resume_from_checkpoint latest to continue (exit code {EXIT_REQUEUE}).")
        self.step, self.checkpoint = step, checkpoint


def save_final_model(trainer: GRPORunTrainer, output_dir: Path) -> None:
    """`save_model` into output_dir; if that fails late (disk full, folder gone read-only), the model is saved to a
    rescue folder under the system's temporary directory instead, and the error names it: trained weights are never
    lost to a final write."""
    try:
        with pushes_off(trainer.args):  # pushed once, after this (push_final_model)
            trainer.save_model(str(output_dir))
    except OSError as err:
        rescue = Path(tempfile.gettempdir()) / f"trl_justrl-rescue-{output_dir.name}-step{trainer.state.global_step}"
        with pushes_off(trainer.args):
            trainer.save_model(str(rescue))
        raise OSError(f"Could not write the final model to {output_dir} ({err.strerror or err}); it was saved to "
                      f"{rescue} instead: copy it where it belongs.") from err


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> Path:
    """Parse `--config NAME_OR_PATH [--key value ...]` and train; bad settings exit 2 with the error, before any
    data or model loads."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        script_args, training_args, model_args = parse_args(argv, prog)
        preflight(script_args, training_args, model_args)
    except (ValueError, FileNotFoundError, TypeError, yaml.YAMLError) as err:  # bad settings, recipe or file
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        return main(script_args, training_args, model_args)
    except TrainingStopped as stop:
        print(f"[trl_justrl] {stop}", file=sys.stderr, flush=True)
        sys.exit(EXIT_REQUEUE)
    except (OutputDirError, FolderLocked, CheckpointError, DataError, ResumeSettingsError, ModelFolderError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except HubPushError as err:  # after training: the model is saved locally, the message says how to push it
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    except VLLMServerLost as err:  # the generation server died or hung mid-run: the last whole checkpoint stays
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    except VLLMServerUnavailable as err:  # found before the model loads: a server that is down or set up wrong
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except RewardFailed as err:  # a reward function's own error, found while training: its traceback, then the line
        traceback.print_exception(err.__cause__)
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    except CheckpointWriteError as err:  # found while training: the run failed, not its settings
        if not (err.disk_full or err.read_only) and err.__cause__ is not None:
            traceback.print_exception(err.__cause__)
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":  # `python -m trl_justrl.train`, `accelerate launch -m trl_justrl.train`
    cli()
