"""The ablation switches: DAPO overlong penalty, robust (symbolic) verifier, Open-RS format and cosine rewards, their
config fields, their resolution through the trainer, and the two ablation recipes."""

from __future__ import annotations

import faulthandler
import math
import threading
import time
from pathlib import Path

import pytest

import trl_justrl.rewards.inputs as reward_inputs
from trl_justrl import GRPORunConfig, JustRLConfig
from trl_justrl.rewards import get_reward_funcs, register_reward
from trl_justrl.rewards.dapo import DapoOverlongPenalty, RobustMathVerifier, dapo_score, dapo_strict, overlong_penalty
from trl_justrl.rewards.open_rs import CosineScaledAccuracy, cosine_scaled_reward, open_rs_format
from trl_justrl.trainer import _resolve_rewards, check_objective

# RECIPE.md "Ablations the paper ran" and Open-RS's knoveleng/open-rs src/open_r1/grpo.py, written out independently
RECIPE_BUFFER, RECIPE_FACTOR, RECIPE_MAX_LEN = 4096, 1.0, 15360
OPEN_RS_COSINE = {"min_value_wrong": 0.0, "max_value_wrong": -0.5, "min_value_correct": 0.5, "max_value_correct": 1.0}


def make_config(tmp_path, config_class=JustRLConfig, **overrides) -> JustRLConfig:
    return config_class(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **overrides)


def messages(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def dapo_formula(length: int, max_length: int, buffer: int, factor: float) -> float:
    """DAPO's soft overlong punishment as written in RECIPE.md (valid for length <= max_length)."""
    expected = max_length - buffer
    return min(0.0, -(length - expected) / buffer * factor)


# ---- overlong penalty -----------------------------------------------------------------------------------------

def edge_length(label: str, max_length: int, buffer: int) -> int:
    expected = max_length - buffer
    return {"L-B-1": expected - 1, "L-B": expected, "L-B+1": expected + 1, "midway": expected + buffer // 2,
            "L-1": max_length - 1, "L": max_length}[label]


@pytest.mark.parametrize(("max_length", "buffer", "factor"), [(RECIPE_MAX_LEN, RECIPE_BUFFER, RECIPE_FACTOR),
                                                               (100, 10, 0.5), (8, 4, 2.0)])
@pytest.mark.parametrize("label", ["L-B-1", "L-B", "L-B+1", "midway", "L-1", "L"])
def test_overlong_penalty_at_and_around_the_buffer_edges(max_length, buffer, factor, label):
    length = edge_length(label, max_length, buffer)
    assert overlong_penalty(length, max_length, buffer, factor) == pytest.approx(
        dapo_formula(length, max_length, buffer, factor), abs=1e-12
    )


def test_overlong_penalty_anchor_values_with_the_recipe_numbers():
    assert overlong_penalty(RECIPE_MAX_LEN - RECIPE_BUFFER, RECIPE_MAX_LEN) == 0.0  # the defaults are the recipe's
    assert overlong_penalty(RECIPE_MAX_LEN - RECIPE_BUFFER - 1, RECIPE_MAX_LEN) == 0.0
    assert overlong_penalty(RECIPE_MAX_LEN - RECIPE_BUFFER + 1, RECIPE_MAX_LEN) == pytest.approx(-1 / 4096)
    assert overlong_penalty(RECIPE_MAX_LEN - RECIPE_BUFFER // 2, RECIPE_MAX_LEN) == -0.5
    assert overlong_penalty(RECIPE_MAX_LEN, RECIPE_MAX_LEN) == -1.0
    assert overlong_penalty(0, RECIPE_MAX_LEN) == 0.0


@pytest.mark.parametrize("beyond", [1, 100, 10**6])
def test_overlong_penalty_is_clamped_beyond_max_length(beyond):
    assert overlong_penalty(RECIPE_MAX_LEN + beyond, RECIPE_MAX_LEN) == -RECIPE_FACTOR
    assert overlong_penalty(100 + beyond, 100, buffer=10, factor=0.5) == -0.5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(length=5, max_length=100, buffer=0), ValueError, "buffer must be at least 1"),
        (dict(length=5, max_length=100, buffer=101), ValueError, "must not exceed max_length"),
        (dict(length=5, max_length=100, buffer=10, factor=-1.0), ValueError, "factor"),
        (dict(length=5, max_length=100, buffer=10, factor=float("nan")), ValueError, "factor"),
        (dict(length=-1, max_length=100), ValueError, "length must be at least 0"),
        (dict(length=5.5, max_length=100), TypeError, "length must be an integer"),
        (dict(length=True, max_length=100), TypeError, "length must be an integer"),
        (dict(length=5, max_length=0, buffer=1), ValueError, "max_length must be at least 1"),
    ],
)
def test_overlong_penalty_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        overlong_penalty(**kwargs)


