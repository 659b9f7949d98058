"""Before training: is the vLLM server there and set up for TRL? During training: weight syncs may not hang.

TRL's own client waits for the server only after the model is loaded, with HTTP calls that have no per-request
timeout, and its NCCL weight sync blocks forever if the server side dies. `check_vllm_server` runs first, with a
bounded wait, and names the host, port and time waited; `SyncWatchdog` ends a weight sync that exceeds its limit with
a clear error (and every thread's stack) instead of a silent hang.
"""

from __future__ import annotations

import faulthandler
import functools
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0  # one HTTP request; the overall wait is `vllm_server_timeout`
POLL_INTERVAL_S = 2.0


class VLLMServerUnavailable(ConnectionError):
    """The vLLM server is down, unreachable, or not configured the way TRL's server mode needs."""


def server_base_url(host: str, port: int, base_url: str | None = None) -> str:
    return base_url.rstrip("/") if base_url else f"http://{host}:{port}"


def _get_json(url: str, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a URL the user configured)
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, None


def wait_for_server(base_url: str, timeout_s: float, poll_s: float = POLL_INTERVAL_S,
                    request_timeout_s: float = REQUEST_TIMEOUT_S) -> float:
    """Poll `<base_url>/health` until it answers 200 or `timeout_s` has passed; return the seconds waited."""
    start = time.monotonic()
    last_error = "no answer"
    while True:
        try:
            status, _ = _get_json(f"{base_url}/health", request_timeout_s)
            if status == 200:
                return time.monotonic() - start
            last_error = f"HTTP {status}"
        except (OSError, ValueError) as err:  # refused, unreachable, DNS, timeout, bad body
            last_error = str(getattr(err, "reason", err))
        waited = time.monotonic() - start
        if waited >= timeout_s:
            raise VLLMServerUnavailable(
                f"The vLLM server at {base_url} did not answer after waiting {waited:.0f} s (vllm_server_timeout="
                f"{timeout_s:g}; last error: {last_error}). Start it first, e.g. `launch/vllm_serve.sh --recipe "
                "<recipe>` on the serving GPUs, or check vllm_server_host / vllm_server_port."
            )
        time.sleep(min(poll_s, max(0.0, timeout_s - waited)))


def check_vllm_server(host: str, port: int, timeout_s: float, required_context: int | None = None,
                      base_url: str | None = None) -> dict[str, Any] | None:
    """Wait (bounded) for the server, then check it can take TRL's weight syncs and the run's context length.

    Returns the server's configuration when it reports one (vLLM's `/server_info`, dev mode), else None.
    """
    url = server_base_url(host, port, base_url)
    where = f"{url} (host {host}, port {port})" if not base_url else url
    waited = wait_for_server(url, timeout_s)
    logger.info("vLLM server at %s is up (waited %.0f s)", where, waited)
    try:
        status, info = _get_json(f"{url}/server_info?config_format=json", REQUEST_TIMEOUT_S)
    except (OSError, ValueError) as err:
        raise VLLMServerUnavailable(f"The vLLM server at {where} answered /health but not /server_info: {err}") from err
    if status == 404:
        raise VLLMServerUnavailable(
            f"The vLLM server at {where} does not expose the development endpoints TRL syncs weights through. "
            "Restart it with VLLM_SERVER_DEV_MODE=1 (launch/vllm_serve.sh does)."
        )
    if status != 200 or not isinstance(info, dict):
        return None
    config = info.get("vllm_config", info)
    if isinstance(config, dict) and "weight_transfer_config" in config and config["weight_transfer_config"] is None:
        raise VLLMServerUnavailable(
            f"The vLLM server at {where} has no weight-transfer engine, so training weights could never reach it. "
            """Restart it with --weight-transfer-config '{"backend": "nccl"}' (launch/vllm_serve.sh does)."""
        )
    max_len = (config.get("model_config") or {}).get("max_model_len") if isinstance(config, dict) else None
    if required_context is not None and isinstance(max_len, int) and max_len < required_context:
        raise VLLMServerUnavailable(
            f"The vLLM server at {where} serves at most {max_len} tokens, but the run needs max_prompt_length + "
            f"max_completion_length = {required_context}. Restart it with --max-model-len {required_context}."
        )
    return config if isinstance(config, dict) else None


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
