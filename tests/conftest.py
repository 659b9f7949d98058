"""Shared fixtures: the SmolLM2 tokenizer (from the embedded model) and a tiny random model built around it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO.parent / "shared" / "data" / "benchmarks"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _register_test_rewards() -> None:
    from trl_justrl.rewards import register_reward

    @register_reward("test_length_parity")
    def test_length_parity(completions, **kwargs):
        """Varies for a random model (even / odd text length), so advantages are non-zero."""
        return [1.0 if len(c if isinstance(c, str) else c[0]["content"]) % 2 else -1.0 for c in completions]

    @register_reward("test_missing_column")
    def test_missing_column(completions, **kwargs):
        """A reward with a bug a user's might have: it reads a column the data does not have."""
        return [float(kwargs["solution_text"][i] in c[0]["content"]) for i, c in enumerate(completions)]


_register_test_rewards()


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once into the cache (about 20 s the first time)."""
    pytest.importorskip("gguf")
    from trl_justrl.models import resolve_model

    return Path(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path, padding_side="left")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 32-wide random Llama with the SmolLM2 tokenizer, saved as a checkpoint folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


TINY_RUN = dict(
    use_cpu=True, bf16=False, report_to="none", prompts_per_step=2, prompts_per_update=1, num_generations=4,
    per_device_train_batch_size=4, max_completion_length=8, learning_rate=1e-2, warmup_rl_steps=0,
    save_every_rl_steps=None, save_strategy="no", max_steps=4, logging_steps=2, gradient_checkpointing=False, seed=0,
)


def tiny_config(output_dir, **overrides):
    """A JustRLConfig for a short CPU run: 2 JustRL steps of 2 prompts x 4 rollouts, 2 optimizer updates each (4
    updates in all), 8-token completions, one log entry per step."""
    from trl_justrl import JustRLConfig

    return JustRLConfig(**(TINY_RUN | {"output_dir": str(output_dir)} | overrides))


@pytest.fixture(name="tiny_config", scope="session")
def tiny_config_fixture():
    """`tiny_config(output_dir, **overrides)`, for tests that train."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_path):
    """One short real JustRLTrainer run, shared: 2 JustRL steps of 2 prompts x 4 rollouts, 2 optimizer updates each
    (steps_per_generation = 2), one log entry per step, trainer_state.json saved in its output_dir."""
    from trl_justrl import JustRLTrainer
    from trl_justrl.data import load_training_data

    args = tiny_config(tmp_path_factory.mktemp("tiny-run"))
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"], args=args,
                            train_dataset=load_training_data("synthetic", synthetic_size=16))
    trainer.train()
    trainer.save_state()
    return trainer


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory, tiny_model_path) -> tuple[Path, subprocess.CompletedProcess]:
    """launch/train.py under torchrun: 2 gloo processes, test_train_script's tiny recipe (4 updates) with gradient
    checkpointing (as the paper recipes train). Trained once, read by the data-parallel test and the packing test (its
    unpacked reference)."""
    from test_train_script import TRAIN, run, write_recipe

    folder = tmp_path_factory.mktemp("two-process-run")
    recipe = write_recipe(folder, tiny_model_path, gradient_checkpointing=True)
    torchrun = Path(sys.executable).with_name("torchrun")
    return folder, run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", str(TRAIN), "--config",
                        str(recipe)], folder)


@contextlib.contextmanager
def folder_held(folder: Path, purpose: str = "training (justrl)", host: str = "", **env: str):
    """A real process holding `folder`'s FolderLock while the block runs (killed after: its lock file stays, the
    kernel lock goes); `host` rewrites the host its lock file names (a claim taken on another machine). Yields the
    process."""
    code = ("import json, sys, time\nfrom trl_justrl.run_services.run_folder import FolderLock\n"
            "lock = FolderLock(sys.argv[1], sys.argv[2]).acquire()\n"
            "if sys.argv[3]:\n"
            "    lock.path.write_text(json.dumps(json.loads(lock.path.read_text()) | {'host': sys.argv[3]}))\n"
            "print('held', flush=True)\ntime.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder), purpose, host], stdout=subprocess.PIPE,
                              text=True, env=os.environ | env, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


# stand-ins for tokens in the tracked run's environment (fresh each run: nothing token-like is committed); they must
# reach no file a tracker writes
TRACKED_SECRET = "sentinel-" + secrets.token_hex(16)
TRACKED_WANDB_KEY = secrets.token_hex(20)  # 40 characters, as a W&B API key
TRACKED_KEYS = ("budget/tokens_generated", "budget/tokens_trained", "clip_ratio/dual_mean",
                "data/prompts_dropped_too_long", "entropy", "completions/clipped_ratio")
TRACKED_VALIDATION = "eval/AIME24/mean@2"


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory, tiny_model_path) -> dict:
    """A tiny run reporting to wandb (offline), trackio and TensorBoard at once: two updates, validation before
    training and at step 2, health thresholds that fire at step 1, a token in the environment. Returns its folder,
    the values its trainer_state.json logged for the checked keys (key -> step -> value) and the model."""
    pytest.importorskip("wandb")
    pytest.importorskip("trackio")
    pytest.importorskip("tensorboard")
    from test_evaluation import make_data_dir
    from test_preemption import env, recipe, train_command

    tmp = tmp_path_factory.mktemp("tracked")
    config = recipe(tmp, tiny_model_path, max_steps=2, report_to=["wandb", "trackio", "tensorboard"],
                    run_name="tracked", validation_benchmarks=["AIME24"],
                    validation_data_dir=str(make_data_dir(tmp / "data")), validation_n=2, validation_limit=2,
                    validation_max_new_tokens=4, validation_every_steps=2, health_entropy_floor=100.0,
                    health_patience=1, health_max_truncation_ratio=0.0)
    (tmp / "wandb").mkdir()
    environment = env() | {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp / "wandb"), "WANDB_SILENT": "true",
                           "TRACKIO_DIR": str(tmp / "trackio"), "HF_TOKEN": TRACKED_SECRET,
                           "WANDB_API_KEY": TRACKED_WANDB_KEY}
    result = subprocess.run(train_command(config), capture_output=True, text=True, timeout=600, env=environment,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((tmp / "out" / "trainer_state.json").read_text())["log_history"]
    expected: dict[str, dict[int, float]] = {}
    for entry in history:
        for key, value in entry.items():
            if key in (*TRACKED_KEYS, TRACKED_VALIDATION):
                expected.setdefault(key, {}).setdefault(entry["step"], value)
    assert set(expected[TRACKED_VALIDATION]) == {0, 2} and {1, 2} <= set(expected["budget/tokens_generated"])
    return {"tmp": tmp, "expected": expected, "model": str(tiny_model_path)}
