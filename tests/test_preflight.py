"""No silent failures: what used to fail late, or not at all, is an error naming the setting before any model loads
(misspelt rewards, data smaller than one step, flags nothing reads), and TRL's math layout (`solution`) loads."""

from __future__ import annotations

import inspect
import json
import re
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
from trl import ModelConfig, get_peft_config, get_quantization_config

from trl_justrl import GRPORunConfig, JustRLConfig, JustRLTrainer
from trl_justrl.data import DataError, load_training_data
from trl_justrl.rewards import resolve_reward, reward_source
from trl_justrl.train import (
    JustRLScriptArguments,
    check_script_flags,
    model_init_kwargs,
    parse_args,
    quantization_config,
)

REPO = Path(__file__).resolve().parents[1]


# ---- rewards -------------------------------------------------------------------------------------------------------


def test_reward_names_are_registered_trl_imported_or_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text("def always_one(completions, **kw):\n    return [1.0] * len(completions)\n")
    (tmp_path / "local-reward-model").mkdir()
    assert reward_source("dapo_strict") == "registered" and reward_source("think_format_reward") == "trl"
    assert reward_source("my_rewards.always_one") == reward_source("my_rewards:always_one") == "import"
    assert resolve_reward("my_rewards:always_one")(["a", "b"]) == [1.0, 1.0]
    from trl.rewards import think_format_reward

    assert resolve_reward("think_format_reward") is think_format_reward
    assert resolve_reward("some-org/reward-model") == "some-org/reward-model"  # TRL loads it, as before
    assert reward_source("local-reward-model") == "model"
    with pytest.raises(ValueError, match=r"'dapo_strickt' is not a registered reward \(.*dapo_strict.*\).*misspelt"):
        reward_source("dapo_strickt")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        reward_source("no_such_module.reward")
    with pytest.raises(ValueError, match="my_rewards has no function 'missing'"):
        reward_source("my_rewards.missing")


