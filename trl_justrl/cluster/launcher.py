"""Cluster launchers behind `launch/multinode.sh` and `launch/slurm/train.slurm`.

Both read their cluster from the environment, ask the planner (`trl_justrl.cluster.plan`) for the commands, and
either print every node's commands (`--dry-run`) or run this node's. A layout that cannot reproduce the recipe's
batch, a contradicting accelerate config or a missing recipe fails here, before any GPU is used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from ..recipes import add_config_option, config_option
from ..run_services.credentials import refuse_secrets
from ..run_services.preemption import EXIT_REQUEUE, adopt_orphans, adopted_children, forwarding_signals
from ..run_services.run_folder import alive
from .plan import (
    DEFAULT_ACCELERATE_CONFIG,
    DEFAULT_MAIN_PORT,
    DEFAULT_RECIPE,
    DEFAULT_VLLM_PORT,
    ClusterPlan,
    Command,
    LaunchSettings,
    PlanError,
    format_plan,
    launch_commands,
    make_plan,
)

SERVER_STOP_GRACE_S = 30
DEFAULT_GPUS_PER_NODE = 8  # when neither the environment nor nvidia-smi says (dry runs on a login node)
DRY_RUN_SLURM_NODES = 5  # outside a job: the #SBATCH --nodes of launch/slurm/train.slurm


def local_gpu_count() -> int | None:
    """GPUs on this machine according to `nvidia-smi -L`, or None without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    count = sum(line.startswith("GPU ") for line in out.stdout.splitlines())
    return count or None


def _int_env(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise PlanError(f"Set the environment variable {name}.")
        return default
    try:
        return int(value.split("(")[0].split(":")[-1])  # SLURM writes e.g. "8(x4)" or "gpu:8"
    except ValueError as err:
        raise PlanError(f"Environment variable {name}={value!r} is not an integer.") from err


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    return _int_env(env, name) if env.get(name) not in (None, "") else None


def _common_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print every node's commands and exit")
    add_config_option(p, f"a shipped recipe's name or a recipe file (env RECIPE, default {DEFAULT_RECIPE})")
    p.add_argument("--accelerate-config", default=None,
                   help=f"accelerate config (env ACCELERATE_CONFIG, default {DEFAULT_ACCELERATE_CONFIG})")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if a checkpoint exists")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: extra launch/train.py arguments")
    return p


def _train_args(extra: Sequence[str]) -> tuple[str, ...]:
    """The training arguments after `--`; a token among them is refused before anything starts (credentials.py)."""
    extra = list(extra)
    try:
        refuse_secrets(extra)
    except ValueError as err:
        raise PlanError(str(err)) from None
    return tuple(extra[1:] if extra[:1] == ["--"] else extra)


def _plan_from_env(env: Mapping[str, str], nodes: int, gpus_per_node: int, recipe: str) -> ClusterPlan:
    plan = make_plan(
        nodes,
        gpus_per_node,
        _optional_int(env, "VLLM_GPUS"),
        recipe,
        _optional_int(env, "VLLM_TENSOR_PARALLEL_SIZE"),
        _int_env(env, "VLLM_DATA_PARALLEL_SIZE", 1),
    )
    if not plan.exact:
        raise PlanError(f"{format_plan(plan)}\n\nRefusing to launch: the layout cannot reproduce the recipe's batch.")
    return plan


def _settings(env: Mapping[str, str], hosts: list[str], accelerate_config: str | None, resume: bool,
              train_args: Sequence[str], **extra: str | None) -> LaunchSettings:
    """Launch settings from the launcher's options and the environment (MASTER_PORT, VLLM_PORT, ACCELERATE_CONFIG)."""
    return LaunchSettings(
        hosts=hosts,
        main_port=_int_env(env, "MASTER_PORT", DEFAULT_MAIN_PORT),
        vllm_port=_int_env(env, "VLLM_PORT", DEFAULT_VLLM_PORT),
        accelerate_config=accelerate_config or env.get("ACCELERATE_CONFIG") or DEFAULT_ACCELERATE_CONFIG,
        resume=resume,
        train_args=tuple(train_args),
        **extra,
    )


# ---- plain multi-node (environment driven) -----------------------------------------------------------------------


