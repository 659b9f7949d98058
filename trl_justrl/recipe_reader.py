"""The one reader of recipes: a recipe (a shipped name or a YAML path) plus command-line overrides become the run's
settings, through TRL's `TrlParser` (command line over recipe file). `trl-justrl train`, `plan`, `launch` and `serve`
all read recipes here, so each sees the same settings; the config classes hold every default.

The recipe's `trainer` key picks the trainer and with it the config class (`trainer.TRAINERS`). A recipe may also
carry keys only the cluster planner reads (`setting_roles.LAYOUT_KEYS`); any other unknown key is an error naming it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from trl import ModelConfig, ScriptArguments, TrlParser

from .config import RunConfig
from .data import DEFAULT_DATASET
from .recipes import find_recipe
from .run_services.credentials import refuse_secrets
from .setting_roles import LAYOUT_KEYS
from .trainer import DEFAULT_REWARDS, DEFAULT_TRAINER, TRAINERS


@dataclass
class JustRLScriptArguments(ScriptArguments):
    """Trainer, data, prompt and reward choices of a run (TRL's ScriptArguments plus this project's)."""

    trainer: str = field(
        default=DEFAULT_TRAINER,
        metadata={"help": "justrl: the JustRL objective (JustRLTrainer, JustRLConfig defaults = the paper's recipe); "
                  "grpo: TRL's GRPOTrainer objective as configured (GRPORunConfig = TRL's defaults), e.g. Open-RS.",
                  "choices": list(TRAINERS)},
    )

    dataset_name: str | None = field(
        default=DEFAULT_DATASET,
        metadata={"help": "Training data: a Hub id, a .parquet/.jsonl/.json file, a folder of them, or 'synthetic'."},
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Optional held-out data (same forms as dataset_name) for TRL's in-training evaluation."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: list(DEFAULT_REWARDS),
        metadata={"help": "Rewards, summed with reward_weights: registered names (`trl_justrl.rewards.REWARDS`, e.g. "
                  "dapo_strict), TRL's own (accuracy_reward, think_format_reward, reasoning_accuracy_reward), "
                  "import paths package.module.function, or reward models (a local folder or a Hub id org/name)."},
    )
    strip_dapo_instruction: bool = field(
        default=False,  # RECIPE: the released script appends the suffix to DAPO-Math-17k's text as shipped
        metadata={"help": "Remove DAPO-Math-17k's 'Answer:' instruction wrapper, so the user turn is the bare problem "
                  "+ suffix (a deviation: the released script kept the wrapper)."},
    )
    prompt_suffix: bool = field(
        default=True,  # RECIPE: JustRL appends its suffix to the user turn
        metadata={"help": "Append JustRL's suffix ('Please reason step by step, ...') to the user turn; Open-RS: "
                  "false."},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "A system turn put before every prompt (Open-RS's recipes set theirs); null: none."},
    )
    synthetic_size: int = field(default=256, metadata={"help": "Rows of the built-in synthetic data set."})
    print_summary: bool = field(default=True, metadata={"help": "Print the run summary at the end."})
    console_log: str = field(
        default="compact",
        metadata={"help": "compact: one line per logged step (step, reward, accuracy, mixed groups, entropy, length, "
                  "seconds); trl: TRL's progress bar and raw metric dicts. The full metrics go to trainer_state.json "
                  "and report_to either way.", "choices": ["compact", "trl"]},
    )


PARSER_DESCRIPTION = (
    "Train from a recipe: --config NAME_OR_PATH (a shipped recipe's name, see `trl-justrl recipes`, or a YAML file); "
    "every option below overrides the recipe's value. The options are the script's, the trainer's config "
    "(JustRLConfig, or GRPORunConfig with `trainer: grpo`) and TRL's ModelConfig."
)


def with_recipe_file(argv: Sequence[str]) -> list[str]:
    """`argv` with its `--config NAME_OR_PATH` (or `--config=...`) as `--config FILE`: a path as given, or the
    shipped recipe of that name (trl_justrl.recipes); TRL's parser reads the file."""
    out, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--config" and args:
            out += ["--config", str(find_recipe(args.pop(0)))]
        elif arg.startswith("--config="):
            out += ["--config", str(find_recipe(arg.split("=", 1)[1]))]
        else:
            out.append(arg)
    return out


