"""Evaluation protocols: each paper's benchmarks, samples per problem, sampling settings, prompt and table, as YAML
files in `protocols/` (`evaluation/protocols` at the top of a checkout points there).

`--protocol justrl` (the default) and `--protocol open-rs` name the shipped files; `--protocol path/to/own.yaml`
reads another. Explicit flags (`--n`, `--temperature`, ...) override a protocol's values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .table import JUSTRL_TABLE, OPEN_RS_TABLE, ReferenceTable

FOLDER = Path(__file__).resolve().parent / "protocols"
TABLES: dict[str, ReferenceTable] = {"justrl": JUSTRL_TABLE, "open-rs": OPEN_RS_TABLE}
DEFAULT_PROTOCOL = "justrl"


class ProtocolError(ValueError):
    """A protocol file that cannot be used (the message names the file and the field)."""


@dataclass(frozen=True)
class EvalProtocol:
    """One paper's evaluation settings."""

    name: str
    benchmarks: tuple[str, ...]
    n: int | None  # samples per problem for every benchmark; None: each benchmark's own N (JustRL's 4 or 32)
    max_new_tokens: int
    temperature: float
    top_p: float
    prompt_style: str  # trl_justrl.prompts.eval_messages
    table: ReferenceTable
    metric: str  # how the table's numbers are named


def _number(value: object, kinds: type | tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)  # YAML's true is not a count


def shipped_protocols() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def load_protocol(name_or_path: str | Path) -> EvalProtocol:
    """The protocol a shipped name or a YAML path gives; ProtocolError naming the file and field otherwise."""
    from ..prompts import PROMPT_STYLES

    path = Path(name_or_path)
    if not path.is_file():
        shipped = FOLDER / f"{path.stem}.yaml"
        if path.parent != Path(".") or not shipped.is_file():  # a path that is not there is not a shipped name
            raise ProtocolError(f"No evaluation protocol {str(name_or_path)!r}: give an existing YAML file or one of "
                                f"{shipped_protocols()}.")
        path = shipped
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProtocolError(f"{path}: not YAML ({err}).") from err
    expected = {f.name for f in fields(EvalProtocol)} - {"name"}
    if not isinstance(values, dict) or set(values) != expected:
        got = set(values) if isinstance(values, dict) else set()
        raise ProtocolError(f"{path}: a protocol gives exactly {sorted(expected)}; missing {sorted(expected - got)}, "
                            f"unknown {sorted(got - expected)}.")
    checks = {
        "benchmarks": isinstance(values["benchmarks"], list) and all(isinstance(b, str) for b in values["benchmarks"]),
        "n": values["n"] is None or (_number(values["n"], int) and values["n"] >= 1),
        "max_new_tokens": _number(values["max_new_tokens"], int) and values["max_new_tokens"] >= 1,
        "temperature": _number(values["temperature"], (int, float)) and values["temperature"] >= 0,
        "top_p": _number(values["top_p"], (int, float)) and 0 < values["top_p"] <= 1,
        "prompt_style": values["prompt_style"] in PROMPT_STYLES,
        "table": values["table"] in TABLES,
        "metric": isinstance(values["metric"], str),
    }
    wrong = [f"{name} = {values[name]!r}" for name, ok in checks.items() if not ok]
    if wrong:
        raise ProtocolError(f"{path}: {'; '.join(wrong)} (benchmarks: a list of names; n: null or >= 1; "
                            f"temperature >= 0; top_p in (0, 1]; prompt_style one of {list(PROMPT_STYLES)}; table "
                            f"one of {sorted(TABLES)}).")
    return EvalProtocol(name=path.stem, **{**values, "benchmarks": tuple(values["benchmarks"]),
                                           "temperature": float(values["temperature"]),
                                           "top_p": float(values["top_p"]), "table": TABLES[values["table"]]})


PROTOCOLS: dict[str, EvalProtocol] = {name: load_protocol(name) for name in shipped_protocols()}
