"""Open-RS through this project: the trainer switch, its prompt layout, its rewards as they ran, its KL objective
(TRL's own), its recipes and layouts, its evaluation protocol, and the CPU smoke recipe end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SHARED_BENCHMARKS

from trl_justrl.data import load_training_data, normalize_row
from trl_justrl.data_errors import DataError
from trl_justrl.recipe_reader import make_parser, parse_args, trainer_choice
from trl_justrl.rewards import get_reward_funcs
from trl_justrl.rewards.open_rs import GOLD_UNPARSED_METRIC, OpenRSAccuracy, OpenRSCosineAsRun, cosine_scaled_reward
from trl_justrl.trainer import TRAINERS

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "launch" / "recipes"
SYSTEM = "You are a careful solver."
COSINE = dict(min_value_wrong=0.0, max_value_wrong=-0.5, min_value_correct=0.5, max_value_correct=1.0)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ---- the trainer switch -------------------------------------------------------------------------------------------


def test_trainer_key_picks_the_config_class(tmp_path):
    from trl_justrl import GRPORunConfig, JustRLConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer: grpo\nmodel_name_or_path: x\n")
    assert trainer_choice(["--config", str(recipe)]) == "grpo"
    assert trainer_choice(["--config", str(recipe), "--trainer", "justrl"]) == "justrl"  # the command line wins
    assert trainer_choice([]) == "justrl"
    assert make_parser(["--config", str(recipe)]).dataclass_types[1] is GRPORunConfig
    assert make_parser([]).dataclass_types[1] is JustRLConfig
    recipe.write_text("trainer: ppo\n")
    with pytest.raises(ValueError, match=r"trainer: 'ppo' \(in .*r.yaml\) is not one of \['grpo', 'justrl'\]"):
        trainer_choice(["--config", str(recipe)])


def test_grpo_trainer_keeps_trls_objective():
    """GRPORunTrainer adds run services only: every method that computes the objective is TRL's own."""
    from trl import GRPOTrainer

    from trl_justrl import GRPORunTrainer, JustRLTrainer

    assert TRAINERS == {"justrl": JustRLTrainer, "grpo": GRPORunTrainer}
    for name in ("compute_loss", "_compute_loss", "_get_per_token_logps_and_entropies", "_prepare_inputs",
                 "_compute_advantages" if hasattr(GRPOTrainer, "_compute_advantages") else "compute_loss"):
        assert getattr(GRPORunTrainer, name) is getattr(GRPOTrainer, name), name
    assert JustRLTrainer.compute_loss is not GRPOTrainer.compute_loss  # (the JustRL metric hook, for contrast)


def test_justrl_still_refuses_the_open_rs_objective(tmp_path, tiny_config, tiny_model_path):
    from trl_justrl import JustRLTrainer

    with pytest.raises(ValueError, match="beta"):
        JustRLTrainer(model=str(tiny_model_path), args=tiny_config(tmp_path, beta=0.04))


# ---- the prompt layout --------------------------------------------------------------------------------------------


def test_open_rs_row_becomes_system_prompt_plus_problem(tokenizer):
    row = {"problem": "Find $x$ if $2x = 6$.", "solution": "Divide: $x = \\boxed{3}$.", "answer": "3",
           "source": "amc"}
    out = normalize_row(row, where="open-rs: row 0", suffix=False, system_prompt=SYSTEM)
    assert out == {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Find $x$ if $2x = 6$."}],
        "ground_truth": "3",
        "solution": "Divide: $x = \\boxed{3}$.",
    }
    rendered = tokenizer.apply_chat_template(out["prompt"], tokenize=False, add_generation_prompt=True)
    assert rendered.index(SYSTEM) < rendered.index("Find $x$") and "Please reason step by step" not in rendered
    # JustRL's layout is unchanged: no system turn, the suffix after a blank line
    justrl = normalize_row(row, where="x")["prompt"]
    assert justrl == [{"role": "user", "content": "Find $x$ if $2x = 6$.\n\nPlease reason step by step, and put your "
                       "final answer within \\boxed{}."}]
    # a system turn in the data is replaced by the recipe's
    replaced = normalize_row({"prompt": [{"role": "system", "content": "old"}, {"role": "user", "content": "q"}],
                              "answer": "1"}, where="x", suffix=False, system_prompt=SYSTEM)["prompt"]
    assert replaced == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "q"}]


