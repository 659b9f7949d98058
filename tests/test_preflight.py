"""No silent failures: what used to fail late, or not at all, is an error naming the setting before any model loads
(misspelt rewards, data smaller than one step, flags nothing reads), and TRL's math layout (`solution`) loads."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
from trl import ModelConfig, get_peft_config, get_quantization_config

from trl_justrl import GRPORunConfig, JustRLConfig, JustRLTrainer
from trl_justrl.data import load_training_data
from trl_justrl.data_errors import DataError
from trl_justrl.recipe_reader import JustRLScriptArguments, parse_args
from trl_justrl.rewards import resolve_reward, reward_source
from trl_justrl.train import check_script_flags, model_init_kwargs, quantization_config

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
def test_a_misspelt_reward_fails_before_any_model_loads(tmp_path, tiny_model_path, capfd):
    from test_train_script import write_recipe

    from trl_justrl.train import cli

    recipe = write_recipe(tmp_path, tiny_model_path)
    with pytest.raises(SystemExit) as stop:  # launch/train.py's code, in this process
        cli(["--config", str(recipe), "--reward_funcs", "dapo_strickt"])
    err = capfd.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    assert "error: reward_funcs: 'dapo_strickt' is not a registered reward" in err
    assert "Loading weights" not in err and "Traceback" not in err


def test_a_model_folder_without_a_tokenizer_is_named_before_the_model_loads(tmp_path, tiny_model_path, capfd):
    """transformers' own message for it asks to install sentencepiece or tiktoken, naming neither the folder nor the
    files."""
    import shutil

    from test_train_script import write_recipe

    from trl_justrl.train import cli

    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_path / name, bare / name)
    with pytest.raises(SystemExit) as stop:
        cli(["--config", str(write_recipe(tmp_path, bare))])
    err = capfd.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    assert f"error: model_name_or_path {bare} has no tokenizer: none of tokenizer.json" in err
    assert "Loading weights" not in err and "sentencepiece" not in err


def test_a_cut_weights_file_is_named_before_the_model_loads(tmp_path, tiny_model_path, capfd):
    """A copy or save cut short was a raw SafetensorError from inside transformers."""
    import shutil

    from test_train_script import write_recipe

    from trl_justrl.train import cli

    cut = tmp_path / "cut"
    shutil.copytree(tiny_model_path, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    with pytest.raises(SystemExit) as stop:
        cli(["--config", str(write_recipe(tmp_path, cut))])
    err = capfd.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    assert f"error: {weights} is cut short:" in err and "Traceback" not in err and "SafetensorError" not in err


# ---- data smaller than one training step -------------------------------------------------------------------------


def test_data_smaller_than_one_step_is_refused_where_training_starts(tmp_path, tiny_model_path, monkeypatch):
    """A trainer with too little data constructs (a drop-in for GRPOTrainer, e.g. to inspect or evaluate) and refuses
    in train(), before any step; the CLI refuses in its pre-flight, before the model loads."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    data = load_training_data("synthetic", synthetic_size=16)
    args = JustRLConfig(output_dir=str(tmp_path / "python"), use_cpu=True, bf16=False, report_to="none",
                        per_device_train_batch_size=4, num_generations=4, max_steps=1, save_strategy="no")
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"], args=args, train_dataset=data)
    with pytest.raises(DataError, match=r"has 16 prompts, but one training step takes 256 \(prompts_per_step = 256\)"
                                        r".*lower prompts_per_step"):
        trainer.train()
    assert trainer.state.global_step == 0

    from test_train_script import write_recipe

    from trl_justrl.train import main

    recipe = write_recipe(tmp_path, tiny_model_path, synthetic_size=16, prompts_per_step=32, prompts_per_update=32)
    loaded = []
    monkeypatch.setattr("trl.trainer.grpo_trainer.create_model_from_path", lambda *a, **k: loaded.append(a))
    with pytest.raises(DataError, match=r"has 16 prompts, but one training step takes 32"):
        main(*parse_args(["--config", str(recipe)]))
    assert not loaded
    trl_batch = GRPORunConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                              per_device_train_batch_size=8, num_generations=4, steps_per_generation=4)
    from trl_justrl.trainer import check_enough_prompts

    with pytest.raises(ValueError, match=r"takes 8 \(generation_batch_size 32 / num_generations 4.*steps_per_gen"):
        check_enough_prompts(data.select(range(7)), trl_batch)
    check_enough_prompts(data.select(range(8)), trl_batch)  # exactly one step: fine


# ---- flags: honoured or refused ----------------------------------------------------------------------------------


