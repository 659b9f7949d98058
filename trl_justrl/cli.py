"""`trl-justrl <command>` (also `python -m trl_justrl`): training, cluster planning and launching, the vLLM server
command, evaluation, plots and the shipped recipes, each with its own `--help`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

PROG = "trl-justrl"
# command -> (module, its entry function(argv, prog=...), one line of help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("trl_justrl.train", "cli",
              "Train from a recipe: --config NAME|PATH [--key value ...] "
              "(several processes: accelerate launch -m trl_justrl.train ...)."),
    "plan": ("trl_justrl.cluster.plan", "main",
             "Plan a cluster layout: which GPUs serve vLLM and train, the batch, the budget, the commands."),
    "launch": ("trl_justrl.cluster.launcher", "main",
               "Run this node's share of a planned run: launch {multinode,slurm} [--dry-run]."),
    "serve": ("trl_justrl.cluster.serve", "main",
              "Start (or print) the vLLM server for a recipe, as TRL's server mode needs it."),
    "evaluate": ("trl_justrl.evaluation.cli", "main",
                 "Evaluate a checkpoint as a paper did (JustRL's nine benchmarks, or --protocol open-rs)."),
    "plot": ("trl_justrl.reporting.plot", "main", "Draw a run's training dynamics from its trainer_state.json."),
    "report": ("trl_justrl.report", "main",
               "Write one HTML page about a run beside the paper: report RUN_DIR [--eval EVAL_DIR]."),
    "recipes": ("trl_justrl.cli", "list_recipes", "List the shipped recipes and accelerate configs (usable by name)."),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help for each)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def list_recipes(argv: Sequence[str] = (), prog: str = f"{PROG} recipes") -> int:
    """Print the shipped recipes and accelerate configs with their paths."""
    from .recipes import ACCELERATE, HERE, shipped_accelerate_configs, shipped_recipes

    if any(arg in ("-h", "--help") for arg in argv):
        print(f"usage: {prog}\n\n{COMMANDS['recipes'][2]}")
        return 0
    print("recipes (--config NAME):")
    print("\n".join(f"  {name:<40} {HERE / (name + '.yaml')}" for name in shipped_recipes()))
    print("accelerate configs (--accelerate-config NAME):")
    print("\n".join(f"  {name:<40} {ACCELERATE / (name + '.yaml')}" for name in shipped_accelerate_configs()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{PROG}: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[command]
    result = getattr(importlib.import_module(module), function)(rest, prog=f"{PROG} {command}")
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