def test_open_rs_files_load_with_named_errors(tmp_path):
    rows = [{"problem": "1+1?", "solution": "It is $\\boxed{2}$.", "answer": "2"},
            {"problem": "2+2?", "solution": "It is $\\boxed{4}$.", "answer": "4"}]
    good = tmp_path / "open_rs.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_training_data(str(good), suffix=False, system_prompt=SYSTEM)
    assert sorted(data.column_names) == ["ground_truth", "prompt", "solution"]
    assert data[1]["solution"] == rows[1]["solution"]
    assert data[0]["prompt"][0] == {"role": "system", "content": SYSTEM}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"problem": "3?", "solution": ["x"], "answer": "3"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: field 'solution' must be text"):
        load_training_data(str(bad), suffix=False)
    synthetic = load_training_data("synthetic", synthetic_size=3, suffix=False, system_prompt=SYSTEM)
    turns = [m["content"] for m in synthetic[0]["prompt"]]
    assert turns[0] == SYSTEM and not any("Please reason" in t for t in turns)  # no suffix in any turn
    assert synthetic[0]["solution"].endswith(f"\\boxed{{{synthetic[0]['ground_truth']}}}$.")


# ---- rewards as they ran ------------------------------------------------------------------------------------------


def test_accuracy_reward_as_it_ran():
    reward = OpenRSAccuracy()
    logged: list[tuple[str, float]] = []
    solutions = ["So the answer is $\\boxed{\\frac{1}{2}}$.", "Hence $\\boxed{12}$.", "Hence $\\boxed{12}$.",
                 "no mathematics in this solution"]
    completions = [chat("<think>...</think> The answer is \\boxed{0.5}."),  # symbolic equality: 1.0
                   chat("I think it is \\boxed{13}."),  # wrong: 0.0
                   chat("no answer at all"),  # nothing to parse: 0.0
                   chat("anything")]  # gold does not parse: 1.0 (the original's rule)
    rewards = reward(completions, solution=solutions, log_metric=lambda k, v: logged.append((k, v)))
    assert rewards == [1.0, 0.0, 0.0, 1.0]
    assert (GOLD_UNPARSED_METRIC, 0.25) in logged and ("accuracy", 1 / 3) in logged
    assert (reward.scored, reward.gold_unparsed) == (4, 1)
    # the prediction is LaTeX only (never sympy's parse_expr on model text); boxed answers come first
    assert reward([chat("x = 7 but \\boxed{12}")], solution=["$\\boxed{12}$"]) == [1.0]
    with pytest.raises(DataError, match="solution"):
        reward([chat("x")], ground_truth=["1"])


def test_faithful_cosine_hand_computed_including_beyond_max_len():
    max_len = 100
    reward = OpenRSCosineAsRun(max_len, **COSINE)
    right, wrong = "\\boxed{12}", "\\boxed{13}"

    def text(core: str, length: int) -> str:  # a completion of exactly `length` characters ending with the box
        return " " * (length - len(core)) + core

    lengths = [10, 50, 100, 150, 200]
    got_right = reward([chat(text(right, n)) for n in lengths], solution=["$\\boxed{12}$"] * 5)
    got_wrong = reward([chat(text(wrong, n)) for n in lengths], solution=["$\\boxed{12}$"] * 5)
    # reward = at_max + (at_zero - at_max) * (1 + cos(pi * n / max_len)) / 2, with n in characters, unclamped
    want_right = [0.5 + 0.5 * (1 + math.cos(math.pi * n / max_len)) / 2 for n in lengths]
    want_wrong = [-0.5 + 0.5 * (1 + math.cos(math.pi * n / max_len)) / 2 for n in lengths]
    assert got_right == pytest.approx(want_right) and got_wrong == pytest.approx(want_wrong)
    assert got_right[2] == pytest.approx(0.5) and got_right[3] == pytest.approx(0.75)  # turns back up past max_len
    assert got_right[4] == pytest.approx(1.0) and got_wrong[4] == pytest.approx(0.0)  # at 2 x max_len: length 0 again
    # the project's corrected variant clamps: past max_len it stays at the end value
    assert cosine_scaled_reward(True, 150, max_len, **COSINE) == pytest.approx(0.5)
    assert cosine_scaled_reward(True, 150, max_len, clamp=False, **COSINE) == pytest.approx(0.75)
    # an unparseable gold gives 1.0 here too, as the original
    assert reward([chat(wrong)], solution=["prose only"]) == [1.0] and reward.gold_unparsed == 1