@pytest.mark.slow
def test_a_misspelt_reward_fails_before_any_model_loads(tmp_path, tiny_model_path):
    from test_launch import TRAIN, run, write_recipe

    recipe = write_recipe(tmp_path, tiny_model_path)
    result = run([sys.executable, str(TRAIN), "--config", str(recipe), "--reward_funcs", "dapo_strickt"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: reward_funcs: 'dapo_strickt' is not a registered reward" in result.stderr
    assert "Loading weights" not in result.stderr and "Traceback" not in result.stderr


# ---- data smaller than one training step -------------------------------------------------------------------------


def test_data_smaller_than_one_step_is_refused_before_the_model_loads(tmp_path, tiny_model_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    data = load_training_data("synthetic", synthetic_size=16)
    args = JustRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                        per_device_train_batch_size=4, num_generations=4, max_steps=1)
    loaded = []
    monkeypatch.setattr("trl.trainer.grpo_trainer.create_model_from_path", lambda *a, **k: loaded.append(a))
    with pytest.raises(ValueError, match=r"has 16 prompts, but one training step takes 256 \(prompts_per_step = 256\)"
                                         r".*lower prompts_per_step"):
        JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"], args=args, train_dataset=data)
    assert not loaded
    trl_batch = GRPORunConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                              per_device_train_batch_size=8, num_generations=4, steps_per_generation=4)
    from trl_justrl.trainer import check_enough_prompts

    with pytest.raises(ValueError, match=r"takes 8 \(generation_batch_size 32 / num_generations 4.*steps_per_gen"):
        check_enough_prompts(data.select(range(7)), trl_batch)
    check_enough_prompts(data.select(range(8)), trl_batch)  # exactly one step: fine


# ---- flags: honoured or refused ----------------------------------------------------------------------------------


def _attribute_reads(*roots: Path) -> set[str]:
    names: set[str] = set()
    for root in roots:
        for file in root.rglob("*.py"):
            names.update(re.findall(r"\.([A-Za-z_]\w*)", file.read_text(errors="ignore")))
    return names


def test_every_parsed_flag_is_read_or_refused():
    """Script and model flags: read by the training entry point (or by the TRL helpers it hands model_args to).
    Config fields: read somewhere by TRL, transformers, accelerate or this project (TRL's and transformers' own
    fields are theirs to honour); a field nothing reads fails this test."""
    entry = (REPO / "trl_justrl" / "train.py").read_text()
    helpers = inspect.getsource(get_peft_config) + inspect.getsource(get_quantization_config)
    unread = [f"script_args.{f.name}" for f in fields(JustRLScriptArguments)
              if not re.search(rf"\bscript_args\.{f.name}\b", entry)]
    unread += [f"model_args.{f.name}" for f in fields(ModelConfig)
               if not re.search(rf"\bmodel_args\.{f.name}\b", entry + helpers)]
    import accelerate
    import transformers
    import trl

    reads = _attribute_reads(Path(trl.__file__).parent, Path(accelerate.__file__).parent, REPO / "trl_justrl")
    transformers_root = Path(transformers.__file__).parent
    reads |= _attribute_reads(transformers_root / "integrations")
    for file in transformers_root.glob("*.py"):
        reads.update(re.findall(r"\.([A-Za-z_]\w*)", file.read_text(errors="ignore")))
    unread += [f"{cls.__name__}.{f.name}" for cls in (JustRLConfig, GRPORunConfig) for f in fields(cls)
               if f.name not in reads]
    assert not unread, unread


def test_flags_the_entry_point_does_not_honour_are_refused():
    with pytest.raises(ValueError, match="dataset_streaming is not offered"):
        check_script_flags(JustRLScriptArguments(dataset_streaming=True))
    with pytest.raises(ValueError, match=r"dataset_config \('main'\) names a configuration of a Hub data set"):
        check_script_flags(JustRLScriptArguments(dataset_name="data/train.jsonl", dataset_config="main"))
    check_script_flags(JustRLScriptArguments(dataset_name="openai/gsm8k", dataset_config="main"))
    with pytest.raises(ValueError, match="load_in_4bit / load_in_8bit need bitsandbytes"):
        quantization_config(ModelConfig(model_name_or_path="m", load_in_4bit=True))
    assert quantization_config(ModelConfig(model_name_or_path="m")) is None
    config = SimpleNamespace(trust_remote_code=True)
    assert model_init_kwargs(ModelConfig(model_name_or_path="m", attn_implementation="sdpa", dtype="float32"),
                             config) == {"revision": "main", "dtype": "float32", "attn_implementation": "sdpa",
                                         "trust_remote_code": True}


def test_a_cli_flag_nothing_knows_is_an_error(tmp_path, tiny_model_path):
    from test_launch import write_recipe

    recipe = write_recipe(tmp_path, tiny_model_path)
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--no_such_flag', '1'\]"):
        parse_args(["--config", str(recipe), "--no_such_flag", "1"])


# ---- TRL's / open-r1's math layout -------------------------------------------------------------------------------


def test_problem_and_solution_rows_take_the_solutions_last_box(tmp_path):
    rows = [{"problem": "What is 1 + 1?", "solution": "First 1, then \\boxed{1}... no: 1 + 1 = \\boxed{2}."},
            {"prompt": [{"role": "user", "content": "Half of 1?"}], "solution": "It is $\\boxed{\\frac{1}{2}}$."}]
    good = tmp_path / "math.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_training_data(str(good))
    assert data["ground_truth"] == ["2", "\\frac{1}{2}"] and data["solution"][0].endswith("\\boxed{2}.")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"problem": "x", "solution": "no box here"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: .*field 'solution' has no \\boxed\{\.\.\.\} answer"):
        load_training_data(str(bad))


def test_dataset_config_reaches_the_hub_loader(monkeypatch):
    import datasets

    import trl_justrl.data as data_module

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"problem": "1 + 1?", "answer": "2"}])

    monkeypatch.setattr(data_module, "load_dataset", fake_load_dataset)
    load_training_data("openai/gsm8k", split="train", config="main")
    assert calls == [("openai/gsm8k", "main", "train")]
