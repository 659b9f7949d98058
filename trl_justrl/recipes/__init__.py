"""The shipped run files: recipes (`*.yaml` here) and accelerate configs (`accelerate/*.yaml`), found by name.

`--config justrl_deepseek_1.5b` and `--config path/to/recipe.yaml` both work: an existing path wins, else the shipped
file of that name (with or without `.yaml`). The files ship inside the installed package; in a checkout
`launch/recipes` and `accelerate_configs` point here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ACCELERATE = HERE / "accelerate"


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def shipped_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return _names(HERE)


def shipped_accelerate_configs() -> list[str]:
    """Names of the shipped accelerate configs."""
    return _names(ACCELERATE)


def _find(name_or_path: str | Path, folder: Path, what: str, folder_names: tuple[str, ...]) -> Path:
    """An existing file as given; else, for a bare name or a relative path in one of `folder_names` (a checkout's
    `launch/recipes/x.yaml` from another working directory), the shipped file of that name. An absolute path that
    does not exist is never replaced by a shipped file."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = folder / f"{path.name.removesuffix('.yaml')}.yaml"
    if shipped.is_file() and not path.is_absolute() and (path.parent == Path(".") or path.parent.name in folder_names):
        return shipped
    raise FileNotFoundError(f"{what} {str(name_or_path)!r} not found: neither a file nor a shipped {what} "
                            f"(shipped: {', '.join(_names(folder))}).")


def find_recipe(name_or_path: str | Path) -> Path:
    """The recipe file `name_or_path` names: an existing path, else a shipped recipe's name (FileNotFoundError
    listing the shipped ones otherwise)."""
    return _find(name_or_path, HERE, "recipe", ("recipes",))


def find_accelerate_config(name_or_path: str | Path) -> Path:
    """The accelerate config `name_or_path` names: an existing path, else a shipped config's name (ddp, zero2,
    zero3, fsdp2)."""
    return _find(name_or_path, ACCELERATE, "accelerate config", ("accelerate", "accelerate_configs"))


def add_config_option(parser: argparse.ArgumentParser, help: str) -> None:
    """Every subcommand takes its recipe as `--config NAME_OR_PATH`, as training does; `--recipe` (the earlier
    spelling of plan, launch and serve) still works (`config_option`)."""
    parser.add_argument("--config", default=None, help=help)
    parser.add_argument("--recipe", default=None, help=argparse.SUPPRESS)


def config_option(args: argparse.Namespace, prog: str) -> str | None:
    """The recipe `add_config_option` parsed; a note on stderr when it came as `--recipe`."""
    if args.recipe is not None:
        print(f"note: {prog} --recipe is now --config (the same as train); --recipe still works.", file=sys.stderr)
    return args.config if args.config is not None else args.recipe