def test_recipe_rewards_resolve_from_the_config(tmp_path):
    from trl_justrl import GRPORunConfig

    args = GRPORunConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=6,
                         num_generations=6, cosine_max_len=3584)
    accuracy, cosine, fmt = get_reward_funcs(["open_rs_accuracy", "open_rs_cosine_as_run", "open_rs_format"], args)
    assert accuracy.__name__ == "open_rs_accuracy" and cosine.max_len == 3584 and cosine.values == COSINE
    assert fmt([chat("a\n</think>\nb"), chat("a</think>b")]) == [1.0, 0.0]


# ---- the KL term is TRL's, and it is in the loss ---------------------------------------------------------------


def _grpo_trainer(tmp_path, tiny_model_path, beta: float, **overrides):
    from trl_justrl import GRPORunConfig, GRPORunTrainer

    args = GRPORunConfig(**{
        "output_dir": str(tmp_path), "use_cpu": True, "bf16": False, "report_to": "none", "beta": beta,
        "loss_type": "grpo", "num_generations": 4, "per_device_train_batch_size": 4, "max_completion_length": 8,
        "gradient_checkpointing": False, "vllm_importance_sampling_correction": False, "save_strategy": "no",
        **overrides})
    data = load_training_data("synthetic", synthetic_size=8, suffix=False, system_prompt=SYSTEM)
    return GRPORunTrainer(model=str(tiny_model_path), reward_funcs=["open_rs_accuracy"], args=args,
                          train_dataset=data)


def _batch_away_from_the_reference(trainer) -> dict:
    """Moves the policy away from its reference (a KL term with a gradient) and returns a 4-row batch: prompt and
    completion ids and masks, the joined ids and mask, and the reference log-probs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(5, 1000, (4, 6), generator=g)
    completion_ids = torch.randint(5, 1000, (4, 5), generator=g)
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([torch.ones_like(prompt_ids), completion_mask], 1)
    with torch.no_grad():
        ref_logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask, 5)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "completion_mask": completion_mask,
            "ids": ids, "mask": mask, "ref_logps": ref_logps, "generator": g}


def test_kl_term_changes_the_gradient_and_matches_an_independent_loss(tmp_path, tiny_model_path):
    """With beta > 0 a reference model is loaded and TRL's grpo loss is mean over sequences of the per-sequence token
    mean of (-A * ratio + beta * k3 KL); checked against that formula, and beta = 0 gives another gradient."""
    trainer = _grpo_trainer(tmp_path / "kl", tiny_model_path, beta=0.5)
    assert trainer.ref_model is not None  # the reference model is loaded
    model = trainer.model
    batch = _batch_away_from_the_reference(trainer)
    prompt_ids, completion_ids, completion_mask = batch["prompt_ids"], batch["completion_ids"], batch["completion_mask"]
    ids, mask, ref_logps = batch["ids"], batch["mask"], batch["ref_logps"]
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75])
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": None,
              "ref_per_token_logps": ref_logps, "num_items_in_batch": completion_mask.sum()}

    def loss_and_grads(beta: float):
        trainer.beta = beta
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(inputs))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; one micro-batch per update here
    loss_kl, grads_kl = loss_and_grads(0.5)
    loss_0, grads_0 = loss_and_grads(0.0)
    # the independent computation (on-policy: ratio = 1 with the gradient of log-probs)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, 5)
    kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    per_token = -advantages[:, None] * torch.exp(logps - logps.detach()) + 0.5 * kl
    m = completion_mask.float()
    expected = ((per_token * m).sum(1) / m.sum(1)).mean()
    assert loss_kl.item() == pytest.approx(expected.item(), abs=1e-5)
    assert loss_0.item() == pytest.approx(((-advantages[:, None] * m).sum(1) / m.sum(1)).mean().item(), abs=1e-5)
    assert kl[m.bool()].mean() > 0
    assert any(not torch.allclose(a, b, atol=1e-7) for a, b in zip(grads_kl, grads_0, strict=True))


def test_accuracy_verifies_in_open_rs_order():
    """Open-RS called verify(prediction, gold); math-verify's verify is not symmetric. For an equation-valued gold,
    that order accepts the bare right-hand side, which the other order rejects: the reward follows Open-RS."""
    from math_verify import verify

    from trl_justrl.rewards.open_rs import parse_gold, parse_prediction

    solution = "The plane is $\\boxed{5x - 7y + 11z + 4 = 0}$."
    completion = "Setting it up...\n</think>\nSo the answer is $\\boxed{0}$."
    gold, prediction = parse_gold(solution), parse_prediction(completion)
    assert verify(prediction, gold) and not verify(gold, prediction)
    assert OpenRSAccuracy()([completion], solution=[solution]) == [1.0]
    assert OpenRSAccuracy()(["So the answer is $\\boxed{5}$."], solution=[solution]) == [0.0]


def pinned_trl_loss(logps, old_logps, ref_logps, advantages, mask, beta: float, epsilon: float = 0.2):
    """Open-RS's TRL (commit 69ad852, grpo_trainer.py), written out: per token -min(r * A, clip(r) * A) + beta * k3,
    then the micro-batch's completion-token mean. k3 = exp(ref - logp) - (ref - logp) - 1, with no ratio factor."""
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    adv = advantages[:, None]
    k3 = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    per_token = -torch.minimum(ratio * adv, clipped * adv) + beta * k3
    return (per_token * mask).sum() / mask.sum()


