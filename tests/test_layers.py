"""The package's layers: imports point down, never in a circle (read from the source, lazy imports included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trl_justrl",)
# What builds on the training core: the training entry point, the cluster planner and launchers, the evaluation
# (but its problem sets, sampling backends and in-training validation, which the core uses).
ABOVE_THE_CORE = ("trl_justrl.train", "trl_justrl.cli", "trl_justrl.__main__", "trl_justrl.cluster.plan",
                  "trl_justrl.cluster.launcher", "trl_justrl.cluster.serve", "trl_justrl.evaluation",
                  "trl_justrl.report")
EVALUATION_IN_TRAINING = ("trl_justrl.evaluation.problem_sets", "trl_justrl.evaluation.sampling",
                          "trl_justrl.evaluation.validation")


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


def test_the_graph_sees_relative_absolute_and_lazy_imports(tmp_path):
    graph = import_graph()
    assert "trl_justrl.grading.grader" in graph["trl_justrl.rewards.inputs"]  # `from ..grading.grader import ...`
    assert "trl_justrl.grading.answers" in graph["trl_justrl.grading.grader"]  # `from .answers import ...`
    assert "trl_justrl.evaluation.compass" in graph["trl_justrl.evaluation.runner"]  # inside a function
    module = tmp_path / "absolute.py"
    module.write_text("def f():\n    from trl_justrl.models import resolve_model\n")
    assert imports_of("trl_justrl.absolute", module, set(graph)) == {"trl_justrl.models"}


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def _edges(graph, source_prefix: str):
    return [(a, b) for a, targets in graph.items() if a == source_prefix or a.startswith(source_prefix + ".")
            for b in targets]


def _within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _above(name: str) -> bool:
    return _within(name, *ABOVE_THE_CORE) and not _within(name, *EVALUATION_IN_TRAINING)


def test_imports_point_down_the_layers():
    graph = import_graph()
    wrong = []
    # data errors, math answers and grading are the bottom: they import only themselves
    wrong += _edges(graph, "trl_justrl.data_errors")
    wrong += [e for e in _edges(graph, "trl_justrl.grading")
              if not _within(e[1], "trl_justrl.grading", "trl_justrl.data_errors")]
    wrong += _edges(graph, "trl_justrl.prompts")
    wrong += _edges(graph, "trl_justrl.setting_roles")  # the table of settings' roles, read by every layer
    # the problem sets and sampling backends build on grading and the prompts only
    wrong += [e for e in _edges(graph, "trl_justrl.evaluation.problem_sets") + _edges(
        graph, "trl_justrl.evaluation.sampling") if not _within(
        e[1], "trl_justrl.evaluation.problem_sets", "trl_justrl.evaluation.sampling", "trl_justrl.grading",
        "trl_justrl.prompts", "trl_justrl.data_errors")]
    # run reporting reads logs and settings: never the training core
    wrong += [e for e in _edges(graph, "trl_justrl.reporting")
              if not _within(e[1], "trl_justrl.reporting", "trl_justrl.setting_roles")]
    # the generation server's checks, transports and worker extension import nothing else of the project (the
    # extension runs inside the vLLM server's own environment)
    wrong += [e for e in _edges(graph, "trl_justrl.generation") if not _within(e[1], "trl_justrl.generation")]
    # nothing outside the evaluation imports its offline run (it builds on the rest), but the report page's entry
    # point, which puts a run beside its evaluation and the paper's table
    wrong += [(a, b) for a, targets in graph.items() for b in targets
              if _above(b) and _within(b, "trl_justrl.evaluation")
              and not _within(a, "trl_justrl.evaluation", "trl_justrl.report")]
    # the training core never imports what is built on it (entry point, planner, launchers, evaluation)
    core = [m for m in graph if m != "trl_justrl" and not _above(m)]
    wrong += [(a, b) for a in core for b in graph[a] if _above(b)]
    assert not wrong, wrong


def test_only_the_project_namespace_is_installed():
    """No generic top-level package (such as `evaluation`) goes into site-packages."""
    setup = (REPO / "setup.cfg").read_text()
    include = setup.split("[options.packages.find]")[1].split("include =")[1].split("[")[0].split()
    assert include == ["trl_justrl", "trl_justrl.*"]
    assert sorted(p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()) == ["trl_justrl"]


def test_every_module_imports_in_a_fresh_interpreter():
    """What the static graph cannot see (import-time errors, partially initialised modules) shows up here."""
    names = sorted(m for m in project_modules() if not m.endswith("__main__"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


DOCUMENTED_ENTRY_POINTS = ("trl_justrl.cluster.plan", "trl_justrl.reporting.plot", "trl_justrl.evaluation")


def test_documented_entry_points_still_answer():
    """`python -m <entry> --help` for each, run as `-m` runs it (runpy, as __main__), in one fresh interpreter."""
    code = ("import runpy, sys\n"
            "for entry in sys.argv[1:]:\n"
            "    print('=== ' + entry, flush=True)\n"
            "    sys.argv = [entry, '--help']\n"
            "    try:\n"
            "        runpy.run_module(entry, run_name='__main__', alter_sys=True)\n"
            "    except SystemExit as stop:\n"
            "        if stop.code not in (0, None):\n"
            "            raise\n")
    result = subprocess.run([sys.executable, "-c", code, *DOCUMENTED_ENTRY_POINTS], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = dict(part.split("\n", 1) for part in result.stdout.split("=== ")[1:])
    assert list(answers) == list(DOCUMENTED_ENTRY_POINTS)
    for entry, answer in answers.items():
        assert "usage: python -m " + entry in answer, entry
