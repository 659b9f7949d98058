"""The cluster planner, the accelerate configs and the launchers' dry runs."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from trl_justrl.cluster import plan as plan_module
from trl_justrl.cluster.launcher import multinode_commands, multinode_main, slurm_commands, slurm_main
from trl_justrl.cluster.plan import (
    LaunchSettings,
    PlanError,
    check_accelerate_config,
    launch_commands,
    make_plan,
)
from trl_justrl.cluster.serve import main as serve_main
from trl_justrl.config import JustRLConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))
PAPER_RECIPE = "launch/recipes/justrl_deepseek_1.5b.yaml"
SECRET = secrets.token_hex(16)  # a stand-in token made at run time, so none is committed


def test_four_by_eight_with_a_serving_node_cannot_split_the_batch_and_proposes_valid_layouts():
    plan = make_plan(4, 8, recipe=PAPER_RECIPE)
    assert plan.topology.training_processes == 24 and plan.topology.gpu_roles(0)["vllm"] == [0, 1, 2, 3]
    assert not plan.exact and "512 completions" in plan.error and "24" in plan.error
    proposals = {(a.nodes, a.vllm_gpus, a.training_processes) for a in plan.alternatives}
    assert (5, 4, 32) in proposals  # one serving node + 32 training GPUs
    assert (3, 4, 16) in proposals
    assert (4, 0, 32) in proposals  # colocated generation on all 32 GPUs
    for alt in plan.alternatives:  # every proposal really is exact
        assert make_plan(alt.nodes, alt.gpus_per_node, alt.vllm_gpus, PAPER_RECIPE).exact
    with pytest.raises(PlanError, match="cannot reproduce"):
        launch_commands(plan, LaunchSettings(hosts=[f"n{i}" for i in range(4)]))


def test_five_nodes_reproduce_the_paper_batch_and_budget():
    plan = make_plan(5, 8, recipe=PAPER_RECIPE)
    g = plan.geometry
    assert plan.exact and g.world_size == 32
    assert (g.per_device_train_batch_size, g.gradient_accumulation_steps, g.steps_per_generation) == (1, 16, 64)
    assert g.completions_per_step == 2048 and g.completions_per_update == 512 and g.generation_batch_size == 2048
    budget = plan.budget()
    assert budget["steps"] == 4380 and budget["max_context"] == 1024 + 15360
    assert budget["tokens"] == 4380 * 256 * 8 * 16384
    assert 1.4e11 <= budget["tokens"] < 1.5e11  # the paper: "about 1.4e11"


@pytest.mark.parametrize("world_size", [1, 2, 4, 8, 16, 32, 64])
def test_planner_and_config_map_the_batch_identically(world_size, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    config = JustRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    config.generation_batch_size = config.steps_per_generation = None  # as before __post_init__
    config.per_device_train_batch_size = 1
    mapped = config._map_recipe_batch(world_size)  # what a run on `world_size` processes sets up
    planned = plan_module.RecipeBatch.from_recipe(REPO / PAPER_RECIPE).geometry(world_size)
    assert mapped == planned
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps, config.steps_per_generation) == (
        planned.per_device_train_batch_size, planned.gradient_accumulation_steps, planned.steps_per_generation)
    assert planned.per_device_train_batch_size * planned.gradient_accumulation_steps * world_size == 512
    assert config.save_steps == 50 * planned.updates_per_step == 200


def test_single_node_splits_serving_and_training_gpus():
    plan = make_plan(1, 8, recipe=PAPER_RECIPE)
    roles = plan.topology.gpu_roles(0)
    assert roles == {"vllm": [0, 1, 2, 3], "train": [4, 5, 6, 7], "idle": []} and plan.exact
    commands = launch_commands(plan, LaunchSettings(hosts=["127.0.0.1"]))
    serve, train = commands
    assert serve.background and serve.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert train.env["CUDA_VISIBLE_DEVICES"] == "4,5,6,7" and "--num_processes 4" in train.shell()
    assert "--vllm_server_host 127.0.0.1" in train.shell()


def test_impossible_single_node_split_proposes_another_split():
    plan = make_plan(1, 6, vllm_gpus=3, recipe=PAPER_RECIPE)
    assert not plan.exact
    assert any(a.nodes == 1 and a.training_processes in (2, 4) for a in plan.alternatives)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(nodes=0, gpus_per_node=8), "--nodes must be at least 1"),
        (dict(nodes=2, gpus_per_node=8, vllm_gpus=9), "exceeds the 8 GPUs"),
        (dict(nodes=1, gpus_per_node=4, vllm_gpus=4), "no GPU is left to train"),
        (dict(nodes=2, gpus_per_node=8, vllm_gpus=-1), "--vllm-gpus must be 0"),
        (dict(nodes=2, gpus_per_node=8, vllm_gpus=4, vllm_data_parallel_size=3), "must divide --vllm-gpus"),
    ],
)
def test_bad_cluster_descriptions_are_clear_errors(kwargs, message):
    with pytest.raises(PlanError, match=message):
        make_plan(recipe=PAPER_RECIPE, **kwargs)


def test_cli_text_and_json(capsys):
    assert plan_module.main(["--nodes", "4", "--gpus-per-node", "8"]) == 2  # scripts can tell
    printed = capsys.readouterr()
    assert "NOT reproducible" in printed.out and "--nodes 5 --gpus-per-node 8" in printed.out
    assert "1.47e+11" in printed.out and "--allow-deviation" in printed.err
    assert plan_module.main(["--nodes", "4", "--gpus-per-node", "8", "--allow-deviation"]) == 0
    assert "NOT reproducible" in capsys.readouterr().out
    assert plan_module.main(["--nodes", "5", "--gpus-per-node", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exact"] and data["geometry"]["completions_per_step"] == 2048
    assert data["geometry"]["completions_per_update"] == 512 and data["recipe"]["updates_per_step"] == 4
    assert [c["role"] for c in data["commands"]] == ["vllm", "train", "train", "train", "train"]
    assert plan_module.main(["--nodes", "1", "--gpus-per-node", "8", "--config", "nope.yaml"]) == 2
    assert "'nope.yaml' not found: neither a file nor a shipped recipe (shipped: demo_cpu" in capsys.readouterr().err


def test_server_command_is_the_one_trl_expects():
    plan = make_plan(5, 8, vllm_gpus=2, recipe=PAPER_RECIPE)
    serve = launch_commands(plan, LaunchSettings(hosts=[f"h{i}" for i in range(5)]))[0]
    line = serve.shell()
    assert serve.role == "vllm" and serve.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert "vllm serve deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" in line
    for part in ("--max-model-len 32768", "--tensor-parallel-size 2", "--data-parallel-size 1", "--port 8000",
                 "--gpu-memory-utilization 0.9", "--weight-transfer-config", "--host 0.0.0.0",
                 "--worker-extension-cls trl_justrl.generation.vllm_extension.WeightFolderExtension"):
        assert part in line


# ---- accelerate configs -------------------------------------------------------------------------------------------


def test_the_four_configs_are_shipped():
    assert {p.stem for p in CONFIGS} == {"ddp", "zero2", "zero3", "fsdp2"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize(("nodes", "training"), [(1, 4), (5, 32), (3, 16)])
def test_each_config_loads_and_matches_the_planned_process_counts(config, nodes, training):
    plan = make_plan(nodes, 8, recipe=PAPER_RECIPE)
    assert plan.topology.training_processes == training
    raw = yaml.safe_load(config.read_text())
    assert not set(raw) & set(plan_module.LAUNCHER_FILLED_KEYS), "process counts belong to the launchers"
    hosts = [f"10.0.0.{i + 1}" for i in range(nodes)]
    commands = launch_commands(plan, LaunchSettings(hosts=hosts, accelerate_config=str(config)))
    for machine_rank, cmd in enumerate(c for c in commands if c.role == "train"):
        assert cmd.argv[:2] == ["accelerate", "launch"]
        args = launch_command_parser().parse_args(cmd.argv[2:])
        args, _, _ = _validate_launch_command(args)  # accelerate's own merge of the file and the flags
        assert args.num_processes == training and args.num_machines == len(plan.topology.training_nodes)
        assert args.machine_rank == machine_rank and args.mixed_precision == "bf16"
        assert args.main_process_ip == hosts[plan.topology.training_nodes[0]]
        assert args.use_deepspeed == config.stem.startswith("zero") and args.use_fsdp == (config.stem == "fsdp2")
        if args.use_deepspeed:
            assert args.zero_stage == int(config.stem[-1]) and args.deepspeed_multinode_launcher == "standard"


def test_a_config_that_contradicts_the_node_count_is_refused(tmp_path):
    bad = tmp_path / "two_machines.yaml"
    bad.write_text(yaml.safe_dump({"distributed_type": "MULTI_GPU", "num_machines": 2, "mixed_precision": "bf16"}))
    with pytest.raises(PlanError, match=r"two_machines.yaml sets num_machines: 2, but the plan has 4"):
        check_accelerate_config(bad, num_machines=4, num_processes=32)
    pdsh = tmp_path / "pdsh.yaml"
    pdsh.write_text(yaml.safe_dump({"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 2}}))
    with pytest.raises(PlanError, match="deepspeed_multinode_launcher"):
        check_accelerate_config(pdsh, num_machines=4, num_processes=32)
    check_accelerate_config(pdsh, num_machines=1, num_processes=4)  # single node: fine
    with pytest.raises(PlanError, match="not found"):
        check_accelerate_config(tmp_path / "missing.yaml", 1, 1)


# ---- launchers ----------------------------------------------------------------------------------------------------


def _run_script(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    import sys

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"PYTHON": sys.executable} | env
    return subprocess.run(["bash", str(REPO / script), *args], env=full_env, capture_output=True, text=True,
                          timeout=120)


def test_multinode_dry_run_names_ranks_and_addresses():
    env = {"NNODES": "5", "NODE_RANK": "2", "GPUS_PER_NODE": "8", "MASTER_ADDR": "10.1.0.1",
           "TRAIN_MASTER_ADDR": "10.1.0.2", "MASTER_PORT": "29611", "HF_TOKEN": SECRET, "WANDB_API_KEY": SECRET}
    result = _run_script("launch/multinode.sh", env, "--dry-run", "--", "--run_name", "trial")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert SECRET not in out + result.stderr  # tokens stay in the environment
    assert "node 0 (10.1.0.1), vllm" in out and "--max-model-len 32768" in out
    for rank in range(4):
        assert f"--machine_rank {rank} --main_process_ip 10.1.0.2 --main_process_port 29611" in out
    assert out.count("--vllm_server_host 10.1.0.1") == 4 and out.count("--run_name trial") == 4
    assert "NODE_RANK=2" in out and "nothing was started" in out


def test_multinode_refuses_bad_layouts_before_launching(capsys):
    env = {"NNODES": "4", "GPUS_PER_NODE": "8", "MASTER_ADDR": "10.1.0.1", "TRAIN_MASTER_ADDR": "10.1.0.2"}
    assert multinode_main(["--dry-run"], env) == 2
    err = capsys.readouterr().err
    assert "cannot be split evenly over 24" in err and "Refusing to launch" in err
    env = {"NNODES": "5", "GPUS_PER_NODE": "8", "MASTER_ADDR": "10.1.0.1"}
    assert multinode_main(["--dry-run"], env) == 2 and "TRAIN_MASTER_ADDR" in capsys.readouterr().err
    assert multinode_main(["--dry-run"], env | {"NODE_RANK": "7", "TRAIN_MASTER_ADDR": "x"}) == 2
    assert "NODE_RANK=7 is outside 0..4" in capsys.readouterr().err
    assert multinode_main(["--dry-run"], env | {"TRAIN_MASTER_ADDR": "x", "GPUS_PER_NODE": "eight"}) == 2
    assert "GPUS_PER_NODE='eight' is not an integer" in capsys.readouterr().err


def test_colocated_multinode_uses_master_addr_for_training():
    env = {"NNODES": "4", "GPUS_PER_NODE": "8", "MASTER_ADDR": "10.1.0.1", "VLLM_GPUS": "0"}
    plan, commands, _ = multinode_commands(env, None, None, True, ())
    assert plan.topology.mode == "colocate" and [c.role for c in commands] == ["train"] * 4
    assert all("--main_process_ip 10.1.0.1" in c.shell() and "--vllm_mode colocate" in c.shell() for c in commands)


def test_slurm_dry_run_outside_a_job():
    result = _run_script("launch/slurm/train.slurm", {"NNODES": "3"}, "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --nodelist=node0" in out
    assert "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --nodelist=node1,node2" in out
    assert "--machine_rank $SLURM_PROCID" in out and "--resume_from_checkpoint latest" in out
    assert "--machine_rank 0 --main_process_ip node1" in out and "--machine_rank 1 --main_process_ip node1" in out


def test_slurm_uses_the_job_nodelist(tmp_path, capsys):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho gpu-a; echo gpu-b; echo gpu-c\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-c]", "SLURM_JOB_NUM_NODES": "3",
           "SLURM_GPUS_ON_NODE": "8"}
    plan, per_node, steps = slurm_commands(env, None, None, True, ())
    assert [c.host for c in per_node] == ["gpu-a", "gpu-b", "gpu-c"]
    assert "--vllm_server_host gpu-a" in per_node[1].shell() and "--main_process_ip gpu-b" in per_node[2].shell()
    vllm_step, train_step = steps
    assert vllm_step.background and "--nodelist=gpu-a" in vllm_step.argv
    assert "--nodelist=gpu-b,gpu-c" in train_step.argv and "$SLURM_PROCID" in train_step.argv[-1]
    assert slurm_main([], env) == 2 and "Not inside a SLURM job" in capsys.readouterr().err


def test_vllm_serve_launcher_dry_run():
    result = _run_script("launch/vllm_serve.sh", {}, "--dry-run", "--device", "cuda", "--tensor-parallel-size", "2",
                         "--port", "8123")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("VLLM_SERVER_DEV_MODE=1 ")
    assert "-m vllm.entrypoints.openai.api_server --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" in line
    for part in ("--port 8123", "--max-model-len 32768", "--tensor-parallel-size 2", "--weight-transfer-config",
                 "--worker-extension-cls trl_justrl.generation.vllm_extension.WeightFolderExtension"):
        assert part in line
    assert "--enforce-eager" not in line and "VLLM_CPU_KVCACHE_SPACE" not in line
    assert serve_main(["--dry-run", "--gpu-memory-utilization", "1.5"]) == 2


def test_a_cpu_server_is_eager_sized_for_the_recipe_and_finds_the_extension(capsys, tmp_path, monkeypatch,
                                                                            smollm2_path):
    monkeypatch.setenv("TRL_JUSTRL_CACHE", str(tmp_path))
    (tmp_path / smollm2_path.name).symlink_to(smollm2_path)  # the converted model, not converted again in here
    assert serve_main(["--config", "demo_cpu", "--device", "cpu", "--dry-run", "--vllm-python", "/opt/vllm/python",
                       "--port", "8124"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "/opt/vllm/python -m vllm.entrypoints.openai.api_server --model " in line
    for part in ("--enforce-eager", "--dtype float32", "--max-model-len 1056", "VLLM_CPU_KVCACHE_SPACE=",
                 "VLLM_CPU_OMP_THREADS_BIND=0", "--worker-extension-cls"):
        assert part in line
    assert "--weight-transfer-config" not in line  # NCCL needs CUDA
    # the other environment finds the worker extension through a folder holding only this package
    path = Path(line.split("PYTHONPATH=")[1].split()[0])
    assert [p.name for p in path.iterdir()] == ["trl_justrl"] and (path / "trl_justrl" / "generation").is_dir()
    assert serve_main(["--recipe", "demo_cpu", "--device", "cpu", "--dry-run"]) == 0  # the old spelling
    assert "--recipe is now --config" in capsys.readouterr().err


def test_vllm_serve_refuses_to_start_without_vllm(capsys, monkeypatch):
    monkeypatch.setattr("trl_justrl.cluster.serve.has_vllm", lambda python: False)
    assert serve_main(["--config", "demo_cpu", "--vllm-python", sys.executable]) == 2
    assert "vLLM is not installed for" in capsys.readouterr().err


def test_grpo_recipe_without_a_prompt_cap_is_a_clear_error(tmp_path):
    """TRL's GRPOConfig leaves max_prompt_length unset; the planner needs it for the server context and budget."""
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text("trainer: grpo\nprompts_per_step: 16\nprompts_per_update: 16\nmax_completion_length: 256\n")
    with pytest.raises(PlanError, match=r"grpo.yaml: max_prompt_length is null or unset \(trainer 'grpo'"):
        make_plan(1, 8, recipe=recipe)
    recipe.write_text(recipe.read_text() + "max_prompt_length: 512\n")
    assert make_plan(1, 8, recipe=recipe).recipe.max_context == 768


