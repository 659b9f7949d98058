"""What a resumed run may change, and when a run is already finished.

Every checkpoint holds `run_settings.json` (the run config as `to_dict()` writes it, tokens masked; the world size;
the reward names). A resume compares the new settings with it: a change of the objective, the batch geometry or the
learning-rate schedule is refused, listing each difference, unless `resume_allow_changes` is set (then the changes
are logged and recorded in `resume_changes.json`, which the model card lists); any other change (logging, output,
reporting, saving) passes with a log line. Which is which is each setting's role (`setting_roles.py`); a changed
setting without a role (one a newer TRL or transformers added) is refused. A run that trained to `max_steps` (also
one stopped by a signal in its last update) leaves `finished.json`: requeuing it (every restart passes
`--resume_from_checkpoint latest`) trains nothing and exits 0.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..setting_roles import role_of

logger = logging.getLogger(__name__)

SETTINGS_FILE = "run_settings.json"  # in each checkpoint-N
CHANGES_FILE = "resume_changes.json"  # in the output folder: the changes resumes were allowed to make
FINISHED_FILE = "finished.json"  # in the output folder: the run reached its last step and saved its final model

CONSTANT_SCHEDULES = ("constant", "constant_with_warmup")  # run length is part of the schedule only without these


class ResumeSettingsError(ValueError):
    """A resume that would change the objective, the batch geometry or the schedule (the message lists each)."""


def settings_record(args: Any, world_size: int, reward_names: list[str] | None = None,
                    training_data: str | None = None) -> dict[str, Any]:
    """What `run_settings.json` holds: the config (JSON values), the world size, the reward names, the training data
    and the batch as the world sees it (completions per optimizer update, updates per generation batch)."""
    record = json.loads(json.dumps(args.to_dict(), default=str))
    record.pop("recipe", None)  # the trainer's record for the trackers: its rewards and data are compared below
    record["completions_per_update"] = (args.per_device_train_batch_size * world_size
                                        * args.gradient_accumulation_steps)
    record["updates_per_generation"] = args.steps_per_generation // max(args.gradient_accumulation_steps, 1)
    if reward_names is not None:
        record["reward_funcs"] = list(reward_names)
    if training_data is not None:
        record["training_data"] = training_data
    return {"world_size": world_size, "settings": record}


def write_settings(folder: str | Path, args: Any, world_size: int, reward_names: list[str] | None,
                   training_data: str | None) -> None:
    record = settings_record(args, world_size, reward_names, training_data)
    Path(folder, SETTINGS_FILE).write_text(json.dumps(record, indent=1))


def setting_changes(checkpoint: str | Path, args: Any, world_size: int, reward_names: list[str] | None = None,
                    training_data: str | None = None) -> tuple[list[str], list[str]]:
    """(refused, harmless) differences between `checkpoint`'s saved settings and these, as `name: old -> new`;
    nothing for a checkpoint saved without them. Rewards and data are compared only when given."""
    path = Path(checkpoint, SETTINGS_FILE)
    if not path.is_file():
        return [], []
    saved = json.loads(path.read_text())["settings"]
    now = settings_record(args, world_size, reward_names, training_data)["settings"]
    decaying = now.get("lr_scheduler_type") not in CONSTANT_SCHEDULES
    refused, harmless = [], []
    for name in sorted(set(saved) & set(now)):
        if saved[name] == now[name]:
            continue
        change = f"{name}: {saved[name]!r} -> {now[name]!r}"
        role = role_of(name)
        if role is None:  # a setting a newer TRL or transformers added: refused until setting_roles places it
            refused.append(f"{change} (a setting trl_justrl has no role for)")
        elif role.resume == "refuse" or (role.resume == "when decaying" and decaying):
            refused.append(change)
        elif role.resume != "ignore":
            harmless.append(change)
    return refused, harmless


def check_resume_settings(checkpoint: str | Path, args: Any, world_size: int, reward_names: list[str] | None = None,
                          training_data: str | None = None) -> list[str]:
    """Refuse (ResumeSettingsError) or, with `args.resume_allow_changes`, log and return the changes that matter."""
    refused, harmless = setting_changes(checkpoint, args, world_size, reward_names, training_data)
    if harmless:
        logger.info("Resuming from %s with changed settings that do not affect training: %s", checkpoint,
                    "; ".join(harmless))
    if refused and not getattr(args, "resume_allow_changes", False):
        raise ResumeSettingsError(
            f"Resuming from {checkpoint} would change the objective, the batch or the schedule it was trained "
            f"with: {'; '.join(refused)}. Resume with the saved settings, start a new run in another output_dir, or "
            "pass --resume_allow_changes true to continue with these changes (they are logged and listed in the "
            "model card).")
    if refused:
        logger.warning("Resuming from %s with changed training settings (resume_allow_changes): %s", checkpoint,
                       "; ".join(refused))
    return refused


def record_changes(output_dir: str | Path, step: int, changes: list[str]) -> None:
    """Append the changes a resume made at `step` to the output folder's CHANGES_FILE."""
    path = Path(output_dir, CHANGES_FILE)
    history = recorded_changes(output_dir)
    entry = {"resumed_at_step": step, "changes": changes}
    if entry not in history:  # a run stopped again before its next save resumes from the same checkpoint
        history.append(entry)
        path.write_text(json.dumps(history, indent=1))


