"""The disk weight transport without a server: versioned folders, the worker extension's checks, the client's
liveness watch, and how a run picks its transport. (tests/test_vllm_real_server.py runs it against vLLM.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from trl.import_utils import is_vllm_available

from trl_justrl.generation.client import ServerClient, VLLMServerLost
from trl_justrl.generation.vllm_extension import WeightFolderExtension, refresh_tied_head
from trl_justrl.generation.weight_folder import (
    MANIFEST,
    WeightFolderError,
    check_version,
    iter_version,
    remove_older,
    version_folder,
    versions,
    write_version,
)


def tensors(scale: float = 1.0) -> list[tuple[str, torch.Tensor]]:
    torch.manual_seed(0)
    return [(f"layer{i}.weight", torch.randn(64, 32) * scale) for i in range(5)] + [("bias", torch.arange(3.0))]


def test_a_version_is_written_whole_in_shards_and_read_back_equal(tmp_path):
    folder = write_version(tmp_path, 3, iter(tensors()), shard_bytes=20_000)  # 8 KiB a tensor: 2 per shard
    assert folder == version_folder(tmp_path, 3) and versions(tmp_path) == [3]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["version"] == 3 and manifest["tensors"] == 6 and len(manifest["files"]) == 3
    read = dict(iter_version(folder, check_version(folder, 3)))
    assert read.keys() == dict(tensors()).keys()
    assert all(torch.equal(read[name], value) for name, value in tensors())
    assert not list(tmp_path.glob(".*partial"))


def test_a_writer_that_fails_leaves_no_version(tmp_path):
    def broken():
        yield from tensors()[:2]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_version(tmp_path, 1, broken(), shard_bytes=10_000)
    assert versions(tmp_path) == [] and not list(tmp_path.iterdir())
    write_version(tmp_path, 1, iter(tensors()))
    with pytest.raises(WeightFolderError, match="each version is written once"):
        write_version(tmp_path, 1, iter(tensors()))


def test_a_cut_stale_or_partial_folder_is_refused_by_name(tmp_path):
    folder = write_version(tmp_path, 2, iter(tensors()), shard_bytes=20_000)
    with pytest.raises(WeightFolderError, match="holds version 2, not the 5 asked for"):
        check_version(folder, 5)
    shard = sorted(folder.glob("*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:-8])
    with pytest.raises(WeightFolderError, match=f"{shard.name} has {len(data) - 8} bytes .* cut or replaced"):
        check_version(folder, 2)
    shard.write_bytes(b"\0" * len(data))  # the right size, not a safetensors file
    with pytest.raises(WeightFolderError, match="not a readable safetensors file"):
        check_version(folder, 2)
    shard.unlink()
    with pytest.raises(WeightFolderError, match="listed in .* but missing"):
        check_version(folder, 2)
    (folder / MANIFEST).unlink()
    with pytest.raises(WeightFolderError, match="has no weights.json: not a complete weight version"):
        check_version(folder, 2)


def test_older_versions_and_crashed_writes_are_removed(tmp_path):
    for version in (1, 2, 3):
        write_version(tmp_path, version, iter(tensors()))
    (tmp_path / ".v00000004.999.partial").mkdir()
    assert remove_older(tmp_path, 3) == [1, 2]
    assert versions(tmp_path) == [3] and not list(tmp_path.glob(".*"))


class FakeRunner:
    """What the extension uses of vLLM's model runner: `reload_weights(weights_iterator=...)` and `get_model`."""

    def __init__(self, fail: bool = False):
        self.loaded: dict[str, torch.Tensor] = {}
        self.fail = fail

    def reload_weights(self, weights_iterator):
        for name, tensor in weights_iterator:
            if self.fail:
                raise RuntimeError("size mismatch")
            self.loaded[name] = tensor

    def get_model(self):
        return torch.nn.Module()


class Worker(WeightFolderExtension):
    def __init__(self, runner):
        self.model_runner = runner


def test_the_extension_loads_a_checked_version_and_never_raises(tmp_path):
    folder = write_version(tmp_path, 4, iter(tensors()))
    worker = Worker(FakeRunner())
    assert worker.served_weights_version() == {"version": -1}
    assert worker.load_weight_folder(str(folder), "4") == {"version": 4, "tensors": 6}
    assert torch.equal(worker.model_runner.loaded["bias"], torch.arange(3.0))
    refused = worker.load_weight_folder(str(folder), "5")  # stale: a folder of another version
    assert refused["version"] == 4 and "holds version 4, not the 5" in refused["error"]
    assert worker.served_weights_version() == {"version": 4}
    broken = Worker(FakeRunner(fail=True)).load_weight_folder(str(folder), "4")
    assert broken["version"] is None and "size mismatch" in broken["error"]