def test_packed_recipe_plans_one_micro_batch_per_update_and_refuses_deepspeed(tmp_path, monkeypatch):
    """max_tokens_per_microbatch: the planner maps the batch as JustRLConfig does (a device's share of an update is
    one micro-batch) and refuses the DeepSpeed configs, before anything starts."""
    recipe = tmp_path / "packed.yaml"
    recipe.write_text((REPO / PAPER_RECIPE).read_text() + "\nmax_tokens_per_microbatch: 32768\n")
    plan = make_plan(5, 8, recipe=recipe)
    g = plan.geometry
    assert plan.exact and (g.per_device_train_batch_size, g.gradient_accumulation_steps) == (16, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    config = JustRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_tokens_per_microbatch=32768)
    config.generation_batch_size = config.steps_per_generation = None
    assert config._map_recipe_batch(32) == g
    hosts = [f"h{i}" for i in range(5)]
    with pytest.raises(PlanError, match="max_tokens_per_microbatch.*DeepSpeed.*ddp.yaml or fsdp2.yaml"):
        launch_commands(plan, LaunchSettings(hosts=hosts))  # zero2.yaml, the default
    for name in ("ddp.yaml", "fsdp2.yaml"):
        assert launch_commands(plan, LaunchSettings(hosts=hosts, accelerate_config=f"accelerate_configs/{name}"))