# A real (tiny) training run, recording which run-config fields are read (outside `to_dict`, which reads them all
# to save or print them) and which modules of trl_justrl, TRL, transformers and accelerate it loads.
RECORDED_RUN = """
import atexit, dataclasses, json, sys
sys.path.insert(0, "tests")
import conftest
from trl_justrl.config import GRPORunConfig, JustRLConfig, RunConfig
names = {f.name for cls in (JustRLConfig, GRPORunConfig) for f in dataclasses.fields(cls)}
read, quiet = set(), [0]
def recording(self, name):
    if not quiet[0] and name in names:
        read.add(name)
    return object.__getattribute__(self, name)
def silent(method):
    def call(self, *args, **kwargs):
        quiet[0] += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            quiet[0] -= 1
    return call
RunConfig.__getattribute__ = recording
RunConfig.to_dict = silent(RunConfig.to_dict)
def report():
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())
             if m.__name__.split(".")[0] in ("trl_justrl", "trl", "transformers", "accelerate")}
    print("RECORD=" + json.dumps({"read": sorted(read), "files": sorted(f for f in files if f)}))
atexit.register(report)
from trl_justrl.train import cli
cli(sys.argv[1:])
"""


# Fields the tiny run does not read, by the feature that reads them (each must still be read as an attribute by code
# the run loads), and the few no GRPO run reads at all.
READ_WHEN = {
    "the vLLM server": ("vllm_group_port", "vllm_server_base_url", "vllm_server_host", "vllm_server_port",
                        "vllm_server_timeout", "vllm_weight_dir", "vllm_weight_sync_timeout", "vllm_max_model_length",
                        "vllm_model_impl", "vllm_enable_sleep_mode", "vllm_structured_outputs_regex"),
    "the Open-RS cosine rewards": ("cosine_max_len", "cosine_max_value_correct", "cosine_max_value_wrong",
                                   "cosine_min_value_correct", "cosine_min_value_wrong"),
    "TRL's other objectives": ("entropy_coef_delta", "entropy_coef_max", "entropy_coef_min", "entropy_target",
                               "sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_neg", "vespo_k_pos",
                               "vespo_lambda_neg", "vespo_lambda_pos", "use_bias_correction_kl",
                               "ref_model_mixup_alpha", "ref_model_sync_steps"),
    "evaluation": ("eval_accumulation_steps", "eval_delay", "eval_do_concat_batches", "include_for_metrics",
                   "per_device_eval_batch_size", "prediction_loss_only", "validation_data_dir",
                   "validation_fail_fast", "validation_on_start"),
    "the Hub push and trackers": ("hub_always_push", "hub_model_id", "hub_private_repo", "hub_revision", "project",
                                  "run_name", "trackio_bucket_id", "trackio_space_id", "trackio_static_space_id"),
    "checkpoints and resumes": ("save_total_limit", "resume_allow_changes", "restore_callback_states_from_checkpoint",
                                "ignore_data_skip"),
    "several processes or kernels": ("ddp_timeout", "local_rank", "average_tokens_across_devices",
                                     "liger_kernel_config", "optim_target_modules"),
}
# transformers' script flags and sampler settings: GRPOTrainer samples with its own RepeatSampler
READ_BY_NO_GRPO_RUN = ("do_train", "do_predict", "train_sampling_strategy", "length_column_name")


def unread_settings(names: list[str], files: list[str]) -> list[str]:
    """The `names` no file reads as an attribute (`x.name`, or getattr(x, "name"))."""
    text = "\n".join(Path(f).read_text(errors="ignore") for f in files)
    return [name for name in names
            if not re.search(rf"[\w\])]\.{name}\b(?!\s*=[^=])|getattr\(\w[\w.]*, [\"']{name}[\"']", text)]


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory, tiny_model_path) -> dict[str, list[str]]:
    from test_train_script import write_recipe

    folder = tmp_path_factory.mktemp("recorded")
    recipe = write_recipe(folder, tiny_model_path, max_steps=1, synthetic_size=8)
    result = subprocess.run([sys.executable, "-c", RECORDED_RUN, "--config", str(recipe)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RECORD="))
    return json.loads(line.removeprefix("RECORD="))


def test_the_reader_check_can_fail(recorded_run):
    assert unread_settings(["learning_rate", "clip_ratio_c", "a_setting_no_code_reads"], recorded_run["files"]) == [
        "a_setting_no_code_reads"]


def test_every_parsed_flag_is_read_or_refused(recorded_run):
    """Script and model flags: read by the training entry point (or by the TRL helpers it hands model_args to).
    Config fields: read by a real training run (recorded), or listed with the feature that reads them and read as an
    attribute by code the run loads; a field that is neither fails this test."""
    entry = (REPO / "trl_justrl" / "train.py").read_text()
    helpers = inspect.getsource(get_peft_config) + inspect.getsource(get_quantization_config)
    unread = [f"script_args.{f.name}" for f in fields(JustRLScriptArguments)
              if not re.search(rf"\bscript_args\.{f.name}\b", entry)]
    unread += [f"model_args.{f.name}" for f in fields(ModelConfig)
               if not re.search(rf"\bmodel_args\.{f.name}\b", entry + helpers)]
    names = {f.name for cls in (JustRLConfig, GRPORunConfig) for f in fields(cls)}
    gated = {name for group in READ_WHEN.values() for name in group}
    unread += sorted(names - set(recorded_run["read"]) - gated - set(READ_BY_NO_GRPO_RUN))
    unread += unread_settings(sorted(gated), recorded_run["files"])
    assert not unread, unread
    assert set(recorded_run["read"]) >= {"clip_ratio_c", "learning_rate", "health_patience", "max_prompt_length"}


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
    from test_train_script import write_recipe

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

