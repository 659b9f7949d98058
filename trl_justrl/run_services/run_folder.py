"""A run's output folder: checked before any model loads, one writer at a time, never silently reused.

`check_output_dir` refuses a folder that cannot be written or that holds another run (unless resuming or
overwriting), and deletes nothing. `FolderLock` (a kernel lock on `<folder>/_trl_justrl.lock`, which names its
holder) refuses a second writer; it is free again as soon as its holder exits or dies.
`clear_previous_run` deletes a previous run for `overwrite_output_dir` only with the lock held, so a run still
training there never loses a checkpoint.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from .checkpoints import checkpoints

logger = logging.getLogger(__name__)

LOCK_NAME = "_trl_justrl.lock"  # "_*": transformers never pushes it to the Hub with the model
LEGACY_LOCK_NAME = ".trl_justrl.lock"  # earlier versions' name, still honoured while such a run holds it
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
    """Create (if needed) and check the output folder; see the module docstring. Returns it; deletes nothing."""
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
    return folder


def clear_previous_run(folder: Path, lock: FolderLock) -> None:
    """overwrite_output_dir: delete the checkpoints and run files of the run that was in `folder`. Only with the
    folder's lock held (a live run there keeps the lock, and so its checkpoints)."""
    if not lock.held or lock.path.parent != folder:
        raise RuntimeError(f"clear_previous_run needs {folder}'s lock held by this process")
    previous = checkpoints(folder)
    if not previous and not any((folder / name).exists() for name in RUN_FILES):
        return
    for old in previous:
        shutil.rmtree(old)
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    logger.warning("overwrite_output_dir: deleted the previous run's checkpoints and state in %s", folder)


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
    """An exclusive claim on a folder for one run, as a context manager: an flock on `<folder>/_trl_justrl.lock`,
    which the kernel releases when its holder dies, however it dies (so on this machine a stale, empty or cut file, or
    a pid reused by another process, never blocks a later run, an unattended requeue included). The file holds pid,
    host, purpose and SLURM job, for the refusal's message. A file naming another machine is refused even when the
    lock is free (some shared file systems lock per machine only), unless it names this SLURM job (a requeue, which
    also takes over its killed node's NFS lease). Where flock fails (NFS without lockd, some FUSE mounts) the file
    alone is the claim, taken over when its pid is dead on this host (a warning says so)."""

    def __init__(self, folder: str | Path, purpose: str):
        self.path = Path(folder) / LOCK_NAME
        self.purpose = purpose
        self.held = False
        self._fd: int | None = None

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _refusal(self, holder: dict, elsewhere: bool = False) -> FolderLocked:
        gone = (f" It was taken on another machine, where this one cannot check that run: if it is gone, delete "
                f"{self.path}." if elsewhere else "")
        return FolderLocked(
            f"{self.path.parent} is in use by another run: pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} ({holder.get('purpose', 'unknown')}). Wait for it to finish, or use another "
            f"folder.{gone}")

    def _open(self, flags: int) -> int:
        """The lock file's descriptor; a folder that cannot hold it (read-only, gone) is an OutputDirError naming it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o644)
        except FileExistsError:
            raise
        except OSError as err:
            raise OutputDirError(f"{self.path.parent} cannot be claimed for this run: {self.path} cannot be created "
                                 f"({err.strerror or err}). Choose a writable folder.") from err

    @staticmethod
    def _other_host(holder: dict, me: dict) -> bool:
        return bool(holder.get("host")) and holder.get("host") != me["host"]

    @staticmethod
    def _same_job(holder: dict, me: dict) -> bool:
        return me["slurm_job"] is not None and holder.get("slurm_job") == me["slurm_job"]

    def acquire(self) -> FolderLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose, "since": time.time(),
              "slurm_job": os.environ.get("SLURM_JOB_ID")}
        self._refuse_if_held_by_earlier_version()
        for _ in range(3):
            try:
                fd = self._locked_descriptor()
            except BlockingIOError:
                holder = self._holder()
                if self._same_job(holder, me) and self._other_host(holder, me):  # a killed node's lease
                    logger.warning("Taking over %s: it is held for this SLURM job (%s) by pid %s on %s, an earlier "
                                   "run of the requeued job.", self.path, me["slurm_job"], holder.get("pid"),
                                   holder.get("host"))
                    self.path.unlink(missing_ok=True)  # a new file, a new lock
                    continue
                raise self._refusal(holder) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                logger.warning("%s: this file system has no working file locks (%s); the lock file alone marks the "
                               "folder in use.", self.path, err.strerror)
                return self._acquire_without_kernel_lock(me)
            try:
                if not self._still_the_file(fd):  # released and removed while this process waited for it: again
                    os.close(fd)
                    continue
                holder = self._holder()
                # a claim taken on another machine: where a file system's locks do not reach across machines (NFS
                # mounted nolock, BeeGFS, Lustre localflock) this kernel lock says nothing about it
                if self._other_host(holder, me) and not self._same_job(holder, me):
                    raise self._refusal(holder, elsewhere=True)
                with open(self.path, "r+") as f:  # the inode just checked: the lock stays on what is written
                    f.write(json.dumps(me))
                    f.truncate()
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as err:
                os.close(fd)
                raise OutputDirError(f"{self.path} cannot be written ({err.strerror or err}).") from err
            except BaseException:
                os.close(fd)
                raise
            self._fd, self.held = fd, True
            return self
        raise FolderLocked(f"Could not take {self.path}.")

    def _locked_descriptor(self) -> int:
        """A descriptor of the lock file holding its exclusive flock (BlockingIOError: another holds it; other
        OSErrors: no working locks here). Held read-only where the file system allows it, so the lock itself never
        stops a mount from turning read-only; NFS emulates flock with fcntl locks, whose exclusive form needs a
        descriptor open for writing (EBADF otherwise)."""
        for flags in (os.O_RDONLY | os.O_CREAT, os.O_RDWR | os.O_CREAT):
            fd = self._open(flags)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as err:
                os.close(fd)
                if err.errno != errno.EBADF or flags & os.O_RDWR:
                    raise
        raise AssertionError("unreachable")

    def _refuse_if_held_by_earlier_version(self) -> None:
        """Earlier versions locked `.trl_justrl.lock`: a run of one still training here is refused too."""
        legacy = self.path.parent / LEGACY_LOCK_NAME
        if not legacy.is_file():
            return
        try:
            fd = os.open(legacy, os.O_RDONLY)
        except OSError:
            return
        try:  # shared: needs only read access (NFS too), conflicts with the old run's exclusive lock, takes nothing
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(legacy.read_text())
            except (OSError, ValueError):
                holder = {}
            raise self._refusal(holder if isinstance(holder, dict) else {}) from None
        except OSError:
            pass  # no working locks: the current lock file decides
        finally:
            os.close(fd)

    def _still_the_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _acquire_without_kernel_lock(self, me: dict) -> FolderLock:
        """The claim as a file created exclusively; one whose pid is dead on this host, or of this SLURM job, is
        taken over."""
        if self.path.exists() and not self._holder():  # empty or cut: made by the open above, or a torn write
            self.path.unlink(missing_ok=True)
        for _ in range(2):
            try:
                fd = self._open(os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                dead = holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not alive(
                    holder["pid"])
                if dead or self._same_job(holder, me):
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._refusal(holder, elsewhere=self._other_host(holder, me)) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise FolderLocked(f"Could not take {self.path}.")

    def release(self) -> None:
        """Remove the file, then drop the kernel lock. A file that cannot be removed (the folder turned read-only)
        is left with a warning: its kernel lock goes with the descriptor, so it blocks no later run."""
        if self.held and self._holder().get("pid") == os.getpid():
            try:
                self.path.unlink(missing_ok=True)  # before the kernel lock goes: a waiter then retries on a new file
            except OSError as err:
                logger.warning("%s could not be removed (%s); it holds no lock now.", self.path, err.strerror or err)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