def multinode_commands(env: Mapping[str, str], recipe: str | None, accelerate_config: str | None, resume: bool,
                       train_args: Sequence[str]) -> tuple[ClusterPlan, list[Command], int]:
    """Plan and commands from NNODES, NODE_RANK, GPUS_PER_NODE, MASTER_ADDR, TRAIN_MASTER_ADDR, ... ."""
    nodes = _int_env(env, "NNODES", 1)
    node_rank = _int_env(env, "NODE_RANK", 0)
    if not 0 <= node_rank < nodes:
        raise PlanError(f"NODE_RANK={node_rank} is outside 0..{nodes - 1} (NNODES={nodes}).")
    gpus = _int_env(env, "GPUS_PER_NODE", local_gpu_count() or DEFAULT_GPUS_PER_NODE)
    plan = _plan_from_env(env, nodes, gpus, recipe or env.get("RECIPE") or DEFAULT_RECIPE)
    master = env.get("MASTER_ADDR") or ("127.0.0.1" if nodes == 1 else None)
    if master is None:
        raise PlanError("Set MASTER_ADDR to the address of node 0 (NODE_RANK=0).")
    hosts = [master] + [f"node{i}" for i in range(1, nodes)]
    train_master = master
    if plan.topology.mode == "server" and nodes > 1:
        train_master = env.get("TRAIN_MASTER_ADDR")
        if not train_master:
            raise PlanError(
                "Node 0 serves vLLM, so training machine rank 0 is node 1: set TRAIN_MASTER_ADDR to node 1's "
                "address (MASTER_ADDR stays node 0's, where the vLLM server listens)."
            )
        hosts[1] = train_master
    settings = _settings(env, hosts, accelerate_config, resume, train_args, train_main_address=train_master)
    return plan, launch_commands(plan, settings), node_rank


def run_node(commands: Sequence[Command], *, requeue_job: str | None = None, adopt: bool = False) -> int:
    """Start this node's background processes, run its foreground one, then stop the background ones.

    Each process runs in its own process group. SIGTERM / SIGUSR1 / SIGINT to the launcher reach every training
    process as SIGUSR1 (a clean stop: finish the update, save, exit 75; `accelerate launch` and torchrun's agent may
    die on it, their training processes do not), a second one as SIGTERM (stop at once); the launcher then waits until
    the whole group has exited, so nothing is left writing; with `adopt` (the command-line launchers) it also adopts
    and waits for training processes in sessions of their own whose launcher died (torchrun's workers), and takes
    their exit codes. Signals within 5 s of the first are one request. Inside SLURM (`requeue_job`), a stopped run
    is requeued with `scontrol requeue`; the launcher exits 75 (EXIT_REQUEUE), or a training process's failure code
    when one failed on the way (a full disk during the stop's save)."""
    adopted = adopt and adopt_orphans()
    for cmd in commands:
        if shutil.which(cmd.argv[0]) is None:
            hint = "pip install -e '.[vllm]'" if cmd.argv[0] == "vllm" else "pip install -e ."
            raise PlanError(f"{cmd.argv[0]!r} is not on PATH on this node ({hint}).")
    background: list[subprocess.Popen] = []
    foreground: list[subprocess.Popen] = []

    def forward(signum: int, request: int) -> None:
        sent = signal.SIGUSR1 if request == 1 else signal.SIGTERM
        print(f"[trl_justrl.cluster.launcher] {signal.Signals(signum).name}: sending {sent.name} to training",
              file=sys.stderr, flush=True)
        for proc in foreground:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sent)
        for pid in adopted_children({p.pid for p in background + foreground}) if adopted else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sent)

    code = 0
    orphan_codes: list[int] = []
    with forwarding_signals(forward) as received:
        try:
            for cmd in commands:
                print(f"[trl_justrl.cluster.launcher] node {cmd.node} {cmd.role}: {cmd.shell()}", flush=True)
                env = {**os.environ, **cmd.env}
                if cmd.background:
                    background.append(subprocess.Popen(cmd.argv, env=env, start_new_session=True))
                else:
                    proc = subprocess.Popen(cmd.argv, env=env, start_new_session=True)
                    foreground.append(proc)
                    code = proc.wait()
                    servers = {p.pid for p in background}
                    while alive(proc.pid, group=True):  # its children (the training processes) may still be saving
                        if adopted:  # an adopted process that exited stays in the group until it is reaped
                            orphan_codes += _reap_adopted(servers)
                        time.sleep(1.0)
                    while adopted and adopted_children(servers):  # in sessions of their own (torchrun's workers)
                        orphan_codes += _reap_adopted(servers)
                        time.sleep(0.5)
                    break
            else:
                for proc in background:  # nothing in the foreground: wait for the background processes
                    proc.wait()
                code = max((p.returncode or 0 for p in background), default=0)
        finally:
            for proc in background:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=SERVER_STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
    failures = [c for c in orphan_codes if c not in (0, EXIT_REQUEUE)]
    stopped = code == EXIT_REQUEUE or EXIT_REQUEUE in orphan_codes or (received and not orphan_codes)
    if failures:
        return failures[0]
    if stopped:
        if requeue_job:
            print(f"[trl_justrl.cluster.launcher] requeueing SLURM job {requeue_job}", file=sys.stderr, flush=True)
            subprocess.run(["scontrol", "requeue", requeue_job], check=False)
        return EXIT_REQUEUE
    return code


def _reap_adopted(exclude: set[int]) -> list[int]:
    """Reap the adopted processes (see run_node) that have exited; their exit codes."""
    codes = []
    for pid in adopted_children(exclude):
        with contextlib.suppress(ChildProcessError):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes.append(os.waitstatus_to_exitcode(status))
    return codes


