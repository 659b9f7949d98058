"""Checkpoints on CPU: resuming continues steps, optimizer, scheduler and data order; the model card's content."""

from __future__ import annotations

import json
import secrets

import pytest
import torch
from transformers import TrainerCallback

from trl_justrl import JustRLConfig, JustRLTrainer
from trl_justrl.data import load_training_data
from trl_justrl.reporting.model_card import SECTION_TITLE, insert_section
from trl_justrl.rewards import register_reward
from trl_justrl.run_services.checkpoints import resolve_resume_checkpoint

pytestmark = pytest.mark.slow

SEEN_PROMPTS: list[str] = []
SECRET = secrets.token_hex(16)  # a stand-in token made at run time, so none is committed


@register_reward("test_record_prompts")
def record_prompts(completions, prompts, **kwargs):
    """Length-parity reward (non-zero advantages for a random model) that records the prompts it scored."""
    SEEN_PROMPTS.extend(p[-1]["content"] for p in prompts)
    return [1.0 if len(c[0]["content"]) % 2 else -1.0 for c in completions]


class StopAt(TrainerCallback):
    """Interrupt training after `step` optimizer updates, as a preempted job would be."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def config(output_dir, **overrides) -> JustRLConfig:
    values = dict(
        output_dir=str(output_dir), use_cpu=True, bf16=False, report_to="none", seed=0,
        prompts_per_step=2, prompts_per_update=1, num_generations=4, per_device_train_batch_size=4,
        max_completion_length=8, learning_rate=1e-2, lr_scheduler_type="linear", warmup_rl_steps=0,
        save_every_rl_steps=1,  # a checkpoint every training step = every 2 optimizer updates
        save_strategy="steps", max_steps=8, logging_steps=2, gradient_checkpointing=False, hub_token=SECRET,
    )
    return JustRLConfig(**(values | overrides))


def make_trainer(model_path, args) -> JustRLTrainer:
    trainer = JustRLTrainer(model=str(model_path), reward_funcs=["test_record_prompts", "dapo_strict"], args=args,
                            train_dataset=load_training_data("synthetic", synthetic_size=16, seed=0))
    trainer.training_data_name = "synthetic"
    return trainer


def adam_steps(trainer) -> set[int]:
    return {int(state["step"]) for state in trainer.optimizer.state.values()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_path):
    """One uninterrupted run, and one interrupted after 4 updates then resumed with 'latest'."""
    full_dir, cut_dir = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("cut")
    SEEN_PROMPTS.clear()
    full = make_trainer(tiny_model_path, config(full_dir))
    full.train()
    full_prompts = list(SEEN_PROMPTS)

    SEEN_PROMPTS.clear()
    first = make_trainer(tiny_model_path, config(cut_dir))
    first.add_callback(StopAt(4))
    first.train()
    first_prompts = list(SEEN_PROMPTS)

    SEEN_PROMPTS.clear()
    resumed_args = config(cut_dir, resume_from_checkpoint="latest")
    checkpoint = resolve_resume_checkpoint(resumed_args)
    resumed = make_trainer(tiny_model_path, resumed_args)
    resumed.train(resume_from_checkpoint=checkpoint)
    return dict(full=full, first=first, resumed=resumed, checkpoint=checkpoint, full_prompts=full_prompts,
                first_prompts=first_prompts, resumed_prompts=list(SEEN_PROMPTS), full_dir=full_dir, cut_dir=cut_dir)


def test_latest_finds_the_newest_checkpoint(runs):
    assert runs["checkpoint"].endswith("checkpoint-4")
    assert runs["first"].state.global_step == 4


def test_resuming_continues_steps_optimizer_scheduler_and_data(runs):
    full, resumed = runs["full"], runs["resumed"]
    assert resumed.state.global_step == full.state.global_step == 8
    assert adam_steps(resumed) == adam_steps(full) == {8}  # Adam's state was restored, then stepped 4 more times
    assert resumed.lr_scheduler.last_epoch == full.lr_scheduler.last_epoch == 8
    assert resumed.lr_scheduler.get_last_lr() == full.lr_scheduler.get_last_lr()
    # the data order continues: the interrupted + resumed runs see exactly the uninterrupted run's prompts
    assert runs["first_prompts"] + runs["resumed_prompts"] == runs["full_prompts"]
    assert runs["resumed_prompts"] and runs["resumed_prompts"] != runs["first_prompts"]
    # and, with the RNG state restored, the same rollouts: the same final weights
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    steps = [h["step"] for h in resumed.state.log_history if "reward" in h]
    assert steps == [2, 4, 6, 8]  # the resumed run carries the first part's log history on


def test_resume_flag_edge_cases(tmp_path):
    assert resolve_resume_checkpoint(config(tmp_path / "fresh", resume_from_checkpoint="latest")) is None
    assert resolve_resume_checkpoint(config(tmp_path / "fresh")) is None
    with pytest.raises(FileNotFoundError, match="checkpoint-99"):
        resolve_resume_checkpoint(config(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-99")))


def test_model_card_has_recipe_base_model_data_and_metrics(runs, tiny_model_path):
    card = (runs["full_dir"] / "README.md").read_text()
    assert card.count(SECTION_TITLE) == 1
    assert f"Base model: `{tiny_model_path}`" in card and "Training data: `synthetic`" in card
    assert "Rewards: `record_prompts`, `dapo_strict`" in card and "| schedule | linear |" in card
    for row in ("| dual-clip constant c | 10 |", "| clip ratio high | 0.28 |", "| KL coefficient | 0 |",
                "| rollouts per prompt | 4 |", "| loss aggregation | dapo |"):
        assert row in card
    state = json.loads((runs["full_dir"] / "checkpoint-8" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "reward" in h]
    # written at the last save: its metrics table has every training step logged up to then
    assert "### Training metrics so far" in card
    assert f"| 3 | {logged[-2]['reward']:.4g} |" in card
    assert SECRET not in card


def test_card_section_is_replaced_not_repeated():
    card = "---\ntags: [trl]\n---\n# Model\n\n## Citations\n\ncite\n"
    once = insert_section(card, f"{SECTION_TITLE}\n\nold\n")
    twice = insert_section(once, f"{SECTION_TITLE}\n\nnew\n")
    assert twice.count(SECTION_TITLE) == 1 and "new" in twice and "old" not in twice
    assert twice.index(SECTION_TITLE) < twice.index("## Citations") and twice.rstrip().endswith("cite")


def test_model_card_of_a_python_run_names_what_it_was_given(tmp_path, tiny_model_path):
    """A script that passes a local model and a Dataset: no `[None](https://huggingface.co/None)` link, the base
    model and the data named, the rewards it passed (not the recipe's)."""
    args = config(tmp_path / "card", max_steps=1, hub_token=None)
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["test_record_prompts"], args=args,
                            train_dataset=load_training_data("synthetic", synthetic_size=16, seed=0))
    trainer.create_model_card()
    card = (tmp_path / "card" / "README.md").read_text()
    assert "huggingface.co/None" not in card and f"fine-tuned version of `{tiny_model_path}`" in card
    assert "Training data: `a Dataset given in Python, 16 rows`" in card and "huggingface.co/datasets" not in card
    assert "Rewards: `record_prompts`" in card and "dapo_strict" not in card and "strict DAPO" not in card