@pytest.mark.parametrize("bias_correction", [False, True])
def test_open_rs_objective_equals_the_pinned_trls_loss_and_gradient(tmp_path, tiny_model_path, bias_correction):
    """The Open-RS recipes' objective (loss_type bnpo, use_bias_correction_kl false) trains the pinned TRL's loss:
    same value and same gradient as the formula written out, off-policy and with a non-zero KL. TRL 1.16's default
    (bias correction on) keeps the value on-policy but changes the gradient: the check can fail."""
    trainer = _grpo_trainer(tmp_path, tiny_model_path, beta=0.04, loss_type="bnpo",
                            use_bias_correction_kl=bias_correction, epsilon=0.2)
    model = trainer.model
    batch = _batch_away_from_the_reference(trainer)  # a non-zero KL with a gradient
    prompt_ids, completion_ids, completion_mask = batch["prompt_ids"], batch["completion_ids"], batch["completion_mask"]
    ids, mask, ref_logps, g = batch["ids"], batch["mask"], batch["ref_logps"], batch["generator"]
    with torch.no_grad():
        current = trainer._get_per_token_logps_and_entropies(model, ids, mask, 5)[0]
    old_logps = current + 0.3 * torch.randn(current.shape, generator=g)  # off-policy: ratios inside and beyond the clip
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75])
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old_logps,
              "ref_per_token_logps": ref_logps, "num_items_in_batch": completion_mask.sum()}
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(inputs))
    loss.backward()
    trained = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logps = trainer._get_per_token_logps_and_entropies(model, ids, mask, 5)[0]
    expected = pinned_trl_loss(logps, old_logps, ref_logps, advantages, completion_mask.float(), beta=0.04)
    expected.backward()
    independent = [p.grad.clone() for p in model.parameters()]
    ratio = torch.exp(logps.detach() - old_logps)[completion_mask.bool()]
    assert ((ratio < 0.8) | (ratio > 1.2)).any() and ((ratio > 0.8) & (ratio < 1.2)).any()
    differs = max((a - b).abs().max().item() for a, b in zip(trained, independent, strict=True))
    scale = max(b.abs().max().item() for b in independent)
    if bias_correction:
        assert differs > 1e-3 * scale  # TRL 1.16's default is another objective
    else:
        assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
        assert differs <= 1e-5 * scale


# ---- recipes and layouts ------------------------------------------------------------------------------------------

