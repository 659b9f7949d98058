"""JustRLTrainer / JustRLConfig as drop-ins for GRPOTrainer / GRPOConfig: TRL's kinds of inputs and features.

Real training steps on CPU with tiny models built from configs (SmolLM2 tokenizer): plain-text prompts, iterable data
sets, LoRA, several weighted rewards, a reward model, named eval sets, mask_truncated_completions, a mixture-of-experts
model, log_completions and callbacks; and the config errors a TRL user meets first.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import GRPOTrainer

from trl_justrl import BatchGeometryError, JustRLConfig, JustRLTrainer
from trl_justrl.data import PromptLengthFilter, load_training_data

pytestmark = pytest.mark.slow

LONG_PROBLEM = "Add these numbers: " + " + ".join(["1"] * 300)


def plain_text_rows(n: int = 8) -> list[dict]:
    """TRL's "standard" format: the prompt is a plain string."""
    return [{"prompt": f"What is {i} + {i}?", "ground_truth": str(2 * i)} for i in range(n)]


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in before if not torch.equal(before[k], after[k].cpu())]


def test_signature_is_grpo_trainers():
    """GRPOTrainer's parameters in its order; what the project adds is keyword-only, after them."""
    ours = inspect.signature(JustRLTrainer.__init__).parameters
    theirs = list(inspect.signature(GRPOTrainer.__init__).parameters)
    assert list(ours)[: len(theirs)] == theirs
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in list(ours)[len(theirs):])
    assert list(ours)[len(theirs):] == ["prompt_filter"]


def test_plain_text_prompts_are_measured_as_trl_renders_them_and_train(tmp_path, tiny_model_path, tokenizer,
                                                                       tiny_config):
    rows = plain_text_rows() + [{"prompt": LONG_PROBLEM, "ground_truth": "300"}]
    length_filter = PromptLengthFilter(tokenizer, 64)
    # a plain string is tokenized as is (TRL: processing_class(text=prompts)), no chat template
    assert length_filter.lengths([rows[0]["prompt"]]) == [len(tokenizer(text=rows[0]["prompt"])["input_ids"])]
    chat = [{"role": "user", "content": rows[0]["prompt"]}]
    templated = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert length_filter.lengths([chat]) == [len(templated["input_ids"])]

    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict", "test_length_parity"],
                            args=tiny_config(tmp_path, max_steps=2, max_prompt_length=64),
                            train_dataset=Dataset.from_list(rows))
    assert trainer.prompts_dropped_too_long == 1 and len(trainer.train_dataset) == 8
    trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.state.log_history[0]["data/prompts_dropped_too_long"] == 1


def test_iterable_train_and_eval_sets_are_filtered_lazily(tmp_path, tiny_model_path, tiny_config):
    rows = [{"prompt": LONG_PROBLEM, "ground_truth": "300"}] + plain_text_rows()
    train = Dataset.from_list(rows).to_iterable_dataset()
    evaluation = Dataset.from_list(rows[:5]).to_iterable_dataset()
    args = tiny_config(tmp_path, max_steps=2, max_prompt_length=64, per_device_eval_batch_size=4)
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["test_length_parity"], args=args,
                            train_dataset=train, eval_dataset=evaluation)
    assert trainer.prompts_dropped_too_long == 0  # nothing is read before training starts
    trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.prompts_dropped_too_long == 1  # counted as the stream went by
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_reward" in metrics


@pytest.mark.parametrize("packed", [False, True])
def test_lora_trains_the_adapters_only(tmp_path, tiny_model_path, tiny_config, packed):
    from peft import LoraConfig, PeftModel

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = tiny_config(tmp_path, max_steps=2, weight_decay=0.0, max_tokens_per_microbatch=260 if packed else None)
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["test_length_parity"], args=args,
                            peft_config=peft_config, train_dataset=load_training_data("synthetic", synthetic_size=8))
    assert isinstance(trainer.model, PeftModel)
    assert trainer.model.config._attn_implementation == ("justrl_packed_sdpa" if packed else "sdpa")
    before = weights(trainer.model)
    trainer.train()
    moved = changed(before, weights(trainer.model))
    assert moved and all("lora_" in k for k in moved), moved


def test_several_rewards_are_weighted_as_trl_weights_them(tmp_path, tiny_model_path, tiny_config):
    args = tiny_config(tmp_path, reward_weights=[1.0, 0.5])
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict", "test_length_parity"],
                            args=args, train_dataset=load_training_data("synthetic", synthetic_size=8))
    trainer.train()
    for entry in (h for h in trainer.state.log_history if "reward" in h):
        expected = 1.0 * entry["rewards/dapo_strict/mean"] + 0.5 * entry["rewards/test_length_parity/mean"]
        assert entry["reward"] == pytest.approx(expected)


def test_a_reward_model_scores_completions(tmp_path, tiny_model_path, tokenizer, tiny_config):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_model_path, num_labels=1)
    reward_model_path = tmp_path / "tiny-reward-model"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(reward_model_path)
    tokenizer.save_pretrained(reward_model_path)
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=[str(reward_model_path)],
                            args=tiny_config(tmp_path / "run", max_steps=2),
                            train_dataset=load_training_data("synthetic", synthetic_size=8))
    trainer.train()
    entry = next(h for h in trainer.state.log_history if "reward" in h)
    assert entry["rewards/tiny-reward-model/mean"] == pytest.approx(entry["reward"])
    assert entry["reward_std"] > 0  # a real model's scores, not a constant