def test_resume_settings_allow_another_world_size_and_refuse_the_objective(tmp_path):
    """The batch is compared as the world sees it: 8 processes x 32 accumulation steps and 4 x 64 are the same
    update (a resume on fewer GPUs passes); a learning rate, the prompts per step or the data do not pass."""
    from types import SimpleNamespace

    from trl_justrl.run_services.resume import setting_changes, write_settings

    def args(world: int, **changes):
        values = {"learning_rate": 1e-6, "prompts_per_step": 256, "lr_scheduler_type": "constant_with_warmup",
                  "max_steps": 17520, "logging_steps": 1, "per_device_train_batch_size": 1,
                  "gradient_accumulation_steps": 512 // 8 // world, "steps_per_generation": 4 * 512 // 8 // world,
                  "generation_batch_size": 2048} | changes
        return SimpleNamespace(**values, to_dict=lambda: dict(values))

    write_settings(tmp_path, args(8), 8, ["dapo_strict"], "data-a")
    refused, harmless = setting_changes(tmp_path, args(4), 4, ["dapo_strict"], "data-a")
    assert refused == [] and harmless == ["gradient_accumulation_steps: 8 -> 16"]  # logged, not refused
    refused, harmless = setting_changes(tmp_path, args(4, learning_rate=5e-6, logging_steps=5, max_steps=20000), 4,
                                        ["dapo_strict"], "data-b")
    assert refused == ["learning_rate: 1e-06 -> 5e-06", "training_data: 'data-a' -> 'data-b'"]
    assert "logging_steps: 1 -> 5" in harmless and "max_steps: 17520 -> 20000" in harmless  # constant rate
    refused, _ = setting_changes(tmp_path, args(8, prompts_per_step=128, lr_scheduler_type="linear", max_steps=9), 8)
    assert "prompts_per_step: 256 -> 128" in refused and "max_steps: 17520 -> 9" in refused  # a decaying rate
