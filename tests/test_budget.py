"""Compute budget: the paper's arithmetic, the estimate for a configured run, and the tokens a real run counts."""

from __future__ import annotations

import pytest
from transformers import TrainerControl, TrainerState

from trl_justrl import JustRLConfig
from trl_justrl.reporting.budget import (
    PAPER_ESTIMATE,
    RL_STEP,
    TOKENS_GENERATED,
    TOKENS_TRAINED,
    TokenBudget,
    paper_budget_tokens,
    run_paper_estimate,
)
from trl_justrl.reporting.summary import format_summary, summarize_run


def test_the_papers_budget():
    # RECIPE.md: 4,380 steps x 256 prompts x 8 rollouts x 16K context = about 1.4e11 tokens
    tokens = paper_budget_tokens(steps=4380, prompts_per_step=256, rollouts=8, max_context=16 * 1024)
    assert tokens == 146_968_412_160  # 8,970,240 rollouts x 16,384 tokens
    assert f"{paper_budget_tokens(4380, 256, 8, 16_000):.1e}" == "1.4e+11"  # "16K" read as 16,000
    assert 1.4e11 <= tokens < 1.5e11  # and as 16,384
    with pytest.raises(ValueError, match="rollouts"):
        paper_budget_tokens(10, 256, -8, 16384)


def test_estimate_for_the_configured_paper_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    config = JustRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=17520)
    # 17,520 optimizer updates = 4,380 JustRL steps of 4 updates; 256 prompts x 8 rollouts; 1,024 + 15,360 context
    assert run_paper_estimate(config, config.max_steps) == 4380 * 256 * 8 * 16384


def test_estimate_from_trls_own_batch_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    config = JustRLConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", prompts_per_step=None, prompts_per_update=None,
        per_device_train_batch_size=16, gradient_accumulation_steps=2, steps_per_generation=8, num_generations=8,
        max_prompt_length=512, max_completion_length=1536,
    )
    # a generation batch: 16 x 8 = 128 completions = 16 prompts x 8; 8 / 2 = 4 updates per generation batch; 40
    # updates = 10 generation batches (the last one partly used still counts)
    assert run_paper_estimate(config, 40) == 10 * 16 * 8 * 2048
    assert run_paper_estimate(config, 38) == 10 * 16 * 8 * 2048


@pytest.mark.slow
def test_a_real_run_counts_each_generation_batch_once(tiny_run):
    # 2 JustRL steps; each: 2 prompts x 4 rollouts = 8 completions, split over steps_per_generation = 2 updates
    assert tiny_run.args.steps_per_generation == 2 and tiny_run.token_budget is not None
    logs = [h for h in tiny_run.state.log_history if "reward" in h]
    assert len(logs) == 2  # one log entry = one generation batch
    generated = sum(entry["completions/mean_length"] * 8 for entry in logs)  # TRL's mean over the 8 completions
    assert [entry[TOKENS_GENERATED] for entry in logs] == [pytest.approx(logs[0]["completions/mean_length"] * 8),
                                                            pytest.approx(generated)]
    # trained = prompt + completion tokens, once per rollout: TRL's own cumulative `num_tokens`
    assert [entry[TOKENS_TRAINED] for entry in logs] == [entry["num_tokens"] for entry in logs]
    assert tiny_run.token_budget.tokens_trained == tiny_run.state.num_input_tokens_seen
    assert 0 < logs[-1][TOKENS_GENERATED] < logs[-1][TOKENS_TRAINED]
    # the paper estimate for this run: 2 steps x 2 prompts x 4 rollouts x (1,024 + 8) context
    assert all(entry[PAPER_ESTIMATE] == 2 * 2 * 4 * 1032 for entry in logs)
    assert [entry[RL_STEP] for entry in logs] == [1.0, 2.0]

    summary = summarize_run(tiny_run.args.output_dir)
    assert summary.tokens_generated == tiny_run.token_budget.tokens_generated
    assert f"trained {tiny_run.token_budget.tokens_trained:,}" in format_summary(summary)
    assert "estimate for this run: 16,512" in format_summary(summary)
    # trainer.save_state() after training writes the totals as the callback's state too
    saved = tiny_run.state.stateful_callbacks["TokenBudget"]["args"]
    assert saved == {"tokens_generated": tiny_run.token_budget.tokens_generated,
                     "tokens_trained": tiny_run.token_budget.tokens_trained}


def test_a_resumed_run_continues_the_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    args = JustRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=40)
    fresh = TokenBudget()
    fresh.add(generated=100, trained=300)
    state = TrainerState(stateful_callbacks=[fresh])  # as a checkpoint saves it
    state.global_step, state.max_steps = 8, 40

    resumed = TokenBudget()
    resumed.on_train_begin(args, state, TrainerControl())
    resumed.add(generated=10, trained=20)
    assert (resumed.tokens_generated, resumed.tokens_trained) == (110, 320)
    assert resumed.logs(global_step=8)[RL_STEP] == 2.0  # 4 updates per JustRL step

    # a checkpoint written before the callback existed: continue from its last logged counts
    old = TrainerState(log_history=[{TOKENS_GENERATED: 7, TOKENS_TRAINED: 9, "step": 4}])
    old.global_step, old.max_steps = 8, 40
    resumed.on_train_begin(args, old, TrainerControl())
    assert (resumed.tokens_generated, resumed.tokens_trained) == (7, 9)
    assert "TokenBudget" in old.stateful_callbacks  # transformers' checkpointing needs the entry

    state.global_step = 0  # a fresh TrainerState starts from zero
    resumed.on_train_begin(args, state, TrainerControl())
    assert (resumed.tokens_generated, resumed.tokens_trained) == (0, 0)


@pytest.mark.slow
def test_a_real_resume_continues_the_counts(tmp_path, tiny_model_path):
    from trl_justrl import JustRLTrainer
    from trl_justrl.data import load_training_data

    def run(max_steps, resume=None):
        args = JustRLConfig(
            output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", prompts_per_step=2,
            prompts_per_update=1, num_generations=4, per_device_train_batch_size=4, max_completion_length=8,
            warmup_rl_steps=0, save_every_rl_steps=None, save_strategy="steps", save_steps=2, max_steps=max_steps,
            logging_steps=2, gradient_checkpointing=False, seed=0,
        )
        trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"], args=args,
                                train_dataset=load_training_data("synthetic", synthetic_size=16))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    first = run(2)  # one JustRL step, checkpoint-2 holds its counts
    resumed = run(4, resume=str(tmp_path / "checkpoint-2"))
    budget = resumed.token_budget
    logs = [h for h in resumed.state.log_history if "reward" in h]  # step 2 (from the checkpoint) and step 4
    assert [h["step"] for h in logs] == [2, 4]
    assert budget.tokens_generated == pytest.approx(sum(h["completions/mean_length"] * 8 for h in logs))
    assert budget.tokens_generated > first.token_budget.tokens_generated
    assert budget.tokens_trained == resumed.state.num_input_tokens_seen > first.token_budget.tokens_trained
