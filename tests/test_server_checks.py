"""The vLLM server pre-check (bounded wait, clear errors) and the weight-sync watchdog, without vLLM."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trl_justrl import JustRLConfig, JustRLTrainer
from trl_justrl.generation.server_checks import SyncWatchdog, VLLMServerUnavailable, check_vllm_server


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_closed_port_fails_fast_and_names_host_port_and_wait():
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(VLLMServerUnavailable) as err:
        check_vllm_server("127.0.0.1", port, timeout_s=1.5)
    elapsed = time.monotonic() - start
    assert 1.4 <= elapsed < 15  # it waited its bound, then gave up (no hang)
    message = str(err.value)
    assert f"http://127.0.0.1:{port}" in message and "after waiting" in message and "vllm_server_timeout=1.5" in message


def test_trainer_checks_the_server_before_loading_any_model(tmp_path):
    port = closed_port()
    args = JustRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", use_vllm=True,
                        vllm_mode="server", vllm_server_host="127.0.0.1", vllm_server_port=port,
                        vllm_server_timeout=1.0, prompts_per_step=2, prompts_per_update=1, num_generations=2,
                        per_device_train_batch_size=2)
    with pytest.raises(VLLMServerUnavailable, match=f"127.0.0.1:{port}"):
        JustRLTrainer(model="no/such-model-would-load", args=args)  # a load attempt would fail differently


class FakeServer:
    """A local HTTP server answering /health and /server_info like vLLM's dev mode."""

    def __init__(self, server_info: dict | None, info_status: int = 200):
        payload = json.dumps({"vllm_config": server_info}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.startswith("/health"):
                    self.send_response(200)
                    self.end_headers()
                elif self.path.startswith("/server_info") and info_status == 200:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(payload)
                else:
                    self.send_response(info_status if self.path.startswith("/server_info") else 404)
                    self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


GOOD = {"weight_transfer_config": {"backend": "nccl"}, "model_config": {"max_model_len": 16384}}


def test_a_server_set_up_for_trl_passes():
    with FakeServer(GOOD) as server:
        config = check_vllm_server("127.0.0.1", server.port, timeout_s=5, required_context=1024 + 15360)
    assert config["model_config"]["max_model_len"] == 16384


@pytest.mark.parametrize(
    ("info", "status", "message"),
    [
        (GOOD | {"weight_transfer_config": None}, 200, "no weight-transfer engine"),
        (GOOD | {"model_config": {"max_model_len": 4096}}, 200, "serves at most 4096 tokens, but the run needs"),
        (None, 404, "VLLM_SERVER_DEV_MODE=1"),
    ],
)
def test_a_misconfigured_server_is_named(info, status, message):
    with FakeServer(info, info_status=status) as server, pytest.raises(VLLMServerUnavailable, match=message):
        check_vllm_server("127.0.0.1", server.port, timeout_s=5, required_context=16384)


def test_watchdog_fires_only_past_its_limit():
    fired: list[str] = []
    guard = SyncWatchdog(0.2, "vLLM weight sync", on_timeout=fired.append)
    assert guard.wrap(lambda: 7)() == 7
    time.sleep(0.4)
    assert fired == []
    guard.wrap(time.sleep)(0.8)
    assert len(fired) == 1 and "did not finish within 0.2 s" in fired[0]
    with pytest.raises(ValueError, match="must be positive"):
        SyncWatchdog(0, "vLLM weight sync")


def test_a_hung_sync_ends_the_process_with_a_clear_error():
    # the module and its package load without torch or TRL, which keeps the child fast
    code = (
        "import sys, time\n"
        "from trl_justrl.generation.server_checks import SyncWatchdog\n"
        "assert 'torch' not in sys.modules\n"
        "SyncWatchdog(0.5, 'vLLM weight sync').wrap(time.sleep)(60)\n"
    )
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30
    assert result.returncode == 75, result.stderr
    assert "vLLM weight sync did not finish within 0.5 s" in result.stderr
    assert "Stopping instead of hanging" in result.stderr and "Thread" in result.stderr  # stacks were dumped


class RawServer:
    """A TCP server on 127.0.0.1 that answers every connection with `reply(path)` bytes, `delay` s between bytes."""

    def __init__(self, reply, delay: float = 0.0):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.reply, self.delay, self.open = reply, delay, True
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while self.open:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        try:
            request = conn.recv(4096).decode(errors="replace")
            path = request.split(" ")[1] if " " in request else "/"
            data = self.reply(path)
            if self.delay:
                for byte in data:
                    conn.sendall(bytes([byte]))
                    time.sleep(self.delay)
            else:
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.open = False
        self.sock.close()


def http_reply(status: int, body: bytes) -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body


def test_a_trickling_server_cannot_stretch_the_deadline():
    with RawServer(lambda path: http_reply(200, b"{}"), delay=2.0) as server:
        start = time.monotonic()
        with pytest.raises(VLLMServerUnavailable, match=f"127.0.0.1:{server.port}.*vllm_server_timeout=3"):
            check_vllm_server("127.0.0.1", server.port, timeout_s=3)
        assert time.monotonic() - start < 8  # bounded by the limit (plus one poll), not by the trickle


def test_non_http_bytes_name_the_server():
    with RawServer(lambda path: b"SSH-2.0-OpenSSH_9.6\r\n") as server:
        with pytest.raises(VLLMServerUnavailable, match=f"127.0.0.1:{server.port}.*not an HTTP answer"):
            check_vllm_server("127.0.0.1", server.port, timeout_s=1.5)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, b"Internal Server Error", "answered /server_info with HTTP 500"),
        (200, b"<html>not json</html>", "something that is not JSON"),
        (200, b'{"vllm_config": {"model_config": "max_model_len=4096"}}', "model_config that is not an object"),
        (200, b"[1, 2]", "without a configuration object"),
    ],
)
def test_a_failed_server_info_is_a_failure(status, body, message):
    def reply(path):
        return http_reply(200, b"") if path.startswith("/health") else http_reply(status, body)

    with RawServer(reply) as server:
        with pytest.raises(VLLMServerUnavailable, match=f"127.0.0.1:{server.port} \\(host 127.0.0.1, port "
                           f"{server.port}\\).*{message}"):
            check_vllm_server("127.0.0.1", server.port, timeout_s=5)
