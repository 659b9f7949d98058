"""Start the vLLM generation server for a recipe the way TRL 1.16's server mode expects (`launch/vllm_serve.sh`).

The command is `trl vllm-serve`'s own (`trl.scripts.vllm_serve.build_command`: NCCL weight transfer, processed
logprobs), with `VLLM_SERVER_DEV_MODE=1` and the recipe's context cap as `--max-model-len` (1,024 + 15,360 = 16,384).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Sequence

from .plan import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_RECIPE,
    DEFAULT_VLLM_PORT,
    VLLM_SERVER_ENV,
    PlanError,
    RecipeBatch,
    resolve_recipe,
    vllm_serve_argv,
)


def build(argv: Sequence[str] | None = None, prog: str = "launch/vllm_serve.sh"
          ) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="recipe whose model and context cap are served")
    p.add_argument("--model", default=None, help="override the recipe's model_name_or_path")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--data-parallel-size", type=int, default=1,
                   help="keep 1 for dense models (vLLM >= 0.14 refuses data parallelism for them)")
    p.add_argument("--gpu-memory-utilization", type=float, default=DEFAULT_GPU_MEMORY_UTILIZATION)
    p.add_argument("--max-model-len", type=int, default=None,
                   help="default: the recipe's prompt + completion cap, or prompt + validation cap when it validates")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=DEFAULT_VLLM_PORT)
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    args = p.parse_args(argv)
    recipe = RecipeBatch.from_recipe(resolve_recipe(args.recipe))
    model = args.model or recipe.model
    if not model:
        raise PlanError(f"Recipe {args.recipe} names no model_name_or_path; pass --model.")
    for name in ("tensor_parallel_size", "data_parallel_size", "port"):
        if getattr(args, name) < 1:
            raise PlanError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if not 0.0 < args.gpu_memory_utilization <= 1.0:
        raise PlanError(f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization}.")
    command = vllm_serve_argv(
        model,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        max_model_len=args.max_model_len or recipe.server_context,
        port=args.port,
        gpu_memory_utilization=args.gpu_memory_utilization,
        host=args.host,
    )
    return args, command


def main(argv: Sequence[str] | None = None, prog: str = "launch/vllm_serve.sh") -> int:
    try:
        args, command = build(argv, prog)
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    line = " ".join([*(f"{k}={v}" for k, v in VLLM_SERVER_ENV.items()), shlex.join(command)])
    print(line, flush=True)
    if args.dry_run:
        return 0
    executable = shutil.which(command[0])
    if executable is None:
        print("error: vLLM is not installed here (`pip install -e '.[vllm]'` on a GPU machine).", file=sys.stderr)
        return 2
    os.execve(executable, command, {**os.environ, **VLLM_SERVER_ENV})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
