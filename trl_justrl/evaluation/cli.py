"""`python -m trl_justrl.evaluation`: evaluate a checkpoint as a paper did (JustRL's avg@N on nine benchmarks by
default; `--protocol open-rs` for Open-RS's pass@1 on five)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..generation.server_checks import VLLMServerUnavailable
from ..models import ModelFolderError, check_tokenizer_files, check_weight_files, resolve_model
from ..run_services.checkpoints import CHECKPOINT, MARKER, incomplete_reason
from ..run_services.preemption import forwarding_signals
from ..run_services.run_folder import FolderLock, FolderLocked
from .problem_sets import BenchmarkError, get_benchmark, load_problems
from .protocols import DEFAULT_PROTOCOL, ProtocolError, load_protocol, shipped_protocols
from .runner import VERIFIERS, EvalOptions, format_report, run_evaluation
from .sampling import SamplingSettings


def snake_case_as_kebab(argv: Sequence[str]) -> list[str]:
    """`--output_dir x` as `--output-dir x`: training's snake_case spellings of the options work here too."""
    out = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            name, sep, value = arg.partition("=")
            arg = name.replace("_", "-") + sep + value
        out.append(arg)
    return out


def build_parser(prog: str = "python -m trl_justrl.evaluation") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--model", required=True, help="Hub id, local checkpoint, or 'smollm2-135m-instruct'.")
    p.add_argument("--protocol", default=DEFAULT_PROTOCOL,
                   help=f"a shipped protocol ({', '.join(shipped_protocols())}; evaluation/protocols/*.yaml) or a "
                   "protocol YAML file. justrl: nine benchmarks, avg@N (N 4 or 32); open-rs: five benchmarks, "
                   "pass@1, its prompt. The flags below override the protocol's values.")
    p.add_argument("--benchmarks", nargs="+", default=None, help="Default: the protocol's benchmarks.")
    p.add_argument("--data-dir", help="Folder laid out as <benchmark>/test.parquet; default: load from the Hub.")
    p.add_argument("--n", type=int, help="Samples per problem for every benchmark (default: the protocol's: JustRL "
                   "4 or 32 per benchmark, Open-RS 1).")
    p.add_argument("--limit", type=int, help="Only the first K problems of each benchmark (smoke runs).")
    p.add_argument("--backend", choices=["vllm", "vllm-server", "transformers"], default="vllm",
                   help="vllm: vLLM's engine in this process (GPUs); vllm-server: a running vLLM server at "
                   "--server-url (e.g. `trl-justrl serve --model CKPT --max-model-len 32768`, on any machine); "
                   "transformers: "
                   "`generate` (CPU, small models).")
    p.add_argument("--server-url", default="http://127.0.0.1:8000", help="The vLLM server of --backend vllm-server.")
    p.add_argument("--server-timeout", type=float, default=240.0,
                   help="Seconds to wait for that server to answer /health (then it must keep answering: a server "
                   "that stops for 30 s ends the evaluation, its finished problems kept).")
    p.add_argument("--max-new-tokens", type=int, default=None, help="Default: the protocol's.")
    p.add_argument("--temperature", type=float, default=None, help="Default: the protocol's.")
    p.add_argument("--top-p", type=float, default=None, help="Default: the protocol's.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verifier", choices=list(VERIFIERS), default="none",
                   help="Send the responses the rule-based grader rejects to CompassVerifier-3B (vLLM): 'compass' asks "
                   "it as JustRL's released evals/grade.py did (the paper's table), 'compass-short' with this "
                   "project's shorter prompt.")
    p.add_argument("--output-dir", default="outputs/eval")
    p.add_argument("--dtype", default="auto", help="Model dtype (auto, bfloat16, float32).")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism.")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM GPU memory fraction.")
    p.add_argument("--batch-problems", type=int, default=64, help="Problems per generation call.")
    p.add_argument("--data-parallel-size", type=int, default=1,
                   help="Engine replicas, each on --tensor-parallel-size GPUs with a share of the problems.")
    p.add_argument("--shard", help=argparse.SUPPRESS)  # "rank/size", set for the data-parallel workers
    return p


def check_model_to_evaluate(model: str) -> None:
    """Before any sampling: a local checkpoint whose completion marker disagrees with its files (a file missing,
    resized or changed since it was saved) is a ModelFolderError naming the file; a `checkpoint-N` folder without a
    marker gets a warning (its save may not have finished); cut safetensors files and a missing tokenizer are errors
    naming them. Hub ids and the embedded model's name pass."""
    folder = Path(model)
    if not folder.is_dir():
        return
    if (folder / MARKER).is_file():
        reason = incomplete_reason(folder, model_only=True)
        if reason is not None:
            raise ModelFolderError(f"{folder} is not a whole checkpoint: {reason}. Evaluate an earlier checkpoint-N "
                                   "of the run, or save this one again.")
    elif CHECKPOINT.match(folder.resolve().name):
        print(f"warning: {folder} has no {MARKER}: its save may not have finished (or it was written before "
              "markers existed). Evaluating it unverified.", file=sys.stderr)
    check_weight_files(folder)
    check_tokenizer_files(folder)


