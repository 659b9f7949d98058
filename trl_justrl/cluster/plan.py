"""Cluster planner (`python -m trl_justrl.cluster.plan`): which GPUs serve vLLM and which train, the TRL batch
geometry, the budget and the launch commands the launchers run (so their dry runs print exactly what would run).

Layout (TRL's server mode): one vLLM server on the first GPUs of node 0 (its client talks to one host and port). On
one node the other GPUs train; on several, node 0 only serves (accelerate starts as many processes on every
training node) and the others train. `--vllm-gpus 0` colocates vLLM in the training processes instead.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers.trainer_utils import SaveStrategy

from ..policy_update.geometry import (
    BatchGeometry,
    BatchGeometryError,
    PromptBatch,
    compute_batch_geometry,
    rollout_context,
    server_context,
)
from ..policy_update.packing import check_packing_backend
from ..recipes import add_config_option, config_option, find_accelerate_config, find_recipe
from ..reporting.budget import (
    PLANNING_BYTES_PER_PARAMETER,
    decoder_parameters,
    disk_estimate,
    kept_checkpoints,
    paper_budget_tokens,
)

DEFAULT_RECIPE = "justrl_deepseek_1.5b"  # a shipped recipe's name, or a path (trl_justrl.recipes)
DEFAULT_ACCELERATE_CONFIG = "zero2"  # a shipped accelerate config's name, or a path
TRAIN_MODULE = "trl_justrl.train"  # `accelerate launch -m trl_justrl.train`: works from a checkout and an install
DEFAULT_MAIN_PORT = 29500
DEFAULT_VLLM_PORT = 8000
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # TRL's `trl vllm-serve` default
# vLLM's tensor parallel size must divide the attention heads: both paper models (Qwen2 1.5B) have 12, so 1, 2 or 4.
# The default serving size is therefore at most 4 GPUs; TRL 1.16 serves dense models without data parallelism.
DEFAULT_MAX_VLLM_GPUS = 4
VLLM_EXTENSION = "trl_justrl.generation.vllm_extension.WeightFolderExtension"  # loads the `disk` transport's folders
VLLM_SERVER_ENV = {"VLLM_SERVER_DEV_MODE": "1"}  # TRL's weight-transfer endpoints live behind vLLM's dev mode


class PlanError(ValueError):
    """The cluster description or the files it names are unusable (raised before anything is launched)."""


# ---- the recipe's batch ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeBatch(PromptBatch):
    """What the planner needs from a recipe: its settings as training reads them (recipe_reader)."""

    path: str | None
    model: str | None
    prompts_per_step: int
    prompts_per_update: int
    num_generations: int
    max_micro_batch: int | None  # None: one micro-batch per update share (packed forwards)
    max_prompt_length: int
    max_completion_length: int
    max_steps: int | None  # optimizer updates (TRL's max_steps), None when the recipe trains by epochs
    trainer: str  # the recipe's `trainer` key
    vllm_gpus: int | None = None  # the recipe's preferred number of serving GPUs (`vllm_gpus` key), if any
    vllm_gpu_memory_utilization: float | None = None  # the recipe's `vllm_gpu_memory_utilization`, if set
    validation_max_new_tokens: int | None = None  # the validation response cap when the recipe validates, else None
    max_tokens_per_microbatch: int | None = None  # packed forwards (JustRLConfig): an update's share is one micro-batch
    save_total_limit: int | None = None  # checkpoints kept besides the best validation one (None: all)
    save_every_rl_steps: int | None = None  # checkpoint interval in training steps, when the recipe gives it so
    save_steps: float | None = None  # checkpoint interval in optimizer updates (TRL's field, as the config maps it)
    save_only_model: bool = False

    @property
    def max_context(self) -> int:
        """Prompt + completion cap (geometry.rollout_context): the 16K context in the paper."""
        return rollout_context(self.max_prompt_length, self.max_completion_length)

    @property
    def server_context(self) -> int:
        """The vLLM server's max_model_len (geometry.server_context, as the run's config computes it)."""
        return server_context(self.max_prompt_length, self.max_completion_length, self.validation_max_new_tokens)

    @classmethod
    def from_recipe(cls, path: str | Path | None) -> RecipeBatch:
        """The batch of the recipe at `path` (None: the config classes' defaults), read by the one reader of
        recipes as training reads it."""
        from ..recipe_reader import read_recipe

        try:
            settings = read_recipe(["--config", str(path)] if path is not None else [], to_train=False)
        except PlanError:
            raise
        except (ValueError, TypeError, FileNotFoundError, yaml.YAMLError) as err:
            raise PlanError(f"Recipe {path}: {err}") from err
        return cls.from_settings(settings)

    @classmethod
    def from_settings(cls, settings: Any) -> RecipeBatch:
        """What the planner needs from a read recipe (recipe_reader.RecipeSettings)."""
        args, path, trainer = settings.training, settings.path, settings.script.trainer
        if args.batch_geometry is None:
            raise PlanError(
                f"Recipe {path} gives no prompts_per_step / prompts_per_update (null or unset); the planner needs "
                "the recipe's batch in prompts per step and per update (it maps them onto TRL's batch fields for "
                "each layout)."
            )
        for name in ("max_prompt_length", "max_completion_length"):
            if getattr(args, name) is None:
                raise PlanError(
                    f"Recipe {path}: {name} is null or unset (trainer {trainer!r} has no default for it); the planner "
                    "sizes the vLLM server's context and the compute budget from max_prompt_length + "
                    "max_completion_length, so the recipe must give both."
                )
        memory = "vllm_gpu_memory_utilization"  # the recipe's own, for the server, only when it gives one
        by_steps = args.save_strategy == SaveStrategy.STEPS
        return cls(
            path=path,
            model=settings.model.model_name_or_path,
            prompts_per_step=args.prompts_per_step,
            prompts_per_update=args.prompts_per_update,
            num_generations=args.num_generations,
            max_micro_batch=args.batch_geometry.max_micro_batch,
            max_prompt_length=args.max_prompt_length,
            max_completion_length=args.max_completion_length,
            max_steps=args.max_steps if args.max_steps > 0 else None,
            trainer=trainer,
            vllm_gpus=int(settings.layout["vllm_gpus"]) if settings.layout.get("vllm_gpus") is not None else None,
            vllm_gpu_memory_utilization=getattr(args, memory) if memory in settings.given else None,
            validation_max_new_tokens=args.validation_response_cap,
            max_tokens_per_microbatch=getattr(args, "max_tokens_per_microbatch", None),
            save_total_limit=args.save_total_limit,
            save_every_rl_steps=args.save_every_rl_steps if by_steps else None,
            save_steps=args.save_steps if by_steps else None,
            save_only_model=args.save_only_model,
        )

    def geometry(self, world_size: int) -> BatchGeometry:
        return compute_batch_geometry(
            world_size=world_size,
            prompts_per_step=self.prompts_per_step,
            prompts_per_update=self.prompts_per_update,
            num_generations=self.num_generations,
            max_micro_batch=self.max_micro_batch,
        )


# ---- topology ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """Which GPU of which node serves vLLM, trains, or idles."""

    nodes: int
    gpus_per_node: int
    vllm_gpus: int  # 0: vLLM colocated in the training processes
    vllm_tensor_parallel_size: int
    vllm_data_parallel_size: int

    @property
    def mode(self) -> str:
        return "server" if self.vllm_gpus else "colocate"

    @property
    def training_nodes(self) -> list[int]:
        if self.vllm_gpus and self.nodes > 1:
            return list(range(1, self.nodes))
        return list(range(self.nodes))

    @property
    def training_gpus_per_node(self) -> int:
        if self.vllm_gpus and self.nodes == 1:
            return self.gpus_per_node - self.vllm_gpus
        return self.gpus_per_node

    @property
    def training_processes(self) -> int:
        return len(self.training_nodes) * self.training_gpus_per_node

    def gpu_roles(self, node: int) -> dict[str, list[int]]:
        """GPU ids of `node` by role: 'vllm', 'train' and 'idle'."""
        gpus = list(range(self.gpus_per_node))
        roles: dict[str, list[int]] = {"vllm": [], "train": [], "idle": []}
        if self.vllm_gpus and node == 0:
            roles["vllm"] = gpus[: self.vllm_gpus]
            rest = gpus[self.vllm_gpus :]
            roles["train" if self.nodes == 1 else "idle"] = rest
        else:
            roles["train"] = gpus
        return roles

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "mode": self.mode,
            "training_nodes": self.training_nodes,
            "training_gpus_per_node": self.training_gpus_per_node,
            "training_processes": self.training_processes,
            "nodes_detail": [{"node": n, **self.gpu_roles(n)} for n in range(self.nodes)],
        }


def default_vllm_gpus(nodes: int, gpus_per_node: int) -> int:
    """Serving GPUs when not given: half of a single node, or (up to 4) GPUs of the first of several nodes."""
    if nodes == 1:
        return min(DEFAULT_MAX_VLLM_GPUS, gpus_per_node // 2)
    return min(DEFAULT_MAX_VLLM_GPUS, gpus_per_node)


def make_topology(
    nodes: int,
    gpus_per_node: int,
    vllm_gpus: int | None = None,
    vllm_tensor_parallel_size: int | None = None,
    vllm_data_parallel_size: int = 1,
) -> Topology:
    for name, value in (("nodes", nodes), ("gpus_per_node", gpus_per_node)):
        if value < 1:
            raise PlanError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    if vllm_gpus is None:
        vllm_gpus = default_vllm_gpus(nodes, gpus_per_node)
    if vllm_gpus < 0:
        raise PlanError(f"--vllm-gpus must be 0 (colocated generation) or positive, got {vllm_gpus}.")
    if vllm_gpus > gpus_per_node:
        raise PlanError(
            f"--vllm-gpus {vllm_gpus} exceeds the {gpus_per_node} GPUs of a node: TRL's server mode talks to one vLLM "
            "server, which serves from one node."
        )
    if nodes == 1 and vllm_gpus == gpus_per_node:
        raise PlanError(
            f"With one node of {gpus_per_node} GPUs and --vllm-gpus {vllm_gpus}, no GPU is left to train. Serve on "
            f"fewer GPUs, or use --vllm-gpus 0 (vLLM colocated in the training processes)."
        )
    if vllm_gpus:
        if vllm_data_parallel_size < 1 or vllm_gpus % vllm_data_parallel_size:
            raise PlanError(
                f"--vllm-data-parallel-size {vllm_data_parallel_size} must divide --vllm-gpus {vllm_gpus}."
            )
        tp = vllm_tensor_parallel_size or vllm_gpus // vllm_data_parallel_size
        if tp * vllm_data_parallel_size != vllm_gpus:
            raise PlanError(
                f"vLLM tensor parallel {tp} x data parallel {vllm_data_parallel_size} must equal --vllm-gpus "
                f"{vllm_gpus}."
            )
    else:
        tp, vllm_data_parallel_size = 0, 0
    return Topology(nodes, gpus_per_node, vllm_gpus, tp, vllm_data_parallel_size)


# ---- the plan ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alternative:
    """A layout that reproduces the batch exactly, offered when the requested one cannot."""

    description: str
    nodes: int
    gpus_per_node: int
    vllm_gpus: int
    training_processes: int

    def planner_args(self) -> str:
        return f"--nodes {self.nodes} --gpus-per-node {self.gpus_per_node} --vllm-gpus {self.vllm_gpus}"


@dataclass
class ClusterPlan:
    topology: Topology
    recipe: RecipeBatch
    geometry: BatchGeometry | None
    error: str | None
    alternatives: list[Alternative] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Whether this layout reproduces the recipe's batch exactly."""
        return self.geometry is not None

    @property
    def rl_steps(self) -> int | None:
        """Training steps (generation batches) of the recipe's run, from its max_steps in optimizer updates."""
        if self.recipe.max_steps is None:
            return None
        return self.recipe.max_steps // self.recipe.updates_per_step

    def disk(self) -> dict[str, Any]:
        """What the run's checkpoints take: a planning bound (PLANNING_BYTES_PER_PARAMETER) from the model's config
        when it can be read (locally or from the Hub), else parameters and sizes None."""
        parameters = _parameters(self.recipe.model)
        saves = None
        if self.rl_steps is not None and self.recipe.save_every_rl_steps:
            saves = self.rl_steps // self.recipe.save_every_rl_steps
        elif self.recipe.max_steps is not None and self.recipe.save_steps and self.recipe.save_steps >= 1:
            saves = self.recipe.max_steps // int(self.recipe.save_steps)
        kept = kept_checkpoints(self.recipe.save_total_limit, saves)
        one = None
        if parameters is not None:
            per_parameter = 2 if self.recipe.save_only_model else PLANNING_BYTES_PER_PARAMETER
            one = parameters * per_parameter
        return {"parameters": parameters, "checkpoint_bytes": one, "saves": saves, "kept": kept,
                "save_total_limit": self.recipe.save_total_limit,
                "kept_bytes": None if one is None or kept is None else one * kept}

    def budget(self) -> dict[str, Any]:
        steps = self.rl_steps
        tokens = None
        if steps is not None:
            tokens = paper_budget_tokens(
                steps, self.recipe.prompts_per_step, self.recipe.num_generations, self.recipe.max_context
            )
        return {
            "formula": "steps x prompts per step x rollouts x max context",
            "steps": steps,
            "prompts_per_step": self.recipe.prompts_per_step,
            "rollouts": self.recipe.num_generations,
            "max_context": self.recipe.max_context,
            "tokens": tokens,
        }

    def to_dict(self) -> dict[str, Any]:
        recipe = asdict(self.recipe)
        for name in ("max_context", "updates_per_step", "completions_per_step", "completions_per_update"):
            recipe[name] = getattr(self.recipe, name)
        return {
            "topology": self.topology.to_dict(),
            "recipe": recipe,
            "exact": self.exact,
            "geometry": self.geometry.to_dict() if self.geometry else None,
            "error": self.error,
            "alternatives": [asdict(a) | {"planner_args": a.planner_args()} for a in self.alternatives],
            "budget": self.budget(),
            "disk": self.disk(),
        }


@functools.cache
def _parameters(model: str | None) -> int | None:
    """The model's parameter count from its config as found locally (a folder, or the Hub cache: planning never
    waits on the network; reporting.budget.decoder_parameters), None when it is not there."""
    if not model:
        return None
    from transformers import AutoConfig

    try:
        return decoder_parameters(AutoConfig.from_pretrained(model, local_files_only=True).get_text_config())
    except Exception:  # noqa: BLE001 - offline, gated, unknown architecture: the plan says "unknown"
        return None


def _valid(recipe: RecipeBatch, world_size: int) -> bool:
    try:
        recipe.geometry(world_size)
    except BatchGeometryError:
        return False
    return True


def _alternatives(topology: Topology, recipe: RecipeBatch) -> list[Alternative]:
    """Nearest layouts that reproduce the batch: fewer / more training nodes, another split, or colocation."""
    g, n, k = topology.gpus_per_node, topology.nodes, topology.vllm_gpus
    found: list[Alternative] = []
    if k and n > 1:
        train_nodes = n - 1
        below = next((t for t in range(train_nodes - 1, 0, -1) if _valid(recipe, t * g)), None)
        above = next((t for t in range(train_nodes + 1, 64 * train_nodes + 1) if _valid(recipe, t * g)), None)
        for t in (above, below):
            if t is not None:
                found.append(Alternative(
                    f"{t + 1} nodes: node 0 serves vLLM on {k} GPUs, {t} nodes train on {t * g} GPUs",
                    t + 1, g, k, t * g,
                ))
    if k and n == 1:
        for k2 in sorted(range(1, g), key=lambda x: (abs(x - k), x)):
            if k2 != k and _valid(recipe, g - k2):
                found.append(Alternative(f"1 node: {k2} GPUs serve vLLM, {g - k2} train", 1, g, k2, g - k2))
                break
    if k and _valid(recipe, n * g):
        found.append(Alternative(
            f"{n} node(s), vLLM colocated in the training processes: {n * g} GPUs train and generate", n, g, 0, n * g,
        ))
    if not k:
        for t in (n - 1, n + 1):
            if t >= 1 and _valid(recipe, t * g):
                found.append(Alternative(f"{t} node(s), vLLM colocated: {t * g} GPUs", t, g, 0, t * g))
    return found


def make_plan(
    nodes: int,
    gpus_per_node: int,
    vllm_gpus: int | None = None,
    recipe: str | Path | None = DEFAULT_RECIPE,
    vllm_tensor_parallel_size: int | None = None,
    vllm_data_parallel_size: int = 1,
) -> ClusterPlan:
    """Plan a run of `recipe` on `nodes` x `gpus_per_node` GPUs (see the module docstring for the layout rules)."""
    batch = RecipeBatch.from_recipe(resolve_recipe(recipe) if recipe is not None else None)
    if vllm_gpus is None:
        vllm_gpus = batch.vllm_gpus  # the recipe's own layout (e.g. Open-RS: 1 of 4 GPUs serves), if it names one
    topology = make_topology(nodes, gpus_per_node, vllm_gpus, vllm_tensor_parallel_size, vllm_data_parallel_size)
    try:
        geometry, error = batch.geometry(topology.training_processes), None
    except BatchGeometryError as err:
        geometry, error = None, str(err)
    plan = ClusterPlan(topology, batch, geometry, error)
    if error is not None:
        plan.alternatives = _alternatives(topology, batch)
    return plan


def load_yaml_mapping(file: Path, what: str, hint: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; PlanError naming the file otherwise."""
    if not file.is_file():
        raise PlanError(f"{what} {file} not found{hint}.")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise PlanError(f"{what} {file} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise PlanError(f"{what} {file} must be a mapping of option: value, got {type(values).__name__}.")
    return values


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe by path or shipped name; PlanError listing the shipped ones otherwise."""
    try:
        return find_recipe(name_or_path)
    except FileNotFoundError as err:
        raise PlanError(str(err)) from err


# ---- accelerate configs ------------------------------------------------------------------------------------------

LAUNCHER_FILLED_KEYS = ("num_machines", "num_processes", "machine_rank", "main_process_ip", "main_process_port")


def check_accelerate_config(path: str | Path, num_machines: int, num_processes: int) -> dict[str, Any]:
    """Load an accelerate config and refuse one that contradicts the plan's machine or process counts."""
    try:
        file = find_accelerate_config(path)
    except FileNotFoundError as err:
        raise PlanError(str(err)) from err
    config = load_yaml_mapping(file, "accelerate config", "")
    expected = {"num_machines": num_machines, "num_processes": num_processes}
    for key, value in expected.items():
        if key in config and config[key] != value:
            raise PlanError(
                f"accelerate config {file} sets {key}: {config[key]}, but the plan has {value} ({num_machines} "
                f"training node(s), {num_processes} training processes). Remove {key} from the file: the launchers "
                f"pass {', '.join(LAUNCHER_FILLED_KEYS)}."
            )
    if config.get("use_cpu"):
        raise PlanError(f"accelerate config {file} sets use_cpu: true; the cluster launchers train on GPUs.")
    kind = config.get("distributed_type")
    if kind not in ("MULTI_GPU", "DEEPSPEED", "FSDP", "NO"):
        raise PlanError(
            f"accelerate config {file}: distributed_type {kind!r} is not one of MULTI_GPU, DEEPSPEED, FSDP, NO."
        )
    if kind == "DEEPSPEED" and num_machines > 1:
        launcher = (config.get("deepspeed_config") or {}).get("deepspeed_multinode_launcher", "pdsh")
        if launcher != "standard":
            raise PlanError(
                f"accelerate config {file}: deepspeed_multinode_launcher is {launcher!r}; set it to 'standard' so that "
                "every node starts its own processes (as srun and launch/multinode.sh do)."
            )
    return config


# ---- commands ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One process to start on one node."""

    node: int
    host: str
    role: str  # "vllm" or "train"
    env: dict[str, str]
    argv: list[str]
    background: bool = False  # started before, and stopped after, the node's foreground process

    def shell(self) -> str:
        """The command as one shell line (`VAR=value ... argv`); `$VAR` arguments stay unquoted to expand there."""
        prefix = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join([*prefix, *map(_quote, self.argv)])

    def exec_line(self) -> str:
        """`exec env VAR=value ... argv`, for `bash -c` (srun steps)."""
        return "exec " + " ".join(["env", *(shlex.quote(f"{k}={v}") for k, v in self.env.items()),
                                   *map(_quote, self.argv)])


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"\$[A-Z_][A-Z0-9_]*", arg) else shlex.quote(arg)


@dataclass(frozen=True)
class LaunchSettings:
    """What the commands need besides the plan: addresses, ports, files and extra training arguments."""

    hosts: list[str]  # one address per node, node 0 first
    train_main_address: str | None = None  # rendezvous address of training machine rank 0 (default: its host)
    main_port: int = DEFAULT_MAIN_PORT
    vllm_port: int = DEFAULT_VLLM_PORT
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    accelerate_config: str = DEFAULT_ACCELERATE_CONFIG
    resume: bool = True  # `--resume_from_checkpoint latest`: continue from the newest checkpoint, if any
    train_args: tuple[str, ...] = ()
    machine_rank_expr: str | None = None  # e.g. "$SLURM_PROCID": one command for all training nodes (srun)


def vllm_serve_argv(
    model: str,
    *,
    tensor_parallel_size: int,
    data_parallel_size: int,
    max_model_len: int,
    port: int = DEFAULT_VLLM_PORT,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    host: str = "0.0.0.0",
    dtype: str = "auto",
    enforce_eager: bool = False,
    nccl: bool = True,
) -> list[str]:
    """`vllm serve` the way TRL 1.16 expects, built by `trl vllm-serve`'s own `build_command`, plus the project's
    worker extension (the `disk` weight transport loads through it).

    TRL adds the NCCL weight-transfer engine (`--weight-transfer-config`; dropped with `nccl=False`, for a CPU server),
    processed logprobs and unlimited logprobs; the server also needs `VLLM_SERVER_DEV_MODE=1` in its environment (see
    `VLLM_SERVER_ENV`).
    """
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    args = ScriptArguments(
        model=model,
        host=host,
        port=port,
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        dtype=dtype,
        enforce_eager=enforce_eager,
        enable_prefix_caching=True,  # the 8 rollouts of a prompt share its prefix
    )
    command = build_command(args)
    command = ["vllm", *command[command.index("serve") :], "--worker-extension-cls", VLLM_EXTENSION]
    if not nccl:
        at = command.index("--weight-transfer-config")
        del command[at : at + 2]
    return command


def launch_commands(plan: ClusterPlan, settings: LaunchSettings) -> list[Command]:
    """Every process of every node, in start order. Raises PlanError when the plan is not exact."""
    if not plan.exact:
        raise PlanError(f"This layout cannot reproduce the recipe's batch: {plan.error}")
    topo, recipe = plan.topology, plan.recipe
    if len(settings.hosts) != topo.nodes:
        raise PlanError(f"{topo.nodes} nodes need {topo.nodes} host addresses, got {len(settings.hosts)}.")
    if recipe.path is None:
        raise PlanError("Launch commands need a recipe file (--config).")
    accelerate = check_accelerate_config(settings.accelerate_config, len(topo.training_nodes),
                                         topo.training_processes)
    if recipe.max_tokens_per_microbatch is not None:
        try:
            check_packing_backend(deepspeed=accelerate.get("distributed_type") == "DEEPSPEED")
        except ValueError as err:
            raise PlanError(f"Recipe {recipe.path} with {settings.accelerate_config}: {err}") from err
    commands: list[Command] = []
    vllm_host = settings.hosts[0]
    if topo.mode == "server":
        if not recipe.model:
            raise PlanError(f"Recipe {recipe.path} names no model_name_or_path for the vLLM server.")
        gpus = topo.gpu_roles(0)["vllm"]
        commands.append(Command(
            node=0,
            host=settings.hosts[0],
            role="vllm",
            env={"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), **VLLM_SERVER_ENV},
            argv=vllm_serve_argv(
                recipe.model,
                tensor_parallel_size=topo.vllm_tensor_parallel_size,
                data_parallel_size=topo.vllm_data_parallel_size,
                max_model_len=recipe.server_context,
                port=settings.vllm_port,
                gpu_memory_utilization=recipe.vllm_gpu_memory_utilization or settings.gpu_memory_utilization,
            ),
            background=topo.nodes == 1,
        ))
    training_nodes = topo.training_nodes
    main_address = settings.train_main_address or settings.hosts[training_nodes[0]]
    for machine_rank, node in enumerate(training_nodes):
        rank = settings.machine_rank_expr or str(machine_rank)
        argv = [
            "accelerate", "launch",
            "--config_file", str(find_accelerate_config(settings.accelerate_config)),
            "--num_machines", str(len(training_nodes)),
            "--num_processes", str(topo.training_processes),
            "--machine_rank", rank,
            "--main_process_ip", main_address,
            "--main_process_port", str(settings.main_port),
            "-m", TRAIN_MODULE, "--config", recipe.path,
        ]
        if topo.mode == "server":
            argv += ["--use_vllm", "true", "--vllm_mode", "server",
                     "--vllm_server_host", "127.0.0.1" if topo.nodes == 1 else vllm_host,
                     "--vllm_server_port", str(settings.vllm_port)]
        else:
            argv += ["--use_vllm", "true", "--vllm_mode", "colocate"]
        if settings.resume:
            argv += ["--resume_from_checkpoint", "latest"]
        argv += list(settings.train_args)
        env = {}
        if topo.nodes == 1 and topo.mode == "server":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, topo.gpu_roles(0)["train"]))
        commands.append(Command(node, settings.hosts[node], "train", env, argv))
        if settings.machine_rank_expr:  # one command line serves every training node
            break
    return commands