def recorded_changes(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir, CHANGES_FILE)
    try:
        return json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):
        return []


def write_finished(output_dir: str | Path, global_step: int, args: Any) -> None:
    Path(output_dir, FINISHED_FILE).write_text(json.dumps(
        {"global_step": global_step, "max_steps": args.max_steps, "num_train_epochs": args.num_train_epochs}))


def finished_message(output_dir: str | Path, args: Any, checkpoint: str | Path | None) -> str | None:
    """Why there is nothing to train (None when there is) for `--resume_from_checkpoint latest`: the run in
    `output_dir` trained to this run's `max_steps` and saved its final model (FINISHED_FILE)."""
    done = Path(output_dir, FINISHED_FILE)
    try:
        record = json.loads(done.read_text()) if done.is_file() else None
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        return None
    step, by_steps = int(record.get("global_step", 0)), record.get("max_steps", 0) > 0
    if (args.max_steps > 0 and step >= args.max_steps) or (
            args.max_steps <= 0 and not by_steps and args.num_train_epochs <= record.get("num_train_epochs", 0)):
        return (f"The run in {output_dir} already finished at step {step}; nothing to train (its final model is "
                f"there). Raise max_steps to train further, or choose another output_dir.")
    return None


CHECKPOINT_ONLY = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "training_args.bin", SETTINGS_FILE,
                   "checkpoint_complete.json")  # what a checkpoint holds beyond a saved model


def finish_from_checkpoint(checkpoint: str | Path, output_dir: str | Path, args: Any, *, write: bool) -> str | None:
    """For `latest` when the newest whole checkpoint is already at `max_steps` but the final save never happened
    (the run was killed after it): its model files and trainer state become the final model, without training
    (resuming at the last step would train past it). Returns what was done, None when there is training left; every
    process takes the same decision, `write` (the main process) copies."""
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    try:
        step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return None
    if args.max_steps <= 0 or step < args.max_steps:
        return None
    if write:
        for file in checkpoint.iterdir():
            if file.is_file() and file.name not in CHECKPOINT_ONLY and not file.name.startswith("rng_state"):
                shutil.copy2(file, output_dir / file.name)
        write_finished(output_dir, step, args)
    return (f"{checkpoint} is at step {step} = max_steps: training is done, but the run ended before its final save; "
            f"the checkpoint's model and trainer state were copied to {output_dir} as the final model (nothing "
            "trained).")
