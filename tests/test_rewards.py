"""The strict DAPO verifier on realistic responses and edge cases, and the TRL reward function around it."""

from __future__ import annotations

import pytest

from trl_justrl.grading.answers import last_boxed_content
from trl_justrl.rewards import get_reward_funcs, register_reward
from trl_justrl.rewards.dapo import dapo_score, dapo_strict, dapo_verify

SOLUTION = (
    "We need the number of positive divisors of 2^3 * 3^2. A divisor has the form 2^a 3^b with 0 <= a <= 3 and "
    "0 <= b <= 2, so there are (3 + 1)(2 + 1) = 12 of them.\n\nTherefore, the answer is \\boxed{12}."
)


@pytest.mark.parametrize(
    ("response", "truth", "score"),
    [
        (SOLUTION, "12", 1.0),
        (SOLUTION, "13", -1.0),
        (SOLUTION, " 12", -1.0),  # exact string match: no normalisation
        ("The probability is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", 1.0),  # nested braces
        ("The probability is \\boxed{\\frac{1}{2}}.", "1/2", -1.0),  # no symbolic equivalence
        ("So x = \\boxed{\\left\\{1, 2\\right\\}}", "\\left\\{1, 2\\right\\}", 1.0),
        ("First \\boxed{3}, then I rechecked: \\boxed{4}.", "4", 1.0),  # the last box counts
        ("First \\boxed{4}, then I rechecked: \\boxed{3}.", "4", -1.0),
        ("The answer is \\boxed{12", "12", -1.0),  # truncated box: no closing brace
        ("The answer is \\boxed{\\frac{1}{2}", "\\frac{1}{2}", -1.0),  # unbalanced nested
        ("The answer is \\boxed {12}.", "12", -1.0),  # a space: not `\boxed{`
        ("The answer is \\fbox{12}.", "12", -1.0),
        ("The answer is 12.", "12", -1.0),  # no box
        ("Answer: 12", "12", -1.0),  # strict mode ignores "Answer:" lines
        ("", "12", -1.0),
        ("\\boxed{}", "0", -1.0),  # empty box
        ("\\boxed{12}" + " " * 90, "12", 1.0),  # box starts within the last 100 characters
        ("\\boxed{12}" + " " * 91, "12", -1.0),  # its opening just outside: "\boxed{" is cut
        ("\\boxed{12}" + "x" * 150, "12", -1.0),  # the box outside the 100-character window
    ],
)
def test_dapo_score(response, truth, score):
    assert dapo_score(response, truth) == score


def test_window_is_the_last_100_characters():
    tail = " and that is all." * 5  # 85 characters after the box
    assert dapo_score("\\boxed{7}" + tail, "7") == 1.0
    assert dapo_score("\\boxed{7}" + tail + "x" * 20, "7") == -1.0


def test_huge_responses():
    filler = "Let me reconsider the previous step carefully. " * 4400  # about 200 KB
    assert len(filler) > 200_000
    assert dapo_score(filler + "Final: \\boxed{42}", "42") == 1.0
    assert dapo_score("\\boxed{42}" + filler, "42") == -1.0
    assert dapo_score(filler + "\\boxed{" + "{" * 500, "42") == -1.0


def test_verdict_reports_accuracy_and_prediction():
    verdict = dapo_verify(SOLUTION, "12")
    assert (verdict.score, verdict.accuracy, verdict.prediction) == (1.0, 1.0, "12")
    assert dapo_verify("no box here", "12").prediction is None
    assert last_boxed_content("a \\boxed{x^{2}} b") == "x^{2}"


def test_reward_function_reads_every_layout_and_logs_accuracy():
    completions = [
        [{"role": "assistant", "content": "so \\boxed{5}"}],
        [{"role": "assistant", "content": "\\boxed{6}"}],
    ]
    logged, extra = {}, {}
    layouts = [
        {"ground_truth": ["5", "5"]},
        {"reward_model": [{"ground_truth": "5", "style": "rule"}, {"ground_truth": "5", "style": "rule"}]},
        {"answer": [5, 5]},  # plain layout, integer answers
    ]
    for columns in layouts:
        scores = dapo_strict(
            completions,
            log_metric=lambda name, value: logged.__setitem__(name, value),
            log_extra=lambda name, values: extra.__setitem__(name, values),
            prompts=["p", "p"],
            **columns,
        )
        assert scores == [1.0, -1.0]
        assert logged["accuracy"] == 0.5
        assert extra["prediction"] == ["5", "6"]
    assert dapo_strict(["plain text \\boxed{5}"], answer=["5"]) == [1.0]


def test_reward_function_errors_name_the_problem():
    with pytest.raises(KeyError, match="No ground truth"):
        dapo_strict(["\\boxed{1}"], problem=["x"])
    with pytest.raises(ValueError, match="Empty or missing ground truth"):
        dapo_strict(["\\boxed{1}"], answer=[""])


def test_registry():
    assert get_reward_funcs(["dapo_strict"]) == [dapo_strict]
    with pytest.raises(KeyError, match="dapo_strict"):
        get_reward_funcs(["no_such_reward"])

    @register_reward("test_always_one")
    def always_one(completions, **kwargs):
        return [1.0] * len(completions)

    assert get_reward_funcs("test_always_one")[0](["a", "b"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_always_one")(lambda completions, **kw: [])


def test_a_reward_that_raises_names_itself_and_the_sample():
    from trl_justrl.rewards import NamingFailures, RewardFailed

    def fails_on_the_third(completions, log_metric=None, **kwargs):
        if log_metric is not None:
            log_metric("seen", len(completions))
        return [1.0 / (len(c[0]["content"]) - 3) for c in completions]  # ZeroDivisionError on a 3-character one

    reward = NamingFailures(fails_on_the_third, "fails_on_the_third")
    completions = [[{"role": "assistant", "content": text}] for text in ("four", "fives", "two", "six!")]
    prompts = [[{"role": "user", "content": f"problem {i}"}] for i in range(4)]
    logged = []
    with pytest.raises(RewardFailed, match=r"The reward 'fails_on_the_third' raised ZeroDivisionError: float "
                                           r"division by zero, on sample 2 of the 4 in this batch \(prompt "
                                           r"'problem 2'; completion 'two'\)") as raised:
        reward(prompts=prompts, completions=completions, log_metric=lambda *a: logged.append(a))
    assert isinstance(raised.value.__cause__, ZeroDivisionError) and logged == [("seen", 4)]  # metrics off on retries
    assert reward.__name__ == "fails_on_the_third"
    assert reward(prompts=prompts[:1], completions=completions[:1]) == [1.0]


@pytest.mark.slow
def test_a_run_whose_reward_raises_ends_with_a_line_naming_it(tmp_path, tiny_model_path, capfd):
    """After the model loaded, the first step's reward raises: the run ends with the reward's own traceback, then
    one `error:` line naming the reward and the sample, exit status 1, and the folder lock released."""
    from test_train_script import write_recipe

    from trl_justrl.run_services.run_folder import LOCK_NAME
    from trl_justrl.train import cli

    recipe = write_recipe(tmp_path, tiny_model_path, reward_funcs=["test_missing_column"], max_steps=2)
    with pytest.raises(SystemExit) as stop:
        cli(["--config", str(recipe)])
    err = capfd.readouterr().err
    assert stop.value.code == 1, err[-3000:]
    assert "KeyError: 'solution_text'" in err  # the reward's own traceback, for its author
    assert "error: The reward 'test_missing_column' raised KeyError: 'solution_text', on sample 0 of the 8" in err
    assert not (tmp_path / "out" / LOCK_NAME).exists()
