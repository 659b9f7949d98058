"""The package's layers: imports point down, never in a circle (read from the source, lazy imports included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trl_justrl", "evaluation")
# Modules at the top of trl_justrl/ that are entry points rather than the training core.
ENTRY_POINTS = {"trl_justrl.train", "trl_justrl.plan", "trl_justrl.plot"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its file (module level or inside functions)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from a import b` names module a.b when it exists, else an attribute of a
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "trl_justrl.shared.grading" in graph["trl_justrl.rewards"]  # `from .shared.grading import ...`
    assert "trl_justrl.shared.answers" in graph["trl_justrl.shared.grading"]  # `from .answers import ...`
    assert "trl_justrl.models" in graph["evaluation.cli"]  # absolute import


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def _edges(graph, source_prefix: str):
    return [(a, b) for a, targets in graph.items() if a == source_prefix or a.startswith(source_prefix + ".")
            for b in targets]


def test_imports_point_down_the_layers():
    graph = import_graph()
    wrong = []
    # shared (what training and evaluation share) is the bottom: it imports only itself
    wrong += [e for e in _edges(graph, "trl_justrl.shared") if not e[1].startswith("trl_justrl.shared")]
    # run reporting reads logs and settings: shared at most, never the training core
    wrong += [e for e in _edges(graph, "trl_justrl.reporting")
              if not e[1].startswith(("trl_justrl.reporting", "trl_justrl.shared"))]
    # the vLLM server checks the trainer runs import nothing of the project
    wrong += _edges(graph, "trl_justrl.cluster.vllm_server")
    # training never imports the evaluation package (evaluation builds on trl_justrl)
    wrong += [e for e in _edges(graph, "trl_justrl") if e[1].startswith("evaluation")]
    # the training core never imports the entry points or the planner / launchers built on it
    core = [m for m in graph if m.startswith("trl_justrl.") and m.count(".") == 1 and m not in ENTRY_POINTS]
    above = ("trl_justrl.cluster.plan", "trl_justrl.cluster.launcher", "trl_justrl.cluster.serve", *ENTRY_POINTS)
    wrong += [(a, b) for a in core for b in graph[a] if b in above]
    assert not wrong, wrong


def test_every_module_imports_in_a_fresh_interpreter():
    """What the static graph cannot see (import-time errors, partially initialised modules) shows up here."""
    names = sorted(m for m in project_modules() if not m.endswith("__main__"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("entry", ["trl_justrl.plan", "trl_justrl.plot", "evaluation"])
def test_documented_entry_points_still_answer(entry):
    result = subprocess.run([sys.executable, "-m", entry, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: python -m " + entry in result.stdout