class CharTokenizer:
    """One token per character: enough to check the text fallback of the length-based rewards."""

    def __call__(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return {"input_ids": list(text)}


def test_overlong_reward_reads_completion_ids_and_logs_the_penalised_fraction(tmp_path):
    config = make_config(tmp_path, max_completion_length=100, overlong_buffer_length=10, overlong_penalty_factor=0.5)
    (reward,) = get_reward_funcs(["dapo_overlong_penalty"], config)
    assert isinstance(reward, DapoOverlongPenalty) and reward.__name__ == "dapo_overlong_penalty"
    assert (reward.max_length, reward.buffer, reward.factor) == (100, 10, 0.5)
    lengths = [3, 90, 91, 95, 100]
    logged = {}
    scores = reward(
        ["x"] * len(lengths),
        completion_ids=[[7] * n for n in lengths],
        log_metric=lambda name, value: logged.__setitem__(name, value),
        ground_truth=["1"] * len(lengths),
    )
    assert scores == pytest.approx([dapo_formula(n, 100, 10, 0.5) for n in lengths])
    assert scores[-1] == -0.5 and scores[1] == 0.0
    assert logged == {"overlong/penalized_fraction": pytest.approx(3 / 5)}


def test_overlong_reward_tokenizes_when_no_completion_ids_are_given():
    reward = DapoOverlongPenalty(max_length=20, buffer=10, factor=1.0, processing_class=CharTokenizer())
    texts = ["a" * 10, "b" * 15, messages("c" * 20)]
    assert reward(texts) == pytest.approx([0.0, -0.5, -1.0])
    with pytest.raises(ValueError, match="completion_ids"):
        DapoOverlongPenalty(max_length=20, buffer=10, factor=1.0)(texts)


def test_overlong_reward_settings_are_checked_when_built(tmp_path):
    config = make_config(tmp_path, max_completion_length=1000)  # buffer 4096 > L_max
    with pytest.raises(ValueError, match="overlong_buffer_length .* exceeds max_completion_length"):
        get_reward_funcs(["dapo_overlong_penalty"], config)


# ---- robust verifier ------------------------------------------------------------------------------------------

SOLUTION = (
    "Okay, so I need the probability that a fair coin shows heads. There are two equally likely outcomes and one of "
    "them is heads.\n</think>\n\nThere are 2 outcomes, 1 favourable, so the probability is \\boxed{\\frac{1}{2}}."
)


@pytest.mark.parametrize(
    ("response", "truth", "score"),
    [
        (SOLUTION, "0.5", 1.0),  # symbolic: \frac{1}{2} = 0.5
        (SOLUTION, "\\frac{1}{2}", 1.0),
        ("So the value is \\boxed{0.5}.", "\\frac{1}{2}", 1.0),
        ("The side is \\boxed{2\\sqrt{2}}.", "\\sqrt{8}", 1.0),
        ("The side is \\boxed{\\sqrt{8}}.", "2\\sqrt{2}", 1.0),
        ("Thus \\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1.0),
        ("It factors as \\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
        ("Answer: \\boxed{12}", "\\boxed{12}", 1.0),  # a boxed ground truth is unboxed
        (SOLUTION, "0.25", -1.0),  # wrong answers are rejected
        ("The side is \\boxed{3\\sqrt{2}}.", "\\sqrt{8}", -1.0),
        ("So the value is 0.5, no box.", "0.5", -1.0),  # no box
        ("The answer is \\boxed{0.5", "0.5", -1.0),  # unclosed box
        ("\\boxed{}", "0", -1.0),
    ],
)
def test_robust_verifier_equivalences(response, truth, score):
    assert RobustMathVerifier(timeout_s=5)([messages(response)], answer=[truth]) == [score]


def test_robust_verifier_accepts_what_strict_matching_rejects():
    assert dapo_score(SOLUTION, "0.5") == -1.0  # the recipe's strict verifier: no symbolic math
    assert RobustMathVerifier(timeout_s=5)([SOLUTION], ground_truth=["0.5"]) == [1.0]


def test_robust_verifier_logs_accuracy_and_predictions(tmp_path):
    (reward,) = get_reward_funcs(["robust_math"], make_config(tmp_path))
    from trl_justrl.grading.grader import DEFAULT_TIMEOUT_S

    assert reward.__name__ == "robust_math" and reward.timeout_s == DEFAULT_TIMEOUT_S  # the evaluation's limit
    logged, extra = {}, {}
    scores = reward(
        [messages(SOLUTION), messages("\\boxed{7}"), messages("no box")],
        log_metric=lambda name, value: logged.__setitem__(name, value),
        log_extra=lambda name, values: extra.__setitem__(name, values),
        reward_model=[{"ground_truth": "0.5"}] * 3,
        completion_ids=[[1], [2], [3]],
        prompts=["p"] * 3,
    )
    assert scores == [1.0, -1.0, -1.0]
    assert logged == {"accuracy": pytest.approx(1 / 3)}
    assert extra == {"prediction": ["\\frac{1}{2}", "7", None]}
    with pytest.raises(KeyError, match="No ground truth"):
        reward(["\\boxed{1}"], problem=["x"])


def test_robust_verifier_time_limit_on_a_pathological_answer():
    # Comparing 9^(9^(9^9)) with 1 makes sympy work for as long as it is allowed (over 40 s measured without a limit).
    faulthandler.dump_traceback_later(120, exit=True)  # a broken limit fails the run instead of hanging it
    try:
        start = time.monotonic()
        scores = RobustMathVerifier(timeout_s=1)([messages("So it is \\boxed{9^{9^{9^{9}}}}.")], answer=["1"])
        elapsed = time.monotonic() - start
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert scores == [-1.0]
    assert elapsed < 30  # a bound, not a speed claim: a few 1 s limits (parses and comparisons) plus overhead


def test_symbolic_rewards_call_the_shared_grader_with_the_configured_limit(tmp_path, monkeypatch):
    seen = []

    def spy(response, ground_truth, *, problem=None, timeout_s):
        seen.append((response, ground_truth, timeout_s))
        return True

    monkeypatch.setattr(reward_inputs, "grade_answer", spy)
    config = make_config(tmp_path, robust_verifier_timeout_s=3, max_completion_length=10)
    robust, cosine = get_reward_funcs(["robust_math", "open_rs_cosine"], config)
    assert robust(["r1"], answer=["a"]) == [1.0]
    expected = open_r1_cosine(True, 1, 10, OPEN_RS_COSINE)
    assert cosine(["r2"], answer=["b"], completion_ids=[[1]]) == [pytest.approx(expected)]
    assert seen == [("r1", "a", 3), ("r2", "b", 3)]


def test_robust_verifier_grades_symbolically_off_the_main_thread():
    """TRL runs async reward functions off the main thread: the grading (and its time limit) must hold there too."""
    reward = RobustMathVerifier(timeout_s=5)
    results = {}

    def run():
        results["symbolic"] = reward([SOLUTION], answer=["0.5"])
        results["exact"] = reward(["\\boxed{\\dfrac{1}{2}}"], answer=["\\frac{1}{2}"])
        results["wrong"] = reward([SOLUTION], answer=["0.6"])

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(120)
    assert results == {"symbolic": [1.0], "exact": [1.0], "wrong": [-1.0]}
    assert reward([SOLUTION], answer=["0.5"]) == [1.0]  # and in the main thread


# ---- Open-RS format and cosine rewards --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "score"),
    [
        (SOLUTION, 1.0),  # DeepSeek-R1-Distill style: reasoning, "\n</think>\n", then the answer
        ("Let me think.\n</think>\n\\boxed{3}", 1.0),
        ("Let me think. Still thinking, and the budget runs out", 0.0),  # truncated: never closed
        ("Reasoning.\n</think>\nMore.\n</think>\n\\boxed{3}", 0.0),  # closed twice
        ("Reasoning.</think> \\boxed{3}", 0.0),  # Open-RS counts "\n</think>\n" exactly
        ("<think>\nReasoning.\n</think>\n\\boxed{3}", 1.0),  # an opening tag in the response does not matter
        ("", 0.0),
    ],
)
def test_open_rs_format_reward(text, score):
    assert open_rs_format([messages(text)]) == [score]
    assert open_rs_format([text]) == [score]


def open_r1_cosine(correct: bool, length: int, max_len: int, values: dict) -> float:
    """open-r1's get_cosine_scaled_reward formula (clamped at max_len), written out independently."""
    progress = min(length, max_len) / max_len
    cosine = math.cos(progress * math.pi)
    if correct:
        min_value, max_value = values["min_value_correct"], values["max_value_correct"]
    else:  # open-r1 swaps min / max for wrong answers
        min_value, max_value = values["max_value_wrong"], values["min_value_wrong"]
    return min_value + 0.5 * (max_value - min_value) * (1.0 + cosine)


@pytest.mark.parametrize("correct", [True, False])
@pytest.mark.parametrize("length", [0, 1, 896, 1792, 3000, 3583, 3584, 3585, 10_000])
def test_cosine_scaled_reward_matches_open_r1(correct, length):
    expected = open_r1_cosine(correct, length, 3584, OPEN_RS_COSINE)
    assert cosine_scaled_reward(correct, length, 3584, **OPEN_RS_COSINE) == pytest.approx(expected, abs=1e-12)


def test_cosine_scaled_reward_end_points_with_open_rs_values():
    kw = OPEN_RS_COSINE
    assert cosine_scaled_reward(True, 0, 100, **kw) == 1.0
    assert cosine_scaled_reward(True, 50, 100, **kw) == pytest.approx(0.75)
    assert cosine_scaled_reward(True, 100, 100, **kw) == pytest.approx(0.5)
    assert cosine_scaled_reward(True, 250, 100, **kw) == pytest.approx(0.5)  # clamped (open-r1 would rise again)
    assert cosine_scaled_reward(False, 0, 100, **kw) == 0.0
    assert cosine_scaled_reward(False, 50, 100, **kw) == pytest.approx(-0.25)
    assert cosine_scaled_reward(False, 100, 100, **kw) == pytest.approx(-0.5)


def test_cosine_reward_from_the_config(tmp_path):
    config = make_config(tmp_path, max_completion_length=100)
    (reward,) = get_reward_funcs(["open_rs_cosine"], config)
    assert isinstance(reward, CosineScaledAccuracy) and reward.__name__ == "open_rs_cosine"
    assert reward.max_len == 100 and reward.values == OPEN_RS_COSINE  # cosine_max_len null: max_completion_length
    logged = {}
    texts = [messages(SOLUTION), messages(SOLUTION), messages("\\boxed{0.25}"), messages("no box")]
    lengths = [0, 50, 50, 100]
    scores = reward(
        texts,
        completion_ids=[[1] * n for n in lengths],
        answer=["0.5"] * 4,
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    expected = [open_r1_cosine(ok, n, 100, OPEN_RS_COSINE) for ok, n in zip([1, 1, 0, 0], lengths, strict=True)]
    assert scores == pytest.approx(expected) and scores == pytest.approx([1.0, 0.75, -0.25, -0.5])
    assert logged == {"cosine/accuracy": 0.5}

    other = make_config(tmp_path, GRPORunConfig, cosine_max_len=50, cosine_min_value_wrong=-1.0,
                        max_completion_length=100)
    (reward,) = get_reward_funcs(["open_rs_cosine"], other)
    assert reward.max_len == 50 and reward.values["min_value_wrong"] == -1.0
    assert reward([messages("\\boxed{3}")], completion_ids=[[1]], answer=["4"]) == pytest.approx(
        [open_r1_cosine(False, 1, 50, {**OPEN_RS_COSINE, "min_value_wrong": -1.0})]
    )


# ---- config fields, check_objective, resolution through the trainer ---------------------------------------------

def test_ablation_defaults_are_off_and_the_recipe_values(tmp_path):
    config = make_config(tmp_path)
    assert config.overlong_buffer_length == RECIPE_BUFFER and config.overlong_penalty_factor == RECIPE_FACTOR
    assert config.robust_verifier_timeout_s is None  # the evaluation grader's own limit
    assert not hasattr(config, "cosine_max_len")  # Open-RS's cosine settings: trainer grpo's config only
    grpo = make_config(tmp_path, GRPORunConfig)
    assert {k: getattr(grpo, f"cosine_{k}") for k in OPEN_RS_COSINE} == OPEN_RS_COSINE
    assert grpo.cosine_max_len is None
    from trl_justrl.recipe_reader import JustRLScriptArguments

    assert JustRLScriptArguments().reward_funcs == ["dapo_strict"]  # no ablation reward unless a recipe names it


def test_ablation_settings_are_reward_choices_not_objective_changes(tmp_path):
    config = make_config(
        tmp_path,
        overlong_buffer_length=16,
        overlong_penalty_factor=0.5,
        robust_verifier_timeout_s=2,
        reward_weights=[1.0, 0.5],
    )
    check_objective(config)  # does not raise


@pytest.mark.parametrize(
    "override",
    [{"overlong_buffer_length": 0}, {"overlong_penalty_factor": -0.1}, {"robust_verifier_timeout_s": 0},
     {"cosine_max_len": 0}],
)
def test_out_of_range_ablation_settings_are_refused(tmp_path, override):
    config_class = GRPORunConfig if "cosine_max_len" in override else JustRLConfig
    with pytest.raises(ValueError, match=next(iter(override))):
        make_config(tmp_path, config_class, **override)


def test_rewards_resolve_through_the_trainer_with_a_config(tmp_path):
    config = make_config(tmp_path, max_completion_length=64, overlong_buffer_length=16, robust_verifier_timeout_s=2)

    def custom(completions, **kwargs):
        return [0.0] * len(completions)

    names = ["dapo_strict", "dapo_overlong_penalty", "robust_math", "open_rs_format", "open_rs_cosine"]
    resolved = _resolve_rewards([*names, custom, "some-org/reward-model"], config)
    assert [getattr(f, "__name__", f) for f in resolved] == [*names, "custom", "some-org/reward-model"]
    assert resolved[0] is dapo_strict and resolved[3] is open_rs_format and resolved[5] is custom
    assert (resolved[1].max_length, resolved[1].buffer) == (64, 16)
    assert resolved[2].timeout_s == 2 and resolved[4].timeout_s == 2 and resolved[4].max_len == 64

    completions = [messages("Reasoning.\n</think>\n\\boxed{0.5}")] * 2
    batch = dict(completion_ids=[[1] * 10, [1] * 64], answer=["\\frac{1}{2}", "3"], prompts=["p", "p"])
    outputs = [f(completions, **batch) for f in resolved[:5]]
    assert outputs[0] == [-1.0, -1.0]  # strict: "0.5" is not the string "\frac{1}{2}"
    assert outputs[1] == [0.0, -1.0]
    assert outputs[2] == [1.0, -1.0]
    assert outputs[3] == [1.0, 1.0]
    assert outputs[4] == pytest.approx([open_r1_cosine(True, 10, 64, OPEN_RS_COSINE), -0.5])

    assert _resolve_rewards(None, config) == [dapo_strict]  # the recipe's reward by default
    with pytest.raises(ValueError, match="takes its settings from the training config"):
        _resolve_rewards(["dapo_overlong_penalty"])
    assert get_reward_funcs(["dapo_strict"]) == [dapo_strict]  # plain rewards need no config
    with pytest.raises(ValueError, match="already registered"):
        register_reward("robust_math")(custom)


# ---- the ablation recipes -------------------------------------------------------------------------------------

ABLATIONS = {
    "justrl_deepseek_1.5b_overlong": ["dapo_strict", "dapo_overlong_penalty"],
    "justrl_deepseek_1.5b_overlong_robust": ["robust_math", "dapo_overlong_penalty"],
}


def parse_recipe(name):
    from trl_justrl.recipe_reader import parse_args

    recipe = Path(__file__).resolve().parents[1] / "launch" / "recipes" / f"{name}.yaml"
    return parse_args(
        ["--config", str(recipe), "--use_cpu", "true", "--bf16", "false", "--report_to", "none"])


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_recipes_differ_from_the_paper_recipe_only_in_rewards_and_names(name, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    base_script, base_training, base_model = parse_recipe("justrl_deepseek_1.5b")
    script_args, training_args, model_args = parse_recipe(name)
    assert script_args.reward_funcs == ABLATIONS[name]
    assert vars(model_args) == vars(base_model)
    assert {k for k, v in vars(script_args).items() if vars(base_script)[k] != v} == {"reward_funcs"}
    differ = {k for k, v in training_args.to_dict().items() if base_training.to_dict()[k] != v}
    assert differ <= {"output_dir", "hub_model_id", "run_name", "logging_dir"}, differ
    assert training_args.output_dir != base_training.output_dir

    check_objective(training_args)
    resolved = _resolve_rewards(script_args.reward_funcs, training_args)
    overlong = resolved[1]
    assert (overlong.max_length, overlong.buffer, overlong.factor) == (RECIPE_MAX_LEN, RECIPE_BUFFER, RECIPE_FACTOR)


# ---- end to end -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ablation_rewards_in_real_training_steps(tmp_path, tiny_model_path):
    from trl_justrl import JustRLTrainer
    from trl_justrl.data import load_training_data

    weights = [1.0, 0.5, 1.0, 2.0]
    config = make_config(
        tmp_path,
        prompts_per_step=2,
        prompts_per_update=1,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=8,
        overlong_buffer_length=4,
        overlong_penalty_factor=0.5,
        robust_verifier_timeout_s=2,
        reward_weights=weights,
        learning_rate=1e-2,
        warmup_rl_steps=0,
        save_every_rl_steps=None,
        save_strategy="no",
        max_steps=2,  # 1 training step x 2 updates
        logging_steps=2,
        gradient_checkpointing=False,
        seed=0,
    )
    names = ["robust_math", "dapo_overlong_penalty", "open_rs_format", "open_rs_cosine"]
    trainer = JustRLTrainer(
        model=str(tiny_model_path),
        reward_funcs=names,
        args=config,
        train_dataset=load_training_data("synthetic", synthetic_size=8),
    )
    assert trainer.reward_func_names == names

    calls = []
    overlong = trainer.reward_funcs[1]

    def record(*args, **kwargs):
        out = overlong(*args, **kwargs)
        calls.append(([len(ids) for ids in kwargs["completion_ids"]], out, threading.current_thread()))
        return out

    trainer.reward_funcs[1] = record
    trainer.train()

    assert calls
    for lengths, penalties, thread in calls:
        assert thread is threading.main_thread()  # so the robust verifier's time limit applies
        # (a random model rarely stops before the cap: mostly -factor here; the values in between are tested above)
        assert penalties == pytest.approx([dapo_formula(min(n, 8), 8, 4, 0.5) for n in lengths])
    (entry,) = [h for h in trainer.state.log_history if "reward" in h]
    for key in ("rewards/robust_math/mean", "rewards/dapo_overlong_penalty/mean", "rewards/open_rs_format/mean",
                "rewards/open_rs_cosine/mean", "accuracy", "cosine/accuracy", "overlong/penalized_fraction"):
        assert key in entry, key
    # TRL sums the weighted rewards (reward_weights): the logged reward mean is the weighted sum of the means
    weighted = sum(w * entry[f"rewards/{n}/mean"] for w, n in zip(weights, names, strict=True))
    assert entry["reward"] == pytest.approx(weighted, abs=1e-5)
    assert -0.5 <= entry["rewards/dapo_overlong_penalty/mean"] <= 0.0