def _cli(prog: str, body: Callable[[argparse.Namespace, Mapping[str, str]], int], argv: Sequence[str] | None,
         env: Mapping[str, str] | None) -> int:
    """Parse the launcher's arguments and run `body`; a PlanError becomes `error: ...` and exit status 2."""
    args = _common_parser(prog).parse_args(argv)
    args.recipe = config_option(args, prog)
    try:
        return body(args, os.environ if env is None else env)
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _multinode(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    plan, commands, node_rank = multinode_commands(env, args.recipe, args.accelerate_config, not args.no_resume,
                                                   _train_args(args.train_args))
    if args.dry_run:
        print(format_plan(plan, commands))
        print(f"\nThis node: NODE_RANK={node_rank}. Dry run: nothing was started.")
        return 0
    return run_node([c for c in commands if c.node == node_rank], adopt=True)


def multinode_main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    return _cli("launch/multinode.sh", _multinode, argv, env)


# ---- SLURM --------------------------------------------------------------------------------------------------------


def slurm_hosts(env: Mapping[str, str], nodes: int) -> list[str]:
    """The job's node names, in order (`scontrol show hostnames`), or placeholders outside a job (dry runs)."""
    nodelist = env.get("SLURM_JOB_NODELIST")
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if nodelist and scontrol:
        out = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        hosts = out.stdout.split()
        if len(hosts) != nodes:
            raise PlanError(f"SLURM_JOB_NODELIST={nodelist} expands to {len(hosts)} hosts, expected {nodes}.")
        return hosts
    return [f"node{i}" for i in range(nodes)]


def _srun(hosts: Sequence[str], inner: str) -> list[str]:
    """srun one task per host, running `inner` through bash (so $SLURM_PROCID expands on the node)."""
    return ["srun", f"--nodes={len(hosts)}", f"--ntasks={len(hosts)}", "--ntasks-per-node=1",
            f"--nodelist={','.join(hosts)}", "--overlap", "--kill-on-bad-exit=1", "bash", "-c", inner]


def slurm_commands(env: Mapping[str, str], recipe: str | None, accelerate_config: str | None, resume: bool,
                   train_args: Sequence[str]) -> tuple[ClusterPlan, list[Command], list[Command]]:
    """The per-node commands (for reading) and the srun steps that run them (for running)."""
    nodes = _int_env(env, "SLURM_JOB_NUM_NODES", _int_env(env, "NNODES", DRY_RUN_SLURM_NODES))
    gpus = _int_env(env, "SLURM_GPUS_ON_NODE", _int_env(env, "GPUS_PER_NODE", DEFAULT_GPUS_PER_NODE))
    plan = _plan_from_env(env, nodes, gpus, recipe or env.get("RECIPE") or DEFAULT_RECIPE)
    hosts = slurm_hosts(env, nodes)
    per_node = launch_commands(plan, _settings(env, hosts, accelerate_config, resume, train_args))
    steps: list[Command] = []
    one_line = _settings(env, hosts, accelerate_config, resume, train_args, machine_rank_expr="$SLURM_PROCID")
    for cmd in launch_commands(plan, one_line):
        step_hosts = [cmd.host] if cmd.role == "vllm" else [hosts[n] for n in plan.topology.training_nodes]
        steps.append(Command(cmd.node, ",".join(step_hosts), cmd.role, {},
                             _srun(step_hosts, cmd.exec_line()),
                             background=cmd.role == "vllm"))
    return plan, per_node, steps


def _slurm(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    plan, per_node, steps = slurm_commands(env, args.recipe, args.accelerate_config, not args.no_resume,
                                           _train_args(args.train_args))
    if args.dry_run:
        print(format_plan(plan, per_node))
        print("\nsrun steps (the job runs these; $SLURM_PROCID is each training node's machine rank)")
        for step in steps:
            print(f"  {step.role}{' [background]' if step.background else ''}: {step.shell()}")
        print("\nDry run: nothing was started.")
        return 0
    if "SLURM_JOB_ID" not in env:
        raise PlanError("Not inside a SLURM job: submit with `sbatch launch/slurm/train.slurm` (or use --dry-run).")
    return run_node(steps, requeue_job=env["SLURM_JOB_ID"], adopt=True)


def slurm_main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    return _cli("launch/slurm/train.slurm", _slurm, argv, env)


def main(argv: Sequence[str] | None = None, prog: str = "python -m trl_justrl.cluster.launcher") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: {prog} {{multinode,slurm}} [--dry-run] [...]\n\n{__doc__.splitlines()[0]} "
              f"({prog} multinode --help, {prog} slurm --help)")
        return 0
    if not argv or argv[0] not in ("multinode", "slurm"):
        print(f"usage: {prog} {{multinode,slurm}} [--dry-run] [...]", file=sys.stderr)
        return 2
    return (multinode_main if argv[0] == "multinode" else slurm_main)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
