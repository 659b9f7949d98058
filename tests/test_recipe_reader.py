"""One reader of recipes: train, plan, launch and serve read every shipped recipe to the same settings."""

from __future__ import annotations

import pytest

import trl_justrl.recipe_reader as reader
from trl_justrl.cluster import launcher, plan, serve
from trl_justrl.recipe_reader import RecipeSettings, parse_args
from trl_justrl.recipes import find_recipe, shipped_recipes


def _read_by(run) -> RecipeSettings:
    """What `run` read: every RecipeSettings the reader builds while it runs."""
    seen: list[RecipeSettings] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader, "RecipeSettings", lambda **values: seen.append(RecipeSettings(**values)) or seen[-1])
        run()
    assert len(seen) == 1, "each subcommand reads its recipe once, through recipe_reader.read_recipe"
    return seen[0]


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_subcommand_reads_a_recipe_to_the_same_settings(name, monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # serve's device: the same on any machine
    # training's own path, with the two flags a tool that does not train adds (no tracker checks, no GPU touched)
    script, training, model = parse_args(["--config", name, "--use_cpu", "true", "--report_to", "none"])
    expected = (script.trainer, model.model_name_or_path, training.to_dict())

    env = {"NNODES": "1", "GPUS_PER_NODE": "1", "VLLM_GPUS": "0"}  # one training process: every batch is exact
    paths = {
        "plan": lambda: plan.RecipeBatch.from_recipe(find_recipe(name)),
        "launch": lambda: launcher.multinode_commands(env, name, "ddp", True, ()),
        "serve": lambda: serve.main(["--config", name, "--device", "cpu", "--dry-run"]),
    }
    for subcommand, run in paths.items():
        read = _read_by(run)
        got = (read.script.trainer, read.model.model_name_or_path, read.training.to_dict())
        assert got == expected, f"{subcommand} read {name} differently"
    capsys.readouterr()

    batch = plan.RecipeBatch.from_recipe(find_recipe(name))  # what the planner takes from those settings
    assert (batch.trainer, batch.model, batch.prompts_per_step, batch.num_generations, batch.max_prompt_length) == (
        script.trainer, model.model_name_or_path, training.prompts_per_step, training.num_generations,
        training.max_prompt_length)
    assert batch.server_context == training.vllm_context_needed


def test_the_old_recipe_option_still_works_with_a_note(capsys):
    assert plan.main(["--nodes", "1", "--gpus-per-node", "8", "--recipe", "justrl_deepseek_1.5b"]) == 0
    assert "plan --recipe is now --config" in capsys.readouterr().err
    assert plan.main(["--nodes", "1", "--gpus-per-node", "8", "--config", "justrl_deepseek_1.5b"]) == 0
    assert "now --config" not in capsys.readouterr().err


def test_the_planner_refuses_what_training_refuses(tmp_path):
    """An unknown key is an error for the planner too (it reads with training's reader)."""
    recipe = tmp_path / "typo.yaml"
    recipe.write_text((find_recipe("justrl_deepseek_1.5b")).read_text() + "\nlearning_rat: 1.0\n")
    with pytest.raises(plan.PlanError, match=r"typo.yaml: Unknown keys in the recipe: \['learning_rat'\]"):
        plan.RecipeBatch.from_recipe(recipe)


def test_no_option_is_abbreviated(tmp_path):
    """argparse expands an unambiguous prefix by default (`--learning_r` for learning_rate, `--hub_t` for hub_token):
    the training parser reads only whole names, as recipes spell them."""
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--learning_r'"):
        parse_args(["--config", "demo_cpu", "--learning_r", "1e-3"])
    assert parse_args(["--config", "demo_cpu", "--learning_rate", "1e-3"])[1].learning_rate == 1e-3
