"""Hub pushes that neither stall nor silently fail a run.

transformers pushes each saved checkpoint in a background thread (`hub_strategy: every_save` and the others) and
never looks at the result. Here a push that failed is reported (a warning naming the repo, the step and the error;
`hub/push_failures` in the logs) and training goes on: the next save pushes again, as transformers starts a new push
once the last one is done. Every request of huggingface_hub's HTTP client is bounded (`hub_request_timeout_s`: a
server that stops answering fails the push instead of holding it, and the end of training, forever); Xet transfers
of large files (hf_xet) keep their own retries and limits. The final push after training is one upload; an HTTP or
network failure of it is a `HubPushError` that says where the model is saved and how to push it by hand (a failure
to write the model there stays the write error it is).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback

from ..trl_internals import hub_client_factory, hub_push_jobs

logger = logging.getLogger(__name__)

FAILURES_KEY = "hub/push_failures"  # logged: pushes that failed so far in this process


class HubPushError(RuntimeError):
    """The push after training failed (the message names the repo, the cause and the local copy)."""


def bound_hub_requests(timeout_s: float) -> None:
    """Make every huggingface_hub request of this process give up after `timeout_s` without progress (connect, each
    read and each write: a large upload that keeps moving is not cut). huggingface_hub's own client has no limit."""
    from huggingface_hub.utils import set_client_factory

    default = hub_client_factory()

    def bounded() -> Any:
        client = default()
        client.timeout = timeout_s
        return client

    set_client_factory(bounded)


@contextmanager
def pushes_off(args: Any) -> Iterator[None]:
    """Within this block `trainer.save_model` does not push (transformers pushes on every call when `push_to_hub`):
    the final model is written first, then pushed once."""
    push = args.push_to_hub
    args.push_to_hub = False
    try:
        yield
    finally:
        args.push_to_hub = push


class HubPushReport(TrainerCallback):
    """Reports each background push that failed, once, when the next push starts and at the end of training."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.jobs: list[tuple[Future, int, bool]] = []  # (push job, the step it pushes, reported)
        self.failures: list[str] = []
        self.step_of_push = 0  # the step of the latest push started: jobs first seen after it push that step

    def _step_of(self, job: Future) -> int:
        for index, (known, _, _) in enumerate(self.jobs):
            if known is job:
                return index
        self.jobs.append((job, self.step_of_push, False))
        return len(self.jobs) - 1

    def check(self) -> list[str]:
        """Report the finished pushes not yet looked at; return the new failure messages."""
        new = []
        for job in hub_push_jobs(self.trainer):
            self._step_of(job)  # recorded with the step of its push
        for index in range(len(self.jobs)):  # also jobs transformers dropped before they finished (hub_always_push)
            job, step, reported = self.jobs[index]
            if reported or not job.done():
                continue
            self.jobs[index] = (job, step, True)
            error = job.exception()
            if error is not None:
                message = (f"Pushing step {step} to the Hub ({self.trainer.hub_model_id}) failed: "
                           f"{type(error).__name__}: {str(error)[:300]}. Training goes on; the next save pushes "
                           "again.")
                logger.warning(message)
                new.append(message)
        self.failures.extend(new)
        return new

    def on_push_begin(self, args, state, control, **kwargs):
        self.check()  # the earlier pushes' jobs, before transformers replaces them
        self.step_of_push = state.global_step
        return control

    def on_save(self, args, state, control, **kwargs):
        self.check()  # the jobs this save's push just started are recorded with its step
        return control

    def logs(self) -> dict[str, int]:
        """What the trainer adds to its next log: the failures so far, once there are any."""
        self.check()
        return {FAILURES_KEY: len(self.failures)} if self.failures else {}

    def on_train_end(self, args, state, control, **kwargs):
        self.check()
        return control


def _client_errors() -> tuple[type[BaseException], ...]:
    """The HTTP errors of huggingface_hub's client (httpx2 from huggingface_hub 2, httpx before): timeouts, refused
    connections, transport errors; every one importable here."""
    errors = []
    for package in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(package).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def push_final_model(trainer: Any, dataset_name: str | None) -> None:
    """`trainer.push_to_hub` once the final model is saved (it waits for a checkpoint push in flight first); a
    failure is a HubPushError naming the repo and the saved folder."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        trainer.push_to_hub(dataset_name=dataset_name)
    except (HfHubHTTPError, *_client_errors()) as err:  # the Hub's failure: the trained model is whole on disk
        folder = trainer.args.output_dir
        raise HubPushError(
            f"The final push to the Hub ({trainer.hub_model_id}) failed: {type(err).__name__}: {str(err)[:300]}. "
            f"The trained model is saved in {folder}; push it with `hf upload {trainer.hub_model_id} {folder} "
            "--exclude '_*' --exclude 'checkpoint-*'` once the Hub answers.") from err
    finally:
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, HubPushReport):
                callback.check()
