"""Crash-consistent checkpoints: a completion marker written last, and a `latest` that resumes only whole ones.

transformers writes `checkpoint-N/` file by file, so a kill mid-save leaves a folder that looks like a checkpoint:
`GRPORunTrainer` writes `checkpoint_complete.json` (each file's size and sha256) once
every process has written its share, and `find_resumable` skips (and names) any checkpoint without it or with a file
missing, resized or changed. `rotate_checkpoints` applies `save_total_limit` to marked checkpoints only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MARKER = "checkpoint_complete.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
           "pytorch_model.bin.index.json", "adapter_model.bin")
OPTIMIZER = ("optimizer.pt", "optimizer.bin")
DIGEST_SPAN = 1 << 20  # markers of earlier versions digest each file's first and last MiB only ("ends")
DIGEST_CHUNK = 8 << 20  # bytes read at a time for a whole-file digest (hashlib.file_digest is Python 3.11+)
DIGEST_KINDS = ("sha256", "ends")  # a marker's digest of another kind (a later version's) is not checked here


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (the message names the folder and the missing file)."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (the message names the folder, the free space and the cause);
    `disk_full` / `read_only` say whether the cause was space or a folder that turned read-only (the message says
    all); otherwise the cause's traceback is worth printing."""

    disk_full = False
    read_only = False


def failed_save(folder: Path, error: BaseException, *, remove: bool) -> CheckpointWriteError:
    """The error for a save into `folder` that raised `error`; with `remove`, the torn folder is deleted first (only
    when it is not a whole checkpoint), so a full disk is not kept full by it and `latest` never meets it."""
    usage = _disk_usage(folder.parent)
    text = str(error)
    full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or usage[1] < DIGEST_SPAN or any(
        sign in text for sign in ("No space left", "unexpected pos", "os error 28"))  # torch's and safetensors' words
    read_only = (isinstance(error, OSError) and error.errno == errno.EROFS) or "Read-only file system" in text
    removed = ""
    if remove and folder.is_dir() and incomplete_reason(folder) is not None:
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():  # a read-only folder: `latest` skips it by its missing marker
            removed = f" The incomplete {folder.name} could not be removed; a resume skips it."
        else:
            free_now = _disk_usage(folder.parent)[1] / 2**20
            removed = (f" The incomplete {folder.name} was removed ({free_now:.1f} MB free now); earlier checkpoints "
                       "are intact.")
    if full:
        cause, advice = "no space left on the device", ("Free space there, lower save_total_limit or choose another "
                                                        "output_dir, then resume with --resume_from_checkpoint latest.")
    elif read_only:
        cause, advice = "the folder turned read-only", (
            "Earlier whole checkpoints are intact. Make the folder writable again (or copy the run's folder to a "
            "writable place and set output_dir there), then resume with --resume_from_checkpoint latest.")
    else:
        cause, advice = "the write failed", ("Its cause is above; resume with --resume_from_checkpoint latest once it "
                                             "is fixed.")
    failure = CheckpointWriteError(
        f"Saving {folder.name} in {folder.parent} failed: {cause} ({usage[1] / 2**20:.1f} MB free of "
        f"{usage[0] / 2**20:.1f} MB when it failed; {type(error).__name__}: {text[:200]}).{removed} {advice}")
    failure.disk_full, failure.read_only = full, read_only and not full
    return failure


def _disk_usage(folder: Path) -> tuple[float, float]:
    """(total, free) bytes of the filesystem holding `folder` (NaN when it cannot be read: a folder gone)."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return float("nan"), float("nan")
    return usage.total, usage.free


def file_digest(path: Path, kind: str = "sha256") -> str:
    """The file's sha256, streamed (about 1 GB/s a core: benchmarks/RESULTS.md has the cost for a 1.5B model's
    checkpoint). kind "ends": the digest earlier markers recorded, of the size and the first and last MiB only."""
    if kind == "sha256":
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(DIGEST_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(DIGEST_SPAN))
        if size > DIGEST_SPAN:
            f.seek(max(DIGEST_SPAN, size - DIGEST_SPAN))
            digest.update(f.read(DIGEST_SPAN))
    return digest.hexdigest()


def write_marker(folder: str | Path, global_step: int, world_size: int) -> Path:
    """List what `folder` holds (relative paths, sizes and whole-file sha256s) into its completion marker,
    atomically (temp + rename)."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "digest": file_digest(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER and not p.name.endswith(".tmp")}
    marker = folder / MARKER
    temporary = folder / f"{MARKER}.tmp"
    temporary.write_text(json.dumps({"global_step": global_step, "world_size": world_size, "digest": "sha256",
                                     "files": files}, indent=1))
    with open(temporary, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temporary, marker)
    return marker


