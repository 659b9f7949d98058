"""vLLM on CPU against transformers `generate`, and the cost of a `disk` weight sync (benchmarks/RESULTS.md).

    python benchmarks/vllm_cpu.py [--model smollm2-135m-instruct] [--dtype float32] [--repeats 3] [--out FILE]

Starts the server as `trl-justrl serve` does (vLLM's Python from TRL_JUSTRL_VLLM_PYTHON: `make vllm-cpu`) and times:
start to ready; generation of the same prompts (8 prompts x n 4, 128 new tokens, temperature 1, end of sequence
ignored, so every run makes the same number of tokens) on the server and, with the server stopped, with transformers
`generate` on all cores; a weight sync (the trainer writing a version folder, the server loading it, its prefix cache
reset), with its size. Prints a table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = [f"Write a short story about a {animal} who learns to count." for animal in
           ("cat", "dog", "fox", "owl", "bee", "cow", "eel", "yak")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, dtype: str, log: Path) -> tuple[subprocess.Popen, str, float]:
    import requests

    port = free_port()
    start = time.monotonic()
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "trl_justrl.cli", "serve", "--config", "demo_cpu",
                                   "--model", model, "--dtype", dtype, "--max-model-len", "1024", "--host",
                                   "127.0.0.1", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        if server.poll() is not None:
            sys.exit(f"the server exited; see {log}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url, time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.5)


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def prompt_ids(tokenizer) -> list[list[int]]:
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]) for p in PROMPTS]


def time_server_generation(client, ids, n: int, tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    out = client.generate(ids, n=n, temperature=1.0, max_tokens=tokens, logprobs=None,
                          generation_kwargs={"ignore_eos": True})
    return time.perf_counter() - start, sum(len(c) for c in out["completion_ids"])


def time_transformers_generation(model, tokenizer, ids, n: int, tokens: int) -> tuple[float, int]:
    batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding_side="left")
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=tokens,
                             min_new_tokens=tokens, num_return_sequences=n, pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - start, (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]


def time_sync(client, model, root: Path, version: int) -> dict[str, float]:
    from trl_justrl.generation.weight_folder import remove_older, write_version

    start = time.perf_counter()
    folder = write_version(root, version, model.named_parameters())
    written = time.perf_counter()
    client.load_weight_folder(folder.resolve(), version)
    client.reset_prefix_cache()
    done = time.perf_counter()
    size = sum(f.stat().st_size for f in folder.iterdir())
    remove_older(root, version)
    return {"write_s": written - start, "load_s": done - written, "total_s": done - start, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results_vllm_cpu.json")
    args = parser.parse_args()

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_justrl.generation.client import ServerClient
    from trl_justrl.models import resolve_model

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = prompt_ids(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
    report: dict = {"model": args.model, "dtype": args.dtype, "prompts": len(ids), "n": args.n,
                    "new_tokens": args.tokens, "cpus": os.cpu_count(), "machine": platform.processor() or
                    platform.machine(), "torch": torch.__version__, "transformers": transformers.__version__,
                    "vllm_python": os.environ.get("TRL_JUSTRL_VLLM_PYTHON")}
    vllm_version = subprocess.run([report["vllm_python"] or sys.executable, "-c",
                                   "from importlib.metadata import version; print(version('vllm-cpu'))"],
                                  capture_output=True, text=True).stdout.strip()
    report["vllm_cpu"] = vllm_version or "unknown"

    with tempfile.TemporaryDirectory() as scratch:
        server, url, ready = start_server(path, args.dtype, Path(scratch) / "server.log")
        try:
            report["server_ready_s"] = ready
            client = ServerClient(url, connection_timeout=30)
            time_server_generation(client, ids, args.n, 8)  # warm-up
            runs = [time_server_generation(client, ids, args.n, args.tokens) for _ in range(args.repeats)]
            report["vllm_tokens_per_s"] = [tokens / seconds for seconds, tokens in runs]
            report["syncs"] = [time_sync(client, model, Path(scratch) / "weights", v + 1)
                               for v in range(args.repeats)]
        finally:
            stop(server)
        # a second start: the first on a machine may include one-time work (the kernel cache)
        server, _, again = start_server(path, args.dtype, Path(scratch) / "server2.log")
        stop(server)
        report["server_ready_again_s"] = again

    torch.set_num_threads(os.cpu_count() or 1)
    time_transformers_generation(model, tokenizer, ids, args.n, 8)
    runs = [time_transformers_generation(model, tokenizer, ids, args.n, args.tokens) for _ in range(args.repeats)]
    report["transformers_tokens_per_s"] = [tokens / seconds for seconds, tokens in runs]

    Path(args.out).write_text(json.dumps(report, indent=1))
    med = statistics.median
    print(f"model {args.model} ({args.dtype}), {len(ids)} prompts x n {args.n} x {args.tokens} tokens, "
          f"{report['cpus']} cores, vllm-cpu {report['vllm_cpu']}")
    print(f"server start to ready        {report['server_ready_s']:.1f} s, again "
          f"{report['server_ready_again_s']:.1f} s")
    print(f"vLLM server, tokens/s        {med(report['vllm_tokens_per_s']):.0f} (median of {args.repeats})")
    print(f"transformers generate, tok/s {med(report['transformers_tokens_per_s']):.0f} (median)")
    syncs = report["syncs"]
    print(f"weight sync (disk)           {med(s['total_s'] for s in syncs):.2f} s: write "
          f"{med(s['write_s'] for s in syncs):.2f} s, server load + cache reset {med(s['load_s'] for s in syncs):.2f}"
          f" s, {syncs[0]['bytes'] / 1e6:.0f} MB")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