RECIPE_VALUES = {  # ../shared/RECIPE.md, "The other seed: Open-RS"
    "beta": 0.04, "loss_type": "bnpo", "use_bias_correction_kl": False, "epsilon": 0.2, "epsilon_high": None,
    "num_iterations": 1,
    "scale_rewards": "group", "num_generations": 6, "learning_rate": 1e-6, "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.1}, "warmup_steps": 0.1, "max_steps": 500, "num_train_epochs": 1.0,
    "bf16": True, "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False},
    "seed": 42, "temperature": 0.7, "max_prompt_length": 512, "save_steps": 50, "hub_strategy": "every_save",
    "log_completions": True, "vllm_importance_sampling_correction": False,
}
EXPERIMENTS = {
    "open_rs_exp1": ("knoveleng/open-s1", ["open_rs_accuracy", "open_rs_format"], [2.0, 1.0], 4096, False),
    "open_rs_exp2": ("knoveleng/open-rs", ["open_rs_accuracy", "open_rs_format"], [2.0, 1.0], 3584, False),
    "open_rs_exp3": ("knoveleng/open-rs", ["open_rs_format", "open_rs_cosine_as_run"], [1.0, 2.0], 3584, True),
}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_open_rs_recipes_hold_the_papers_values(name, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    recipe = RECIPES / f"{name}.yaml"
    values = yaml.safe_load(recipe.read_text())
    assert values["trainer"] == "grpo"
    for key, want in RECIPE_VALUES.items():
        assert values.get(key, want if key in ("epsilon_high",) else "missing") == want, key
    dataset, rewards, weights, cap, english = EXPERIMENTS[name]
    assert values["dataset_name"] == dataset and values["reward_funcs"] == rewards
    assert values.get("reward_weights") == weights and values["max_completion_length"] == cap
    assert values["system_prompt"].endswith("NOT use other languages.") == english
    assert values["system_prompt"].startswith("A conversation between User and Assistant.")
    assert "\\boxed{{}} ." in values["system_prompt"] and values["prompt_suffix"] is False
    if name == "open_rs_exp3":
        assert values["cosine_max_len"] == 3584
    from trl_justrl.policy_update.geometry import compute_batch_geometry

    g = compute_batch_geometry(world_size=3, prompts_per_step=values["prompts_per_step"],
                               prompts_per_update=values["prompts_per_update"],
                               num_generations=values["num_generations"],
                               max_micro_batch=values["per_device_train_batch_size"])
    assert (g.per_device_train_batch_size, g.gradient_accumulation_steps, g.completions_per_update) == (6, 4, 72)
    script, training, model = parse_args(
        ["--config", str(recipe), "--use_cpu", "true", "--bf16", "false", "--report_to", "none"])
    assert script.trainer == "grpo" and type(training).__name__ == "GRPORunConfig"
    assert model.model_name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


def test_open_rs_layouts_plan_and_launch(capsys):
    from trl_justrl.cluster.launcher import multinode_commands
    from trl_justrl.cluster.plan import main as plan_main
    from trl_justrl.cluster.plan import make_plan

    for name, cap in (("open_rs_exp1", 4608), ("open_rs_exp2", 4096), ("open_rs_exp3", 4096)):
        recipe = f"launch/recipes/{name}.yaml"
        plan = make_plan(1, 4, None, recipe)  # the recipe's own layout: 1 GPU serves vLLM, 3 train
        g = plan.geometry
        assert plan.topology.vllm_gpus == 1 and plan.topology.training_processes == 3
        assert (g.per_device_train_batch_size, g.gradient_accumulation_steps, g.completions_per_update) == (6, 4, 72)
        assert plan_main(["--nodes", "1", "--gpus-per-node", "4", "--config", recipe]) == 0
        out = capsys.readouterr().out
        assert "trainer: grpo" in out and "GPUs 0 serve vLLM" in out and "GPUs 1-3 train" in out
        assert f"--max-model-len {cap}" in out and "--gpu-memory-utilization 0.7" in out
        assert "CUDA_VISIBLE_DEVICES=1,2,3 accelerate launch" in out and "--num_processes 3" in out
        colocated = make_plan(1, 4, 0, recipe)  # the alternative: all 4 GPUs train and generate
        g = colocated.geometry
        assert colocated.topology.mode == "colocate"
        assert (g.per_device_train_batch_size, g.gradient_accumulation_steps, g.completions_per_update) == (6, 3, 72)
    env = {"NNODES": "1", "GPUS_PER_NODE": "4", "MASTER_ADDR": "127.0.0.1",
           "RECIPE": "launch/recipes/open_rs_exp3.yaml"}
    plan, commands, _ = multinode_commands(env, None, None, True, ())
    assert [c.role for c in commands] == ["vllm", "train"] and commands[0].env["CUDA_VISIBLE_DEVICES"] == "0"


# ---- the evaluation protocol -------------------------------------------------------------------------------------


def test_open_rs_protocol_settings_and_table():
    from trl_justrl.evaluation.protocols import PROTOCOLS
    from trl_justrl.evaluation.table import OPEN_RS_TABLE, render_table
    from trl_justrl.prompts import eval_messages

    p = PROTOCOLS["open-rs"]
    assert p.benchmarks == ("AIME24", "MATH-500", "AMC23", "Minerva", "OlympiadBench")
    assert (p.n, p.temperature, p.top_p, p.max_new_tokens) == (1, 0.6, 0.95, 32768)
    turn = eval_messages("What is 2+2?", p.prompt_style)[0]["content"]
    assert turn.startswith("Solve the following math problem efficiently and clearly.") and turn.endswith(
        "Think step by step before answering.\n\nWhat is 2+2?") and "$\\boxed{ANSWER}$" in turn
    table = render_table("mine", {"AIME24": 30.0, "MATH-500": 80.0}, table=OPEN_RS_TABLE).splitlines()
    assert table[0] == "| model | AIME24 | MATH-500 | AMC23 | Minerva | OlympiadBench | Avg |"
    assert "| Open-RS3 (50 steps) | 46.7 | 84.4 | 72.5 | 26.8 | 51.3 | 56.3 |" in table
    assert table[-1] == "| **mine** | 30.00 | 80.00 | - | - | - | 55.00 (2/5) |"


def test_open_rs_protocol_end_to_end_on_cpu(tmp_path, tiny_model_path):
    """The five Open-RS benchmarks from ../shared when present (else one written here), one sample per problem."""
    import pandas as pd

    from trl_justrl.evaluation.cli import main as cli_main


    data, names = SHARED_BENCHMARKS, ["AIME24", "MATH-500", "AMC23", "Minerva", "OlympiadBench"]
    if not (data / "AIME24" / "test.parquet").is_file():
        data, names = tmp_path / "data", ["AIME24"]
        (data / "AIME24").mkdir(parents=True)
        pd.DataFrame([{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]).to_parquet(
            data / "AIME24" / "test.parquet")
    out = tmp_path / "ev"
    assert cli_main(["--model", str(tiny_model_path), "--protocol", "open-rs", "--data-dir", str(data),
                     "--benchmarks", *names, "--limit", "2", "--backend", "transformers", "--max-new-tokens", "4",
                     "--output-dir", str(out), "--dtype", "float32"]) == 0
    for name in names:
        rows = [json.loads(line) for line in (out / name / "generations.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and {r["sample_index"] for r in rows} == {0}  # pass@1: one sample per problem
        meta = json.loads((out / name / "meta.json").read_text())
        assert meta["n"] == 1 and meta["settings"] == {"max_new_tokens": 4, "temperature": 0.6, "top_p": 0.95,
                                                        "seed": 0, "prompt_style": "open-rs"}
    results = (out / "results.md").read_text()
    assert results.startswith("Open-RS (pass@1); this run: pass@1") and "Open-RS2 (50 steps)" in results
    assert "JustRL-Nemotron" not in results


# ---- the CPU smoke recipe, end to end ----------------------------------------------------------------------------


def test_open_rs_smoke_recipe_trains_with_kl(tmp_path, smollm2_path):
    from trl_justrl.train import cli

    (tmp_path / "run" / "checkpoint-9").mkdir(parents=True)  # an earlier run's: the recipe overwrites the folder
    out = cli(["--config", str(RECIPES / "open_rs_smoke_cpu.yaml"), "--output_dir", str(tmp_path / "run"),
               "--print_summary", "false"])
    assert not (out / "checkpoint-9").exists()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "reward" in h]
    assert len(steps) == 2 and all("kl" in h for h in steps)  # TRL logs kl only with a reference model (beta > 0)
    assert steps[-1]["kl"] > 0  # the policy moved away from the loaded reference
    assert all("rewards/open_rs_accuracy/mean" in h and "rewards/open_rs_format/mean" in h for h in steps)
    assert (out / "model.safetensors").is_file()
