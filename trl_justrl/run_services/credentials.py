"""Tokens come from the environment only: `HF_TOKEN` for the Hub (wandb reads `WANDB_API_KEY` itself).

A token on a command line is readable by every user of the node (`ps`) and printed whole by `accelerate launch` on
any failure; a token in a recipe is committed and shared with it. So `--hub_token` is refused wherever a command
line or a recipe is parsed (training, the planner, the launchers), before anything is launched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SECRET_SETTINGS = {"hub_token": "HF_TOKEN"}  # setting -> the environment variable that carries it instead
SECRET_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")  # a recipe's `env:` must not set these


def _names(argv: Sequence[str]) -> list[str]:
    """The option names of a command line, as argparse matches them (`--hub-token`, `--hub_tok=x` -> hub_token...)."""
    return [arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")]


def _reaches(option: str, name: str) -> bool:
    """Whether argparse could read `--option` as `--name`: the name itself or a prefix of it past its first word
    (`hub_t`; `hub` and `hub_` are shared by every hub_* setting). The project's parsers expand no abbreviation
    (`allow_abbrev=False`), but a launcher passes a command line on to parsers it does not own."""
    return name.startswith(option) and len(option) > name.index("_") + 1


def refuse_secrets(argv: Sequence[str] = (), recipe: Mapping[str, Any] | None = None,
                   where: str = "the recipe") -> None:
    """ValueError (naming the setting, never its value) for a token in `argv` (any spelling argparse accepts: `-` for
    `_`, an unambiguous prefix) or in a recipe's values or its `env:` mapping."""
    for name, variable in SECRET_SETTINGS.items():
        if any(_reaches(option, name) for option in _names(argv)):
            found = "on the command line"
        elif recipe is not None and recipe.get(name):
            found = f"in {where}"
        else:
            continue
        raise ValueError(f"{name} {found} is refused: a command line is visible to every user of the node and "
                         f"printed by accelerate launch when a run fails, and a recipe is shared. Remove it and set "
                         f"{variable} in the environment instead (e.g. `export {variable}=...` in the job script).")
    environment = (recipe or {}).get("env")
    if isinstance(environment, Mapping):
        for variable in SECRET_VARIABLES:
            if environment.get(variable):
                raise ValueError(f"{variable} in the `env:` of {where} is refused: a recipe is shared. Remove it and "
                                 f"set {variable} in the job's environment instead.")