def test_a_tied_head_gets_its_kernel_rebuilt():
    class Head(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.weight = weight
            self.quant_method = self
            self.rebuilt = 0

        def process_weights_after_loading(self, layer):
            layer.rebuilt += 1

    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.embed_tokens = torch.nn.Embedding(10, 4)
    model.lm_head = Head(model.model.embed_tokens.weight)
    assert refresh_tied_head(model) and model.lm_head.rebuilt == 1
    model.lm_head = Head(torch.nn.Parameter(torch.zeros(10, 4)))  # untied: its own weights were loaded
    assert not refresh_tied_head(model) and model.lm_head.rebuilt == 0


# ---- the client's liveness watch ---------------------------------------------------------------------------------


class SlowServer:
    """/health and /v1/models answer; /v1/completions answers after `delay` s. `stop()` makes /health hang too."""

    def __init__(self, delay: float):
        self.hung = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, payload):
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                if owner.hung.is_set():
                    time.sleep(30)
                if self.path == "/v1/models":
                    self._json({"data": [{"id": "m"}]})
                else:
                    self._json({})

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                self._json({"choices": []})

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_slow_answer_from_a_live_server_is_waited_for():
    server = SlowServer(delay=1.5)
    try:
        client = ServerClient(server.url, connection_timeout=5, liveness_timeout_s=0.5)
        client.liveness.interval_s = 0.2
        assert client._post(f"{server.url}/v1/completions", json={}) == {"choices": []}  # 3x the liveness limit
    finally:
        server.close()


def test_a_server_that_stops_answering_ends_the_wait_naming_it():
    server = SlowServer(delay=60)
    try:
        client = ServerClient(server.url, connection_timeout=5, liveness_timeout_s=1.0)
        client.liveness.interval_s = 0.2
        server.hung.set()
        start = time.monotonic()
        with pytest.raises(VLLMServerLost, match=f"server at {server.url} has not answered for .* POST /v1/comp"):
            client._post(f"{server.url}/v1/completions", json={})
        assert time.monotonic() - start < 15
    finally:
        server.close()


def test_a_server_that_is_gone_is_named_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = SlowServer(delay=0)
    client = ServerClient(server.url, connection_timeout=5)
    server.close()
    client.base_url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(VLLMServerLost, match=f"127.0.0.1:{port} refused or dropped POST /v1/completions"):
        client.generate([[1, 2]], n=1)
    assert time.monotonic() - start < 10


def test_a_request_left_behind_does_not_keep_the_process_alive():
    """The request thread is a daemon: a process whose server hung exits once the run has failed."""
    code = (
        "import socket, sys\n"
        "from trl_justrl.generation.client import ServerClient, VLLMServerLost\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(8)\n"  # accepts, never answers
        "c = ServerClient.__new__(ServerClient)\n"
        "import requests, trl_justrl.generation.client as m\n"
        "c.session = requests.Session(); c.base_url = 'http://127.0.0.1:%d' % s.getsockname()[1]\n"
        "c.liveness = m.Liveness(c.base_url, 1.0, interval_s=0.2)\n"
        "try:\n    c._post(c.base_url + '/v1/completions', json={})\nexcept VLLMServerLost as e:\n    print(e)\n"
    )
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "has not answered" in result.stdout, result.stderr[-2000:]
    assert time.monotonic() - start < 40


# ---- which transport a run uses ----------------------------------------------------------------------------------


@pytest.mark.skipif(is_vllm_available() or torch.cuda.is_available(), reason="auto picks nccl beside vLLM and CUDA")
def test_the_transport_defaults_to_disk_without_cuda_or_vllm(tmp_path, tiny_config):
    args = tiny_config(tmp_path, use_vllm=True, vllm_mode="server")
    assert args.vllm_weight_transport == "disk"
    assert args.weight_dir == os.path.join(str(tmp_path), "_vllm_weights")
    assert tiny_config(tmp_path, vllm_weight_dir="/shared/w").weight_dir == "/shared/w"
    with pytest.raises(ValueError, match="vllm_weight_transport = nccl needs vLLM importable"):
        tiny_config(tmp_path, use_vllm=True, vllm_mode="server", vllm_weight_transport="nccl")
    with pytest.raises(ValueError, match="vllm_mode colocate runs vLLM's engine inside the trainer"):
        tiny_config(tmp_path, use_vllm=True, vllm_mode="colocate")
    with pytest.raises(ValueError, match="vllm_weight_transport = 'ftp'"):
        tiny_config(tmp_path, vllm_weight_transport="ftp")


def test_the_disk_transport_swaps_trls_backend_only_inside_the_constructor():
    import trl.trainer.grpo_trainer as grpo
    from trl.generation.vllm_generation import VLLMGeneration

    from trl_justrl.generation.client import ServedGeneration, served_generation

    with served_generation("/tmp/w", 5.0):
        built = grpo.VLLMGeneration
        assert built.func is ServedGeneration and built.keywords == {"weight_dir": "/tmp/w", "liveness_timeout_s": 5.0}
    assert grpo.VLLMGeneration is VLLMGeneration


def test_an_unreachable_server_is_an_error_line_before_the_model_loads(tmp_path, capfd):
    from trl_justrl.train import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit) as stop:  # `python -m trl_justrl.train`'s code, in this process
        cli(["--config", "demo_cpu", "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "127.0.0.1",
             "--vllm_server_port", str(port), "--vllm_server_timeout", "2", "--output_dir", str(tmp_path / "run"),
             "--synthetic_size", "8"])
    err = capfd.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    assert f"error: The vLLM server at http://127.0.0.1:{port} (host 127.0.0.1, port {port}) did not answer" in err
    assert "Traceback" not in err and "Loading weights" not in err
