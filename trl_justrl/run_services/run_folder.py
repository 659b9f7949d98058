"""A run's output folder: checked before any model loads, one writer at a time, never silently reused.

`check_output_dir` refuses a folder that cannot be written or that holds another run (unless resuming or
overwriting); `FolderLock` (`<folder>/.trl_justrl.lock`: pid, host, purpose) refuses a second writer and takes over a
lock whose process died on this host or belonged to an earlier run of the same SLURM job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from .checkpoints import checkpoints

logger = logging.getLogger(__name__)

LOCK_NAME = ".trl_justrl.lock"
RUN_FILES = ("trainer_state.json", "model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
             "training_args.bin", "finished.json", "resume_changes.json")


class OutputDirError(ValueError):
    """An output folder that cannot be used for this run (the message names it and says why)."""


def _probe_writable(folder: Path) -> None:
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"output_dir {folder} is not writable ({err.strerror or err}).") from err


def check_output_dir(output_dir: str | Path, *, resuming: bool, overwrite: bool) -> Path:
    """Create (if needed) and check the output folder; see the module docstring. Returns it."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputDirError(f"output_dir {folder} is a file, not a folder; choose another output_dir.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"output_dir {folder} cannot be created ({err.strerror or err}).") from err
    _probe_writable(folder)
    previous = checkpoints(folder)
    used = [p.name for p in previous] + [name for name in RUN_FILES if (folder / name).exists()]
    if used and not resuming:
        if not overwrite:
            shown = ", ".join(used[:6]) + (f" and {len(used) - 6} more" if len(used) > 6 else "")
            raise OutputDirError(
                f"output_dir {folder} already holds a run ({shown}). Resume it with --resume_from_checkpoint latest, "
                "start afresh there with --overwrite_output_dir true (its checkpoints are deleted), or choose "
                "another output_dir."
            )
        for old in previous:
            shutil.rmtree(old)
        for name in RUN_FILES:
            (folder / name).unlink(missing_ok=True)
        logger.warning("overwrite_output_dir: deleted the previous run's checkpoints and state in %s", folder)
    return folder


def alive(pid: int, *, group: bool = False) -> bool:
    """Whether process `pid` (or, with `group`, any process of process group `pid`) still exists."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLocked(RuntimeError):
    """Another process writes into this folder (the message names it)."""


class FolderLock:
    """An exclusive claim on a folder for one run (see the module docstring); use as a context manager."""

    def __init__(self, folder: str | Path, purpose: str):
        self.path = Path(folder) / LOCK_NAME
        self.purpose = purpose
        self.held = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose, "since": time.time(),
              "slurm_job": os.environ.get("SLURM_JOB_ID")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                same_host = holder.get("host") == me["host"]
                dead = same_host and isinstance(holder.get("pid"), int) and not alive(holder["pid"])
                requeued = me["slurm_job"] is not None and holder.get("slurm_job") == me["slurm_job"]
                if dead or requeued:  # a requeued SLURM job keeps its id, wherever it restarts
                    logger.warning("Taking over %s: its holder (pid %s on %s) is gone.", self.path, holder.get("pid"),
                                   holder.get("host"))
                    self.path.unlink(missing_ok=True)
                    continue
                raise FolderLocked(
                    f"{self.path.parent} is in use by another run: pid {holder.get('pid', '?')} on host "
                    f"{holder.get('host', '?')} ({holder.get('purpose', 'unknown')}). Wait for it to finish, use "
                    f"another folder, or delete {self.path} if that run is gone."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise FolderLocked(f"Could not take {self.path}.")

    def release(self) -> None:
        if self.held and self._holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