def incomplete_reason(folder: Path, *, model_only: bool = False) -> str | None:
    """Why `folder` is not a whole checkpoint (None when it is): no marker, or a listed file missing, resized or
    changed since it was saved, by the digest its marker recorded (older markers: sizes only, or the files' ends).
    `model_only`: the files a model loads from (not the optimizer, scheduler, RNG and trainer state), for
    evaluation: an optimizer state can be gigabytes."""
    marker = folder / MARKER
    if not marker.is_file():
        return f"no {MARKER} (the save did not finish)"
    try:
        recorded = json.loads(marker.read_text())
        listed, kind = recorded["files"], recorded.get("digest", "ends")
        expected = {name: entry if isinstance(entry, dict) else {"size": entry} for name, entry in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"unreadable {MARKER} ({err})"
    for name, entry in expected.items():
        if model_only and not is_model_file(name):
            continue
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry.get("size"):
            return f"{name} has {path.stat().st_size} bytes, {entry.get('size')} when saved"
        if "digest" in entry and kind in DIGEST_KINDS and file_digest(path, kind) != entry["digest"]:
            return f"{name} changed since it was saved (its checksum differs)"
    return None


def is_model_file(name: str) -> bool:
    """A checkpoint file a model is loaded from: not training state (optimizer, scheduler, RNG, trainer state,
    DeepSpeed's global_step folders)."""
    first = Path(name).parts[0]
    return not (name in OPTIMIZER or first.startswith(("global_step", "rng_state", "optimizer"))
                or name in ("scheduler.pt", "trainer_state.json", "training_args.bin")
                or name.endswith("-optimizer.pt"))


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, newest (highest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def rotate_checkpoints(output_dir: str | Path, save_total_limit: int | None,
                       best_model_checkpoint: str | Path | None = None) -> list[Path]:
    """transformers' rotation (keep the newest `save_total_limit`, never the newest or the best model's) over whole
    checkpoints only: a folder without a completion marker (a torn save, a stray copy named checkpoint-N) is neither
    counted nor deleted, so it can never push a whole checkpoint out. Returns the deleted folders, oldest first."""
    if save_total_limit is None or save_total_limit <= 0:
        return []
    whole = [p for p in reversed(checkpoints(output_dir)) if (p / MARKER).is_file()]  # oldest first
    if not whole:
        return []
    protected = {whole[-1].resolve()}
    if best_model_checkpoint is not None:
        protected.add(Path(best_model_checkpoint).resolve())
    remaining, deleted = len(whole), []
    for folder in whole:
        if remaining <= max(save_total_limit, len(protected)):
            break
        if folder.resolve() in protected:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        deleted.append(folder)
        remaining -= 1
    return deleted


@dataclass
class Resumable:
    """The checkpoint `latest` resumes from (None: none is whole) and the newer ones it skipped, with reasons."""

    path: Path | None
    skipped: list[tuple[Path, str]]


def find_resumable(output_dir: str | Path, *, save_only_model: bool = False) -> Resumable:
    """The newest whole, resumable checkpoint of `output_dir`; newer incomplete ones are skipped and named.

    Checkpoints written before markers existed (no folder of the run has one) are taken when their files are all
    there, with a warning: their completeness cannot be proven."""
    skipped = []
    found = checkpoints(output_dir)
    legacy = bool(found) and not any((folder / MARKER).is_file() for folder in found)
    if legacy:
        logger.warning("No checkpoint in %s has a completion marker (written before this version?): resuming from the "
                       "newest one whose files are all there, unverified.", output_dir)
    for folder in found:
        reason = None if legacy else incomplete_reason(folder)
        if reason is None:
            try:
                check_resumable(folder, save_only_model=save_only_model)
            except CheckpointError as err:
                reason = str(err)
        if reason is None:
            return Resumable(folder, skipped)
        skipped.append((folder, reason))
    return Resumable(None, skipped)


def check_resumable(folder: str | Path, *, save_only_model: bool = False) -> None:
    """Refuse a checkpoint without its trainer state, weights, or (unless `save_only_model`) optimizer, scheduler
    and RNG state: resuming from it would silently restart those."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder.")
    missing = []
    state = folder / "trainer_state.json"
    if not state.is_file():
        missing.append("trainer_state.json")
    else:
        try:
            json.loads(state.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{state} is not valid JSON ({err}): the checkpoint is damaged; resume from an "
                                  "older checkpoint-N, or 'latest' (which skips damaged ones).") from err
    if not any((folder / name).is_file() for name in WEIGHTS):
        missing.append("model weights (model.safetensors)")
    if not save_only_model:
        sharded = any(folder.glob("global_step*")) or any(folder.glob("optimizer_*")) or any(
            folder.glob("*-optimizer.pt"))  # DeepSpeed, FSDP and sharded optimizer states
        if not sharded and not any((folder / name).is_file() for name in OPTIMIZER):
            missing.append("optimizer.pt")
        if not (folder / "scheduler.pt").is_file():
            missing.append("scheduler.pt")
        if not any(folder.glob("rng_state*.pth")):
            missing.append("rng_state.pth")
    if missing:
        raise CheckpointError(
            f"{folder} cannot be resumed from: {', '.join(missing)} missing. A resume would restart the "
            "optimizer / learning-rate schedule / random streams silently; resume from an older checkpoint-N, or "
            "start afresh."
        )


RESUME_LATEST = ("latest", "last", "auto", "true")


def resume_requested(args: Any) -> bool:
    value = args.resume_from_checkpoint
    return not (value is None or str(value).lower() in ("", "false", "none"))


def resolve_resume_checkpoint(args: Any) -> str | None:
    """`--resume_from_checkpoint latest`: the newest whole checkpoint-N in output_dir (checkpoints.find_resumable
    skips and names torn or incomplete ones), or None (a fresh start) if there is none. That one flag makes a
    relaunched or requeued job continue where it stopped. A given path must exist and be resumable."""
    if not resume_requested(args):
        return None
    value = args.resume_from_checkpoint
    if str(value).lower() in RESUME_LATEST:
        found = find_resumable(args.output_dir, save_only_model=args.save_only_model)
        for folder, reason in found.skipped:
            logger.warning("Skipping %s: %s", folder, reason)
        if found.path is None:
            logger.info("No whole checkpoint in %s yet: starting from scratch.", args.output_dir)
            return None
        logger.info("Resuming from %s", found.path)
        return str(found.path)
    if not Path(value).is_dir():
        raise FileNotFoundError(
            f"resume_from_checkpoint={value!r} is not a folder; give a checkpoint-N folder, or 'latest' for the newest "
            f"one in output_dir ({args.output_dir})."
        )
    reason = incomplete_reason(Path(value))
    if reason is not None:
        logger.warning("%s: %s; resuming anyway, as asked (its files are checked next).", value, reason)
    check_resumable(value, save_only_model=args.save_only_model)
    return str(value)


def agreed_resume_checkpoint(args: Any) -> str | None:
    """resolve_resume_checkpoint on the main process, its answer (or its error) given to every process: the checks
    read every byte of the checkpoints they look at (a whole-file digest; 25 GB for a 1.5B run), once per run, not
    once per rank, and all processes resume from the same one."""
    if args.world_size <= 1:
        return resolve_resume_checkpoint(args)
    import torch.distributed as dist  # the training processes' group (accelerate set it up, and the device)

    answer: list[Any] = [None, None]
    if args.process_index == 0:
        try:
            answer[0] = resolve_resume_checkpoint(args)
        except (CheckpointError, FileNotFoundError) as err:
            answer[1] = err
    dist.broadcast_object_list(answer, src=0)
    if answer[1] is not None:
        raise answer[1]
    return answer[0]
