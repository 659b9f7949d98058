"""launch/train.py end to end: plain python, a 2-process torchrun on CPU, and its errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_justrl.recipe_reader import parse_args

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "launch" / "train.py"


def write_recipe(tmp_path: Path, model: Path, **overrides) -> Path:
    recipe = {
        "model_name_or_path": str(model),
        "dataset_name": "synthetic",
        "synthetic_size": 32,
        "prompts_per_step": 2,
        "prompts_per_update": 1,
        "num_generations": 4,
        "per_device_train_batch_size": 4,
        "max_completion_length": 8,
        "learning_rate": 1.0e-2,
        "warmup_rl_steps": 0,
        "save_every_rl_steps": None,
        "save_strategy": "no",
        "eval_strategy": "no",
        "max_steps": 4,
        "logging_steps": 2,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "output_dir": str(tmp_path / "out"),
        "reward_funcs": ["dapo_strict"],
    } | overrides
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run(cmd: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def check_outputs(out: Path, steps: int) -> dict:
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    assert [h for h in state["log_history"] if "reward" in h and "entropy" in h]
    return state


def test_train_script_under_python(tmp_path, tiny_model_path):
    result = run([sys.executable, str(TRAIN), "--config", str(write_recipe(tmp_path, tiny_model_path))], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    check_outputs(tmp_path / "out", steps=4)
    assert "Run summary" in result.stdout and "mean reward" in result.stdout


def test_two_processes_under_torchrun(two_process_run):
    folder, result = two_process_run
    assert result.returncode == 0, result.stderr[-4000:]
    state = check_outputs(folder / "out", steps=4)
    # 1 prompt x 4 generations per update over 2 processes: micro-batch 2, no accumulation, 2 updates per step
    assert "'world_size': 2" in result.stderr and "'per_device_train_batch_size': 2" in result.stderr
    # the token budget sums both processes: trained = TRL's gathered num_tokens; generated = 8 completions per step
    # (4 per process) x TRL's gathered mean length
    logs = [h for h in state["log_history"] if "reward" in h]
    assert [h["budget/tokens_trained"] for h in logs] == [h["num_tokens"] for h in logs]
    generated = sum(h["completions/mean_length"] * 8 for h in logs)
    assert logs[-1]["budget/tokens_generated"] == pytest.approx(generated)


def test_impossible_world_size_fails_before_loading_a_model(tmp_path, tiny_model_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    recipe = write_recipe(tmp_path, tiny_model_path, num_generations=3, per_device_train_batch_size=3)
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29534", str(TRAIN), "--config", str(recipe)]
    result = run(cmd, tmp_path, timeout=300)
    assert result.returncode != 0
    assert "3 completions per optimizer update cannot be split evenly over 2" in result.stderr
    assert "Loading weights" not in result.stderr


def test_unknown_recipe_key_is_an_error(tmp_path, tiny_model_path):
    recipe = write_recipe(tmp_path, tiny_model_path, learning_rat=1.0)
    with pytest.raises(ValueError, match="learning_rat"):
        parse_args(["--config", str(recipe)])


@pytest.mark.parametrize("name", ["justrl_deepseek_1.5b", "justrl_nemotron_1.5b", "demo_cpu"])
def test_shipped_recipes_parse(name, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    recipe = REPO / "launch" / "recipes" / f"{name}.yaml"
    # (the paper recipes report to wandb: off here, so that parsing them starts no tracker)
    overrides = ["--use_cpu", "true", "--bf16", "false", "--report_to", "none"] if name != "demo_cpu" else []
    script_args, training_args, model_args = parse_args(["--config", str(recipe), *overrides])
    assert model_args.model_name_or_path and script_args.reward_funcs == ["dapo_strict"]
    if name != "demo_cpu":  # the paper recipes leave every recipe value at JustRLConfig's defaults
        assert training_args.use_vllm and training_args.vllm_mode == "server"
        assert training_args.save_steps == 200 and training_args.gradient_checkpointing
        assert training_args.prompts_per_step == 256 and training_args.learning_rate == 1e-6
        assert not training_args.push_to_hub and training_args.hub_model_id


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((REPO / "accelerate_configs").glob("*.yaml"))
    assert configs
    for path in configs:
        config = load_config_from_file(str(path))
        assert config.mixed_precision == "bf16" and config.num_machines >= 1, path