# ---- text output -------------------------------------------------------------------------------------------------


def _ranges(ids: list[int]) -> str:
    return f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0])


def format_plan(plan: ClusterPlan, commands: list[Command] | None = None) -> str:
    topo, recipe = plan.topology, plan.recipe
    lines = [f"Cluster plan: {topo.nodes} node(s) x {topo.gpus_per_node} GPUs"
             + (f", recipe {recipe.path}" if recipe.path else ", recipe defaults")
             + f" (trainer: {recipe.trainer})"]
    lines.append("")
    lines.append("Topology")
    for node in range(topo.nodes):
        roles = topo.gpu_roles(node)
        parts = []
        if roles["vllm"]:
            parts.append(f"GPUs {_ranges(roles['vllm'])} serve vLLM (tensor parallel {topo.vllm_tensor_parallel_size}"
                         f", data parallel {topo.vllm_data_parallel_size})")
        if roles["train"]:
            rank = topo.training_nodes.index(node)
            parts.append(f"GPUs {_ranges(roles['train'])} train (machine rank {rank})")
        if roles["idle"]:
            parts.append(f"GPUs {_ranges(roles['idle'])} idle")
        lines.append(f"  node {node}: " + "; ".join(parts))
    generation = ("a vLLM server (TRL server mode)" if topo.mode == "server"
                  else "vLLM colocated in every training process (TRL colocate mode)")
    lines.append(f"  {topo.training_processes} training processes; generation by {generation}")
    lines.append("")
    lines.append(f"Recipe batch: {recipe.prompts_per_step} prompts x {recipe.num_generations} rollouts = "
                 f"{recipe.completions_per_step:,} completions per step; {recipe.updates_per_step} updates of "
                 f"{recipe.prompts_per_update} prompts ({recipe.completions_per_update:,} completions) each")
    if plan.geometry is not None:
        g = plan.geometry
        lines.append(f"  reproduced exactly: per_device_train_batch_size {g.per_device_train_batch_size}, "
                     f"gradient_accumulation_steps {g.gradient_accumulation_steps}, steps_per_generation "
                     f"{g.steps_per_generation}, generation_batch_size {g.generation_batch_size:,}")
    else:
        lines.append(f"  NOT reproducible on this layout: {plan.error}")
        if plan.alternatives:
            lines.append("  Nearest layouts that reproduce it:")
            for alt in plan.alternatives:
                lines.append(f"    - {alt.description}   (plan: {alt.planner_args()})")
    if topo.mode == "server":
        context = f"vLLM max_model_len {recipe.server_context:,}"
        if recipe.validation_max_new_tokens is not None:
            context += (f" (validation on: prompt {recipe.max_prompt_length:,} + validation response "
                        f"{recipe.validation_max_new_tokens:,}; rollouts need {recipe.max_context:,})")
        else:
            context += f" (prompt {recipe.max_prompt_length:,} + completion {recipe.max_completion_length:,})"
        lines.append(f"  {context}")
    lines.append("")
    budget = plan.budget()
    if budget["tokens"] is not None:
        lines.append(f"Compute budget (the paper's count, {budget['formula']}): {budget['steps']:,} x "
                     f"{budget['prompts_per_step']} x {budget['rollouts']} x {budget['max_context']:,} = "
                     f"{budget['tokens']:.3g} tokens")
    else:
        lines.append("Compute budget: the recipe sets no max_steps, so the step count is unknown.")
    disk = plan.disk()
    if disk["checkpoint_bytes"] is None:
        lines.append(f"Disk: unknown here: the model's config.json is not on this machine (e.g. `hf download "
                     f"{recipe.model} config.json`, then plan again).")
    else:
        training_nodes = len(topo.training_nodes)
        content = "bf16 weights only" if recipe.save_only_model else "bf16 weights + fp32 AdamW state"
        limit = (f"save_total_limit {disk['save_total_limit']}, the best validation checkpoint included"
                 if disk["save_total_limit"] else "no save_total_limit: every save kept")
        lines.append(
            f"Disk ({disk['parameters'] / 1e9:.2f}B parameters; {content}): "
            f"{disk_estimate(disk['checkpoint_bytes'], disk['kept'])} in output_dir ({limit}"
            + (f"; {disk['saves']} saves in the run" if disk["saves"] else "") + ")"
            + (f"; with ZeRO / FSDP each of the {training_nodes} training nodes writes about 1/{training_nodes} of "
               "it" if training_nodes > 1 else ""))
    if commands:
        lines.append("")
        lines.append("Launch commands (one per node, in the environment where trl-justrl is installed)")
        for cmd in commands:
            tag = " [background]" if cmd.background else ""
            lines.append(f"  node {cmd.node} ({cmd.host}), {cmd.role}{tag}:")
            lines.append(f"    {cmd.shell()}")
    return "\n".join(lines)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument("--vllm-gpus", type=int, default=None,
                   help="GPUs serving vLLM on node 0 (default: the recipe's vllm_gpus, else half of a single node, "
                   "else up to 4); 0 = colocate")
    p.add_argument("--vllm-tensor-parallel-size", type=int, default=None)
    p.add_argument("--vllm-data-parallel-size", type=int, default=1)
    add_config_option(p, f"a shipped recipe's name or a recipe file (default {DEFAULT_RECIPE})")
    p.add_argument("--accelerate-config", default=DEFAULT_ACCELERATE_CONFIG,
                   help="a shipped accelerate config's name (ddp, zero2, zero3, fsdp2) or a file")
    p.add_argument("--hosts", default=None, help="comma-separated node addresses, node 0 first (default node0,...)")
    p.add_argument("--main-port", type=int, default=DEFAULT_MAIN_PORT)
    p.add_argument("--vllm-port", type=int, default=DEFAULT_VLLM_PORT)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--allow-deviation", action="store_true",
                   help="exit 0 even when the layout cannot reproduce the recipe's batch (default: exit 2, so "
                   "scripts can tell)")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m trl_justrl.cluster.plan") -> int:
    """Print the plan (text or --json); exit 2 on an unusable description, or on a layout that cannot reproduce the
    recipe's batch unless --allow-deviation."""
    args = _parser(prog).parse_args(argv)
    try:
        plan = make_plan(args.nodes, args.gpus_per_node, args.vllm_gpus, config_option(args, prog) or DEFAULT_RECIPE,
                         args.vllm_tensor_parallel_size, args.vllm_data_parallel_size)
        hosts = args.hosts.split(",") if args.hosts else [f"node{i}" for i in range(args.nodes)]
        commands = None
        if plan.exact:
            settings = LaunchSettings(hosts=hosts, main_port=args.main_port, vllm_port=args.vllm_port,
                                      accelerate_config=args.accelerate_config)
            commands = launch_commands(plan, settings)
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        out = plan.to_dict()
        out["commands"] = [asdict(c) | {"shell": c.shell()} for c in commands or []]
        print(json.dumps(out, indent=2))
    else:
        print(format_plan(plan, commands))
    if not plan.exact and not args.allow_deviation:
        print("error: this layout cannot reproduce the recipe's batch (see above); use one of the layouts offered. "
              "--allow-deviation only makes this plan exit 0 (no launch commands are made for it, and the "
              "launchers still refuse it).", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
