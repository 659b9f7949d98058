"""A clean stop on SIGTERM / SIGUSR1 / SIGINT (SLURM preemption, `scancel`, Ctrl-C): finish the optimizer update
in progress, save a whole checkpoint at the step every process agrees on (one all-reduce), exit `EXIT_REQUEUE` (75)
to be requeued.

Signals within `SAME_REQUEST_WINDOW_S` of the first are the same request: a job step's stop signals every process
of its group (`kill -TERM -- -PGID`, `timeout`, systemd, SLURM), and a launcher dying on it adds the parent-death
SIGUSR1. A signal after that window, or `stop_grace_period_s` after the first, ends the process at once, except
while a checkpoint is being written: then it ends as soon as that checkpoint is whole (no torn folder). A stop
between the updates of one generation batch makes the resumed run sample a new batch for the rest (docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped on request with a whole checkpoint; relaunch with resume to continue
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # Ctrl-C too: not a bare KeyboardInterrupt
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # what a launcher passes on to its children
SAME_REQUEST_WINDOW_S = 5.0  # stop signals this close to the first one repeat its request (see the module docstring)


@contextlib.contextmanager
def forwarding_signals(forward: Callable[[int, int], None]) -> Iterator[list[int]]:
    """While the block runs, SIGTERM / SIGUSR1 / SIGINT call `forward(signum, request)` instead of their handlers
    (request 1 for the first signal, 2 for one more than `SAME_REQUEST_WINDOW_S` later; signals within the window
    repeat a request and are not forwarded again); yields the list of signals received; the previous handlers return
    after. Used by the processes that start others (the cluster launcher, the evaluation's data-parallel parent)."""
    received: list[int] = []
    first_at: list[float] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        now = time.monotonic()
        if not first_at:
            first_at.append(now)
            forward(signum, 1)
        elif now - first_at[0] > SAME_REQUEST_WINDOW_S:
            forward(signum, 2)

    previous = {sig: signal.signal(sig, on_signal) for sig in FORWARDED_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_when_parent_dies(sig: int) -> bool:
    """Linux: have the kernel send `sig` to this process when its parent exits (prctl PR_SET_PDEATHSIG; 0 clears)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(sig), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            return False
    except (OSError, AttributeError):
        return False
    if sig and os.getppid() == 1:  # the parent died before the request: act now
        os.kill(os.getpid(), sig)
    return True


def adopt_orphans() -> bool:
    """Linux: make this process the reaper of its orphaned descendants (prctl PR_SET_CHILD_SUBREAPER), so a launcher
    can wait for training processes whose own launcher (torchrun's agent, `accelerate launch`) died before them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def adopted_children(exclude: set[int]) -> list[int]:
    """The pids whose parent is this process (Linux /proc), but for `exclude`: with `adopt_orphans`, the training
    processes whose launcher died."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # fields after the command: state, ppid, ...
            found.append(int(entry))
    return found


class GracefulStop(TrainerCallback):
    """Stop training at the next optimizer-update boundary after SIGTERM / SIGUSR1 / SIGINT, saving a checkpoint
    first."""

    def __init__(self, accelerator: Any = None, grace_period_s: float | None = None):
        self.accelerator = accelerator
        self.grace_period_s = grace_period_s
        self.requested: int | None = None  # the signal number received (this process)
        self._requested_at = 0.0  # time.monotonic() of the first signal
        self.stopped_at: int | None = None  # the global step saved and stopped at (all processes)
        self._previous: dict[int, Any] = {}
        self._saving = False  # a checkpoint is being written (`saving()`)
        self._exit_after_save: int | None = None  # a stop-now that arrived while it was

    # -- signals ---------------------------------------------------------------------------------------------------

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            if time.monotonic() - self._requested_at <= SAME_REQUEST_WINDOW_S:  # the same request, carried again
                os.write(2, f"[trl_justrl] {signal.Signals(signum).name} received: already stopping\n".encode())
                return
            self._stop_now(signum, f"second signal ({signal.Signals(signum).name})")
            return
        self.requested, self._requested_at = signum, time.monotonic()
        stop_when_parent_dies(0)  # after a re-parenting the kernel could send it again, which would mean "at once"
        os.write(2, (f"[trl_justrl] {signal.Signals(signum).name} received: finishing the current optimizer update, "
                     f"then saving a checkpoint and stopping (send it again after {SAME_REQUEST_WINDOW_S:g} s to stop "
                     "at once)\n").encode())
        if self.grace_period_s:
            timer = threading.Timer(self.grace_period_s, self._out_of_time, args=(signum,))
            timer.daemon = True
            timer.start()

    def _out_of_time(self, signum: int) -> None:
        self._stop_now(signum, f"stop_grace_period_s={self.grace_period_s:g} passed")

    def _stop_now(self, signum: int, why: str) -> None:
        if self._saving and self._exit_after_save is None:  # ended by `saving()` once the checkpoint is whole
            self._exit_after_save = 128 + signum
            os.write(2, (f"[trl_justrl] {why} while a checkpoint is being written: stopping once it is whole (one "
                         "more signal stops at once)\n").encode())
            return
        os.write(2, f"[trl_justrl] {why}: stopping now\n".encode())
        os._exit(128 + signum)

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Around a checkpoint's save: a stop-now (a late second signal, the grace period's end) waits for it to be
        whole, then ends the process at once (128 + signal; the kernel drops the folder's lock). A further signal
        while it waits ends it at once, as does SIGKILL (SLURM's, KillWait after its TERM)."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._exit_after_save is not None:
            os.write(2, b"[trl_justrl] the checkpoint is whole: stopping now\n")
            os._exit(self._exit_after_save)

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere signals keep their default action). Under a launcher
        (`accelerate launch`, torchrun), the process also asks for SIGUSR1 when its launcher dies, so a launcher
        stopped by SIGTERM cannot leave it training on alone."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Training runs outside the main thread: SIGTERM / SIGUSR1 / SIGINT will not stop it "
                           "cleanly.")
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        if "LOCAL_RANK" in os.environ or "ACCELERATE_MIXED_PRECISION" in os.environ:
            stop_when_parent_dies(signal.SIGUSR1)

    def uninstall(self) -> None:
        """Restore the previous handlers; a launcher dying now no longer interrupts the final save."""
        if self._previous:
            stop_when_parent_dies(0)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    # -- the training loop -------------------------------------------------------------------------------------------

    def _anyone_requested(self) -> bool:
        """Whether any process was signalled (one all-reduce, so every process takes the same decision)."""
        flag = 1.0 if self.requested is not None else 0.0
        accelerator = self.accelerator
        if accelerator is None or accelerator.num_processes == 1:
            return bool(flag)
        tensor = torch.tensor([flag], device=accelerator.device)
        return bool(accelerator.reduce(tensor, reduction="sum").item() > 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.install()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self._anyone_requested():
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            logger.warning("Stopping on request at step %d: saving checkpoint-%d, then exiting with %d (requeue).",
                           state.global_step, state.global_step, EXIT_REQUEUE)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.uninstall()
        return control