def test_named_eval_sets_are_filtered_and_evaluated_each(tmp_path, tiny_model_path, tiny_config):
    data = load_training_data("synthetic", synthetic_size=8)
    hard = Dataset.from_list(plain_text_rows(4) + [{"prompt": LONG_PROBLEM, "ground_truth": "300"}])
    args = tiny_config(tmp_path, max_steps=2, max_prompt_length=200, per_device_eval_batch_size=4)
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["test_length_parity"], args=args,
                            train_dataset=data, eval_dataset={"easy": data.select(range(4)), "hard": hard})
    assert len(trainer.eval_dataset["hard"]) == 4  # the long prompt is gone
    metrics = {}
    for name in ("easy", "hard"):
        metrics |= trainer.evaluate(eval_dataset=trainer.eval_dataset[name], metric_key_prefix=f"eval_{name}")
    assert {"eval_easy_loss", "eval_hard_loss"} <= set(metrics)
    assert sum("eval_reward" in h for h in trainer.state.log_history) == 2  # TRL's eval metrics, once per set


@pytest.mark.parametrize("mask_truncated", [True, False])
def test_mask_truncated_completions_removes_them_from_the_loss(tmp_path, tiny_model_path, tiny_config,
                                                               mask_truncated):
    """A random model never stops within 8 tokens: masked, nothing is learned (no weight decay to hide it)."""
    args = tiny_config(tmp_path, max_steps=2, weight_decay=0.0, mask_truncated_completions=mask_truncated)
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["test_length_parity"], args=args,
                            train_dataset=load_training_data("synthetic", synthetic_size=8))
    before = weights(trainer.model)
    trainer.train()
    entry = next(h for h in trainer.state.log_history if "reward" in h)
    assert entry["completions/clipped_ratio"] == 1.0
    assert bool(changed(before, weights(trainer.model))) is not mask_truncated


def test_mixture_of_experts_model_trains_with_its_router_loss(tmp_path, tokenizer, tiny_config):
    from transformers import Qwen3MoeConfig

    torch.manual_seed(0)
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4,
        num_experts_per_tok=2, output_router_logits=False, router_aux_loss_coef=0.01, tie_word_embeddings=True,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # output_router_logits off in the config: transformers' Qwen3-MoE then skips the router loss in `generate` (where
    # its cached decoding breaks it); TRL still asks for router logits in every training forward
    path = tmp_path / "tiny-moe"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    trainer = JustRLTrainer(model=str(path), reward_funcs=["test_length_parity"],
                            args=tiny_config(tmp_path / "run", max_steps=2),
                            train_dataset=load_training_data("synthetic", synthetic_size=8))
    assert trainer.aux_loss_enabled and trainer.router_aux_loss_coef == 0.01
    trainer.train()
    entry = next(h for h in trainer.state.log_history if "reward" in h)
    assert entry["aux_loss"] > 0  # TRL's load-balancing loss is in the objective and logged


def test_log_completions_and_callbacks(tmp_path, tiny_model_path, tiny_config):
    class Recorder(TrainerCallback):
        def __init__(self):
            self.steps, self.logs = 0, []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs or {}))

    recorder = Recorder()
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"],
                            args=tiny_config(tmp_path, log_completions=True), callbacks=[recorder],
                            train_dataset=load_training_data("synthetic", synthetic_size=8))
    trainer.train()
    assert recorder.steps == 4
    assert any("clip_ratio/dual_mean" in logs for logs in recorder.logs)
    table = pd.read_parquet(Path(tmp_path) / "completions" / "completions_00002.parquet")
    assert {"prompt", "completion", "dapo_strict", "prediction", "advantage"} <= set(table.columns)
    assert len(table) == 8  # one generation batch: 2 prompts x 4 rollouts


# ---- config: what a TRL user meets first -------------------------------------------------------------------------


def config(tmp_path, **overrides) -> JustRLConfig:
    return JustRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **overrides)


def test_trl_batch_fields_that_cannot_hold_a_group_fail_with_the_fix(tmp_path):
    with pytest.raises(BatchGeometryError) as error:
        config(tmp_path, prompts_per_step=None, prompts_per_update=None)
    message = str(error.value)
    assert "per_device_train_batch_size (1)" in message and "num_generations = 8" in message
    assert "multiple of 8" in message
    args = config(tmp_path, prompts_per_step=None, prompts_per_update=None, per_device_train_batch_size=8)
    assert args.generation_batch_size == 8 and args.batch_geometry is None


def test_delta_is_the_dual_clip_constant(tmp_path):
    assert config(tmp_path).delta == 10.0
    assert config(tmp_path, clip_ratio_c=5.0).delta == 5.0
    assert config(tmp_path, delta=10.0).delta == 10.0
    with pytest.raises(ValueError, match=r"delta \(4.0\) and clip_ratio_c \(10.0\) disagree"):
        config(tmp_path, delta=4.0)


def test_grpo_run_trainer_with_trls_defaults_trains(tmp_path, tiny_model_path):
    """GRPORunConfig left at TRL's defaults (no prompt cap, plain-text prompts) trains as GRPOTrainer would: the
    budget counts tokens and leaves out the paper estimate, which needs a prompt cap."""
    from trl_justrl import GRPORunConfig, GRPORunTrainer

    args = GRPORunConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                         per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1,
                         save_strategy="no")
    assert args.max_prompt_length is None
    trainer = GRPORunTrainer(model=str(tiny_model_path), reward_funcs=lambda completions, **_: [0.0, 1.0] * 2,
                             args=args, train_dataset=Dataset.from_list(plain_text_rows(4)))
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["budget/tokens_generated"] > 0 and logged["budget/tokens_trained"] > 0
    assert "budget/paper_estimate_tokens" not in logged
