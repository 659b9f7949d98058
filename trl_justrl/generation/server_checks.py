"""Before training: is the vLLM server there and set up for the run? During training: weight syncs may not hang.

TRL's client waits for the server only after the model loads, without per-request timeouts, and its NCCL weight sync
blocks forever if the server dies: `check_vllm_server` runs first within one deadline, naming host and port in every
failure; `SyncWatchdog` ends an overlong weight sync with an error (and every thread's stack).
"""

from __future__ import annotations

import faulthandler
import functools
import http.client
import json
import logging
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from .vllm_extension import VERSION_METHOD

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0  # one HTTP request; the overall wait is `vllm_server_timeout`
POLL_INTERVAL_S = 2.0


class VLLMServerUnavailable(ConnectionError):
    """The vLLM server is down, unreachable, or not configured the way TRL's server mode needs."""


def server_base_url(host: str, port: int, base_url: str | None = None) -> str:
    return base_url.rstrip("/") if base_url else f"http://{host}:{port}"


class _Deadline:
    """One time limit for the whole check: every request gets what is left of it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.monotonic()

    @property
    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    @property
    def waited(self) -> float:
        return time.monotonic() - self.start


def _request(url: str, timeout_s: float, body: dict | None = None) -> tuple[int, bytes]:
    """GET `url` (POST `body` as JSON) within `timeout_s` in all (connect, headers, body): a server that trickles
    bytes cannot stretch it. The request runs in a daemon thread whose connection is closed when the time is up."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=max(0.05, timeout_s))
    result: dict[str, Any] = {}

    def fetch() -> None:
        try:
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            if body is None:
                connection.request("GET", target)
            else:
                connection.request("POST", target, json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            result["answer"] = (response.status, response.read())
        except Exception as err:  # noqa: BLE001 - handed to the caller
            result["error"] = err

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(max(0.0, timeout_s))
    if worker.is_alive():
        connection.close()
        raise TimeoutError(f"no complete answer within {timeout_s:.1f} s")
    if "error" in result:
        raise result["error"]
    return result["answer"]


def _describe(err: BaseException) -> str:
    if isinstance(err, http.client.HTTPException):
        return f"not an HTTP answer ({type(err).__name__}: {err!r})"
    return str(getattr(err, "reason", None) or err) or type(err).__name__


def wait_for_server(base_url: str, timeout_s: float, poll_s: float = POLL_INTERVAL_S,
                    request_timeout_s: float = REQUEST_TIMEOUT_S, deadline: _Deadline | None = None) -> float:
    """Poll `<base_url>/health` until it answers 200 or `timeout_s` has passed (all requests included); return the
    seconds waited."""
    deadline = deadline or _Deadline(timeout_s)
    last_error = "no answer"
    while True:
        try:
            status, _ = _request(f"{base_url}/health", min(request_timeout_s, max(deadline.left, 0.05)))
            if status == 200:
                return deadline.waited
            last_error = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as err:  # refused, unreachable, DNS, timeout, not HTTP
            last_error = _describe(err)
        if deadline.left <= 0:
            raise VLLMServerUnavailable(
                f"The vLLM server at {base_url} did not answer after waiting {deadline.waited:.0f} s "
                f"(vllm_server_timeout={timeout_s:g}; last error: {last_error}). Start it first, e.g. "
                "`trl-justrl serve --config <recipe>` on the serving machine, or check vllm_server_host / "
                "vllm_server_port."
            )
        time.sleep(min(poll_s, max(0.0, deadline.left)))


def check_vllm_server(host: str, port: int, timeout_s: float, required_context: int | None = None,
                      base_url: str | None = None, transport: str = "nccl") -> dict[str, Any]:
    """Wait for the server, then check it can take the run's weight syncs (`transport`: nccl, TRL's NCCL engine;
    disk, the project's worker extension) and context length, all within `timeout_s`. Every failure names the
    server's address. Returns its configuration (vLLM's `/server_info`)."""
    url = server_base_url(host, port, base_url)
    where = f"{url} (host {host}, port {port})" if not base_url else url
    deadline = _Deadline(timeout_s)
    try:
        wait_for_server(url, timeout_s, deadline=deadline)
    except VLLMServerUnavailable as err:
        raise VLLMServerUnavailable(str(err).replace(url, where, 1)) from None
    logger.info("vLLM server at %s is up (waited %.0f s)", where, deadline.waited)
    try:
        left = max(deadline.left, 0.05)
        status, body = _request(f"{url}/server_info?config_format=json", min(REQUEST_TIMEOUT_S, left))
    except (OSError, http.client.HTTPException) as err:
        raise VLLMServerUnavailable(
            f"The vLLM server at {where} answered /health but not /server_info: {_describe(err)}") from err
    if status == 404:
        raise VLLMServerUnavailable(
            f"The vLLM server at {where} does not expose the development endpoints TRL syncs weights through. "
            "Restart it with VLLM_SERVER_DEV_MODE=1 (launch/vllm_serve.sh does)."
        )
    if status != 200:
        raise VLLMServerUnavailable(f"The vLLM server at {where} answered /server_info with HTTP {status}.")
    try:
        info = json.loads(body)
    except ValueError as err:
        raise VLLMServerUnavailable(f"The vLLM server at {where} answered /server_info with something that is not "
                                    f"JSON ({body[:80]!r}).") from err
    config = info.get("vllm_config", info) if isinstance(info, dict) else None
    if not isinstance(config, dict):
        raise VLLMServerUnavailable(
            f"The vLLM server at {where} answered /server_info without a configuration object ({str(info)[:80]}).")
    if transport == "disk":
        _check_extension(url, where, deadline)
    elif "weight_transfer_config" in config and config["weight_transfer_config"] is None:
        raise VLLMServerUnavailable(
            f"The vLLM server at {where} has no weight-transfer engine, so training weights could never reach it. "
            """Restart it with --weight-transfer-config '{"backend": "nccl"}' (launch/vllm_serve.sh does)."""
        )
    model_config = config.get("model_config")
    if model_config is not None and not isinstance(model_config, dict):
        raise VLLMServerUnavailable(
            f"The vLLM server at {where} reports a model_config that is not an object ({str(model_config)[:80]}).")
    max_len = (model_config or {}).get("max_model_len")
    if required_context is not None and isinstance(max_len, int) and max_len < required_context:
        raise VLLMServerUnavailable(
            f"The vLLM server at {where} serves at most {max_len} tokens, but the run needs {required_context} "
            "(max_prompt_length + max_completion_length, or + validation_max_new_tokens when validation is on). "
            f"Restart it with --max-model-len {required_context}."
        )
    return config


def _check_extension(url: str, where: str, deadline: _Deadline) -> None:
    """The disk transport's server side: the project's worker extension answers `served_weights_version`."""
    try:
        status, body = _request(f"{url}/collective_rpc", min(REQUEST_TIMEOUT_S, max(deadline.left, 0.05)),
                                {"method": VERSION_METHOD})
    except (OSError, http.client.HTTPException) as err:
        raise VLLMServerUnavailable(f"The vLLM server at {where} did not answer /collective_rpc: {_describe(err)}") \
            from err
    if status != 200:
        raise VLLMServerUnavailable(
            f"The vLLM server at {where} cannot load weights from a folder (vllm_weight_transport: disk): "
            f"/collective_rpc answered HTTP {status} ({body[:200].decode(errors='replace')}). Start it with "
            "`trl-justrl serve --config <recipe>`, which adds the project's worker extension "
            "(--worker-extension-cls trl_justrl.generation.vllm_extension.WeightFolderExtension)."
        )


def _die(message: str) -> None:
    """Default watchdog action: say why, dump every thread's stack, and end the process (no silent hang)."""
    logger.error(message)
    print(f"[trl_justrl] {message}", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(75)  # EX_TEMPFAIL: a requeued job resumes from its last checkpoint


class SyncWatchdog:
    """Run a function with a time limit; past it, call `on_timeout(message)` (default: end the process)."""

    def __init__(self, timeout_s: float, what: str, on_timeout: Callable[[str], None] = _die):
        if timeout_s <= 0:
            raise ValueError(f"The {what} timeout must be positive, got {timeout_s}.")
        self.timeout_s, self.what, self.on_timeout = timeout_s, what, on_timeout

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            done = threading.Event()

            def watch() -> None:
                if not done.wait(self.timeout_s):
                    self.on_timeout(
                        f"{self.what} did not finish within {self.timeout_s:g} s (vllm_weight_sync_timeout); the vLLM "
                        "server or the NCCL group is probably gone. Stopping instead of hanging."
                    )

            watcher = threading.Thread(target=watch, name="trl_justrl-sync-watchdog", daemon=True)
            watcher.start()
            try:
                return func(*args, **kwargs)
            finally:
                done.set()

        return guarded
