"""The trainer's side of a vLLM server reached without NCCL: `ServerClient` and `ServedGeneration` (the `disk`
weight transport).

TRL 1.16's server mode pushes weights only over vLLM's NCCL weight-transfer engine (CUDA on both sides, one NCCL
fabric), and its client needs vLLM importable in the trainer's environment. With `vllm_weight_transport: disk` the
trainer instead writes each update as a versioned folder (weight_folder.py) from TRL's own parameter iteration (so
ZeRO-3, FSDP and PEFT gathers stay TRL's), and the server loads it through the project's worker extension
(vllm_extension.py). Generation is TRL's `VLLMGeneration.generate`, unchanged. Every request runs under a liveness
watch: a server that dies or stops answering (SIGSTOP, a hung node) ends the run with `VLLMServerLost` naming it,
instead of a silent wait.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from accelerate.utils import broadcast_object_list
from requests.adapters import HTTPAdapter
from trl.generation.vllm_client import VLLMClient
from trl.generation.vllm_generation import VLLMGeneration
from urllib3.util.retry import Retry

from .server_checks import REQUEST_TIMEOUT_S, VLLMServerUnavailable, wait_for_server
from .vllm_extension import LOAD_METHOD, VERSION_METHOD
from .weight_folder import remove_older, versions, write_version

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 5.0  # how often a request in flight checks that the server still answers /health


class VLLMServerLost(VLLMServerUnavailable):
    """The vLLM server died or stopped answering during the run (the message names it and what was waiting)."""


class Liveness:
    """Whether the server still answers `/health`: probed at most every `interval_s`, shared by the requests in
    flight; `check` raises `VLLMServerLost` once no probe has succeeded for `timeout_s`."""

    def __init__(self, base_url: str, timeout_s: float, interval_s: float = PROBE_INTERVAL_S):
        self.base_url, self.timeout_s, self.interval_s = base_url, timeout_s, interval_s
        self.last_ok = self.last_probe = time.monotonic()
        self.last_error = ""
        self._lock = threading.Lock()

    def check(self, waiting_for: str, since: float) -> None:
        """Probe when due; raise once nothing has answered for `timeout_s` (counted from `since` at the earliest,
        when the request began: a quiet spell between requests is no silence)."""
        with self._lock:
            now = time.monotonic()
            if now - self.last_probe >= self.interval_s:
                self.last_probe = now
                try:
                    answer = requests.get(f"{self.base_url}/health", timeout=min(REQUEST_TIMEOUT_S, self.timeout_s))
                    if answer.status_code == 200:
                        self.last_ok = time.monotonic()
                    else:
                        self.last_error = f"/health answered HTTP {answer.status_code}"
                except requests.RequestException as err:
                    self.last_error = f"/health: {type(err).__name__}"
            silent = time.monotonic() - max(self.last_ok, since)
        if silent > self.timeout_s:
            raise VLLMServerLost(
                f"The vLLM server at {self.base_url} has not answered for {silent:.0f} s ({self.last_error}) while "
                f"the trainer waited for {waiting_for}: it died, hangs, or its node is unreachable "
                f"(vllm_server_liveness_timeout={self.timeout_s:g}). The last whole checkpoint is kept; restart the "
                "server, then resume with --resume_from_checkpoint latest."
            )

    def alive(self) -> None:
        """Record an answer that proves the server is up."""
        self.last_ok = time.monotonic()


class ServerClient(VLLMClient):
    """TRL's `VLLMClient` (its `generate`, `chat`, `reset_prefix_cache`, `get_server_info`) for a server reached over
    HTTP only: no NCCL communicator, no vLLM import in the trainer's environment, and every request bounded by the
    liveness watch. Adds the calls of the project's worker extension (`load_weight_folder`,
    `served_weights_version`)."""

    def __init__(self, base_url: str, connection_timeout: float = 0.0, liveness_timeout_s: float = 30.0):
        # Not VLLMClient.__init__: it refuses to start without vLLM installed (for NCCL) and retries a refused
        # connection for about a minute, which would hide a dead server behind the liveness limit.
        parts = urllib.parse.urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.host, self.server_port = parts.hostname, parts.port
        self.group_port = None
        self.communicator = None
        self._updating_weights = False
        self.session = requests.Session()
        retries = Retry(total=2, connect=2, read=0, status=0, backoff_factor=0.5, allowed_methods=["GET", "POST"])
        adapter = HTTPAdapter(max_retries=retries, pool_maxsize=64)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.liveness = Liveness(self.base_url, liveness_timeout_s)
        wait_for_server(self.base_url, connection_timeout)
        self.model = self._get(f"{self.base_url}/v1/models")["data"][0]["id"]

    def check_server(self, total_timeout: float = 0.0, retry_interval: float = 2.0) -> None:
        """TRL's wait for `/health`, with a time limit on each request too."""
        wait_for_server(self.base_url, total_timeout, poll_s=retry_interval)

    def _request(self, method: str, url: str, **kwargs: Any) -> dict:
        """One request in a daemon thread, the liveness watch in this one; the JSON answer (or {} for an empty
        one). A request left behind by a lost server cannot keep the process from exiting."""
        outcome: dict[str, Any] = {}

        def send() -> None:
            try:
                outcome["response"] = self.session.request(method, url, **kwargs)
            except Exception as err:  # noqa: BLE001 - handed to the waiting thread
                outcome["error"] = err

        path = urllib.parse.urlsplit(url).path
        began = time.monotonic()
        worker = threading.Thread(target=send, name=f"trl_justrl-vllm{path.replace('/', '-')}", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(self.liveness.interval_s)
            if worker.is_alive():
                self.liveness.check(f"{method} {path}", since=began)
        if "error" in outcome:
            err = outcome["error"]
            if isinstance(err, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
                raise VLLMServerLost(f"The vLLM server at {self.base_url} refused or dropped {method} {path} "
                                     f"({type(err).__name__}): it is not running any more. The last whole "
                                     "checkpoint is kept; restart the server, then resume with "
                                     "--resume_from_checkpoint latest.") from err
            raise err
        response = outcome["response"]
        self.liveness.alive()
        if response.status_code != 200:
            raise RuntimeError(f"The vLLM server at {self.base_url} answered {method} {path} with HTTP "
                               f"{response.status_code}: {response.text[:800]}")
        return response.json() if response.content else {}

    def _get(self, url: str, **kwargs: Any) -> dict:
        return self._request("GET", url, **kwargs)

    def _post(self, url: str, **kwargs: Any) -> dict:
        return self._request("POST", url, **kwargs)

    def reset_prefix_cache(self) -> None:
        """Drop the server's cached prompt prefixes: after new weights they would serve the old model's states."""
        self._post(f"{self.base_url}/reset_prefix_cache")

    def init_communicator(self, device: Any = 0) -> None:
        raise NotImplementedError("ServerClient sends weights through a shared folder (vllm_weight_transport: disk); "
                                  "TRL's NCCL communicator is not used.")

    def _rpc(self, method: str, *args: str) -> list[Any]:
        """Call a worker-extension method on every vLLM worker (`/collective_rpc`); one result per worker."""
        answer = self._post(f"{self.base_url}/collective_rpc", json={"method": method, "args": list(args)})
        return answer.get("results", [])

    def load_weight_folder(self, folder: str | Path, version: int) -> None:
        """Have every worker load `folder` (a whole version written by weight_folder.write_version), then check that
        each serves `version`."""
        results = self._rpc(LOAD_METHOD, str(folder), str(version))
        errors = sorted({r["error"] for r in results if isinstance(r, dict) and r.get("error")})
        if errors:
            raise RuntimeError(f"The vLLM server at {self.base_url} could not load weight version {version} from "
                               f"{folder}: {'; '.join(errors)}")
        served = sorted({r.get("version") if isinstance(r, dict) else r for r in results}, key=str)
        if served != [version]:
            raise RuntimeError(f"The vLLM server at {self.base_url} was asked to load weight version {version} from "
                               f"{folder} but its workers report {served}.")

    def served_weights_version(self) -> int:
        """The weight version the server's workers serve (-1: the weights it started with). Raises when the server
        runs without the project's worker extension."""
        results = self._rpc(VERSION_METHOD)
        found = {r.get("version") for r in results if isinstance(r, dict)}
        if len(found) != 1:
            raise RuntimeError(f"The vLLM server at {self.base_url} reports weight versions {sorted(found)}.")
        return found.pop()


class ServedGeneration(VLLMGeneration):
    """TRL's `VLLMGeneration` in server mode with the `disk` weight transport: the main process talks to the server
    through a `ServerClient`; `sync_weights` writes the next version into `weight_dir` and has the server load it.
    Records the last sync (`last_sync`: version, bytes) and the time spent (`take_timings`).

    A server lost during `generate` raises on the main process only, while the others wait in TRL's broadcast of the
    completions: the launcher (torchrun, accelerate launch) then ends them when the main process exits."""

    def __init__(self, *args: Any, weight_dir: str | Path, liveness_timeout_s: float = 30.0, **kwargs: Any):
        self.weight_dir = Path(weight_dir)
        self.liveness_timeout_s = liveness_timeout_s
        self.last_sync: dict[str, int] = {}
        self.generation_seconds = self.sync_seconds = self.validation_sync_seconds = 0.0
        self.syncs = 0
        super().__init__(*args, **kwargs)

    def _init_vllm(self) -> None:
        if self.mode != "server":
            raise ValueError("vllm_weight_transport 'disk' is for vllm_mode 'server' (a colocated engine shares the "
                             "trainer's process and needs no transport).")
        if self.accelerator.is_main_process:
            base_url = self.server_base_url or f"http://{self.server_host}:{self.server_port}"
            self.vllm_client = ServerClient(base_url, connection_timeout=self.server_timeout,
                                            liveness_timeout_s=self.liveness_timeout_s)
        self.accelerator.wait_for_everyone()

    def sync_weights(self, *, outside_step: bool = False) -> None:
        """Every process walks TRL's parameter iteration (its gathers are collectives); the main process writes the
        tensors as the next version, the server loads it, its prefix cache is reset, older versions go. A failure
        raises on every process (the main process shares it), so none waits alone in a later collective.
        `outside_step`: a sync for validation, counted apart from the training steps' time."""
        start = time.perf_counter()
        named = self._iter_named_params()
        error = None
        if self.accelerator.is_main_process:
            try:
                self._write_and_load(named, start)
            except Exception as err:  # shared below, then raised on every process
                for _ in named:  # the other processes' gathers still need this one
                    pass
                error = err
        else:
            for _ in named:
                pass
        if self.accelerator.num_processes > 1:
            message = [None if error is None else f"{type(error).__name__}: {error}"]
            broadcast_object_list(message, from_process=0)
            if error is None and message[0] is not None:
                error = RuntimeError(message[0])
        if error is not None:
            raise error
        seconds = time.perf_counter() - start
        if outside_step:
            self.validation_sync_seconds += seconds
        else:
            self.sync_seconds += seconds
        self.syncs += 1

    def _write_and_load(self, named: Iterator[tuple[str, Any]], start: float) -> None:
        # numbered after what the folder holds: a resumed run goes on, a failed attempt's number is not reused
        version = max(versions(self.weight_dir), default=0) + 1
        folder = write_version(self.weight_dir, version, named)
        written = time.perf_counter()
        size = sum(f.stat().st_size for f in folder.iterdir())
        self.vllm_client.load_weight_folder(folder.resolve(), version)
        self.vllm_client.reset_prefix_cache()
        remove_older(self.weight_dir, version)
        done = time.perf_counter()
        self.last_sync = {"version": version, "bytes": size}
        logger.info("vLLM weight sync: version %d, %.1f MB written in %.2f s, loaded by the server in %.2f s",
                    version, size / 1e6, written - start, done - written)

    def take_timings(self) -> dict[str, float]:
        """Since the last call: seconds generating, syncing weights in training steps and for validation, and the
        number of syncs; the last sync's version and size."""
        timings = {"generation_seconds": self.generation_seconds, "weight_sync_seconds": self.sync_seconds,
                   "validation_weight_sync_seconds": self.validation_sync_seconds, "weight_syncs": self.syncs}
        if self.last_sync:
            timings["weights_version"] = self.last_sync["version"]
            timings["weight_sync_bytes"] = self.last_sync["bytes"]
        self.generation_seconds = self.sync_seconds = self.validation_sync_seconds = 0.0
        self.syncs = 0
        return timings

    def generate(self, *args: Any, **kwargs: Any) -> tuple:
        start = time.perf_counter()
        try:
            return super().generate(*args, **kwargs)
        finally:
            self.generation_seconds += time.perf_counter() - start


@contextlib.contextmanager
def served_generation(weight_dir: str | Path, liveness_timeout_s: float) -> Iterator[None]:
    """Within this block, TRL's GRPOTrainer builds `ServedGeneration` where it builds `VLLMGeneration`.

    GRPOTrainer.__init__ constructs its generation backend by the name `VLLMGeneration` in its module and offers no
    hook to choose another; the disk transport binds that name for the constructor only. This is the one place the
    project replaces a TRL name; a TRL that builds its backend differently fails here, loudly."""
    module = importlib.import_module("trl.trainer.grpo_trainer")
    if getattr(module, "VLLMGeneration", None) is not VLLMGeneration:
        raise RuntimeError("trl.trainer.grpo_trainer no longer builds its vLLM backend as VLLMGeneration; this trl "
                           "version changed what the disk weight transport relies on. Use vllm_weight_transport: "
                           "nccl, or the trl version in setup.cfg.")
    module.VLLMGeneration = functools.partial(ServedGeneration, weight_dir=weight_dir,
                                              liveness_timeout_s=liveness_timeout_s)
    try:
        yield
    finally:
        module.VLLMGeneration = VLLMGeneration