def recipe_values(argv: Sequence[str]) -> dict[str, Any]:
    """The mapping in the `--config` file of `argv` (already a path: `with_recipe_file`), {} without one."""
    config = _config_path(argv)
    if config is None or not Path(config).is_file():
        return {}
    with open(config, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    return values if isinstance(values, dict) else {}


def trainer_choice(argv: Sequence[str]) -> str:
    """The `trainer` a command line asks for (`--trainer X`, else its `--config` file's `trainer` key), read before
    parsing because it picks the config class (JustRLConfig or GRPORunConfig)."""
    prescan = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    prescan.add_argument("--trainer")
    prescan.add_argument("--config")
    known, _ = prescan.parse_known_args(list(argv))
    choice, config = known.trainer, known.config
    if choice is None:
        choice = recipe_values(argv).get("trainer")
    choice = DEFAULT_TRAINER if choice is None else str(choice)
    if choice not in TRAINERS:
        where = f" (in {config})" if config else ""
        raise ValueError(f"trainer: {choice!r}{where} is not one of {sorted(TRAINERS)}.")
    return choice


def make_parser(argv: Sequence[str] | None = None, prog: str | None = None) -> TrlParser:
    """TrlParser for (script arguments, the chosen trainer's config class, ModelConfig)."""
    trainer = trainer_choice(with_recipe_file(argv) if argv is not None else [])
    # allow_abbrev=False: argparse would otherwise read `--hub_t X` as `--hub_token X` (and `--lr` as whichever
    # setting it happens to prefix); every option is spelled out, as in the recipes
    return TrlParser((JustRLScriptArguments, TRAINERS[trainer].config_class, ModelConfig), prog=prog,
                     description=PARSER_DESCRIPTION, allow_abbrev=False)


@dataclass(frozen=True)
class RecipeSettings:
    """What a recipe and its overrides read as: the three parsed argument sets, the planner's layout keys, and which
    keys the recipe file or the command line gave (the rest are the config classes' defaults)."""

    path: str | None  # the recipe file read (None: no --config, every value a default)
    script: JustRLScriptArguments
    training: RunConfig
    model: ModelConfig
    layout: dict[str, Any]  # LAYOUT_KEYS the recipe gives
    given: frozenset[str]


def read_recipe(argv: Sequence[str], prog: str | None = None, *, to_train: bool = True) -> RecipeSettings:
    """`[--config NAME_OR_PATH] [--key value ...]` as the run's settings. `to_train=False` reads it for a tool that
    does not train on this machine (plan, launch, serve): trackers are not checked (`report_to none`) and the recipe
    is read as if `use_cpu` were set, so no GPU is touched (the launcher stays alive beside the training processes)
    and a machine without one reads a bf16 recipe; the command line still overrides both."""
    refuse_secrets(argv)
    # gradient_checkpointing also takes "auto", so HfArgumentParser no longer makes its boolean --no_ flag
    argv = [part for arg in argv for part in (
        ["--gradient_checkpointing", "false"] if arg == "--no_gradient_checkpointing" else [arg])]
    argv = with_recipe_file(argv)
    given = {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")} - {"config"}
    if not to_train:
        argv = ["--use_cpu", "true", "--report_to", "none", *argv]
    values = recipe_values(argv)
    refuse_secrets(recipe=values, where="the recipe")
    parser = make_parser(argv, prog)
    *parsed, from_recipe, from_command_line = parser.parse_args_and_config(
        args=argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    if from_command_line:  # as HfArgumentParser says it
        raise ValueError(f"Some specified arguments are not used by the HfArgumentParser: {from_command_line}")
    unknown = [key.removeprefix("--") for key in from_recipe[::2] if key.removeprefix("--") not in LAYOUT_KEYS]
    if unknown:
        raise ValueError(f"Unknown keys in the recipe: {unknown}. They are not settings of the "
                         f"{type(parsed[1]).__name__}, the script or the model (see --help), nor layout keys of the "
                         f"cluster planner ({list(LAYOUT_KEYS)}).")
    script_args, training_args, model_args = parsed
    return RecipeSettings(path=_config_path(argv), script=script_args, training=training_args, model=model_args,
                          layout={key: values[key] for key in LAYOUT_KEYS if key in values},
                          given=frozenset(given | set(values)))


def parse_args(argv: Sequence[str], prog: str | None = None) -> tuple[JustRLScriptArguments, RunConfig, ModelConfig]:
    """The training entry point's form of `read_recipe`: (script arguments, run config, model config)."""
    settings = read_recipe(argv, prog)
    return settings.script, settings.training, settings.model


def _config_path(argv: Sequence[str]) -> str | None:
    prescan = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    prescan.add_argument("--config")
    return prescan.parse_known_args(list(argv))[0].config