def server_backend(model: str, url: str, timeout_s: float) -> Any:
    """Sampling on a running vLLM server over HTTP, as in-training validation does on the trainer's server
    (validation.ServerSampler: one request per problem with its n samples and seed). The server must serve `model`:
    its tokenizer renders the prompts here."""
    from transformers import AutoTokenizer

    from ..generation.client import ServerClient
    from .validation import ServerSampler

    client = ServerClient(url, connection_timeout=timeout_s)
    served = client.model
    if Path(served).resolve() != Path(model).resolve() and served != model:
        raise ValueError(f"The vLLM server at {url} serves {served!r}, not the model to evaluate ({model!r}). Start "
                         f"it with `trl-justrl serve --model {model}`.")
    return ServerSampler(client, AutoTokenizer.from_pretrained(model))


def launch_workers(argv: list[str], args: argparse.Namespace) -> int:
    """Run one worker per data-parallel rank on its own GPUs, wait for all; 0 when every worker succeeded.

    SIGTERM / SIGINT / SIGUSR1 to this process are passed on to every worker, which stops (its finished problems are
    on disk); this process then exits with 128 + the signal, leaving no worker behind."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    total = args.data_parallel_size * args.tensor_parallel_size
    gpus = visible.split(",") if visible else [str(i) for i in range(total)]
    workers = []
    for rank in range(args.data_parallel_size):
        mine = gpus[rank * args.tensor_parallel_size : (rank + 1) * args.tensor_parallel_size]
        env = os.environ | {"CUDA_VISIBLE_DEVICES": ",".join(mine) if args.backend == "vllm" else ""}
        cmd = [sys.executable, "-m", "trl_justrl.evaluation", *argv, "--shard", f"{rank}/{args.data_parallel_size}"]
        workers.append(subprocess.Popen(cmd, env=env))

    def forward(signum: int, count: int) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    with forwarding_signals(forward) as received:
        codes = [w.wait() for w in workers]
    if received:
        print(f"stopped on {signal.Signals(received[0]).name}: the workers stopped too; finished problems are kept, "
              "re-run to resume", file=sys.stderr)
        return 128 + received[0]
    failed = [rank for rank, code in enumerate(codes) if code != 0]
    if failed:
        print(f"error: data-parallel workers {failed} failed; finished problems are kept, re-run to resume",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m trl_justrl.evaluation") -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(snake_case_as_kebab(argv))
    shard = None
    if args.shard:
        rank, size = (int(x) for x in args.shard.split("/"))
        shard = (rank, size)
    for name in ("n", "limit", "max_new_tokens", "batch_problems", "data_parallel_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')} must be positive, got {value}", file=sys.stderr)
            return 2
    try:
        protocol = load_protocol(args.protocol)
    except ProtocolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def chosen(value, default):
        return default if value is None else value

    settings = SamplingSettings(
        chosen(args.max_new_tokens, protocol.max_new_tokens), chosen(args.temperature, protocol.temperature),
        chosen(args.top_p, protocol.top_p), args.seed, protocol.prompt_style,
    )
    opts = EvalOptions(
        model=args.model, benchmarks=args.benchmarks or list(protocol.benchmarks), output_dir=args.output_dir,
        data_dir=args.data_dir, n=chosen(args.n, protocol.n), limit=args.limit, settings=settings,
        verifier=args.verifier, batch_problems=args.batch_problems, shard=shard, table=protocol.table,
        metric=protocol.metric,
    )

    def backend():
        model = resolve_model(args.model)  # the embedded model's name -> its cached checkpoint folder
        if args.backend == "vllm-server":
            return server_backend(model, args.server_url, args.server_timeout)
        if args.backend == "vllm":
            from trl_justrl.evaluation.sampling import VLLMBackend

            return VLLMBackend(model, tensor_parallel_size=args.tensor_parallel_size,
                               gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype)
        from trl_justrl.evaluation.sampling import TransformersBackend

        return TransformersBackend.from_pretrained(model, dtype=args.dtype)

    lock = None
    try:
        if shard is None:  # the parent checks the model once, before any worker or sampler starts
            check_model_to_evaluate(args.model)
        if shard is None:  # one evaluation per output folder (its data-parallel workers write under the parent's lock)
            lock = FolderLock(args.output_dir, f"evaluation of {args.model}").acquire()
        if args.data_parallel_size > 1 and shard is None:
            for name in opts.benchmarks:  # bad names and files fail here, once, before any worker starts
                load_problems(get_benchmark(name), opts.data_dir, opts.limit)
            code = launch_workers(argv, args)
            if code != 0:
                return code
        report = run_evaluation(opts, backend)
    except (BenchmarkError, FileNotFoundError, ImportError, ValueError, FolderLocked, VLLMServerUnavailable,
            ModelFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
    if shard is not None:
        return 0
    print(format_report(report))
    print(f"\nSaved to {args.output_dir}/ (results.md, results.json, <benchmark>/generations.jsonl, grading.json)")
    return 0
