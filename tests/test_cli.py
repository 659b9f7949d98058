"""The installed tool: `trl-justrl <command>` / `python -m trl_justrl`, shipped recipes and accelerate configs by
name, `python -m trl_justrl.train`, and a wheel that carries them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_train_script import check_outputs, run, write_recipe

from trl_justrl.cli import COMMANDS, main
from trl_justrl.evaluation.cli import snake_case_as_kebab
from trl_justrl.evaluation.protocols import shipped_protocols
from trl_justrl.recipe_reader import with_recipe_file
from trl_justrl.recipes import find_accelerate_config, find_recipe, shipped_accelerate_configs, shipped_recipes

REPO = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).with_name("trl-justrl")


def test_commands_and_their_help(capsys):
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name}" in listed for name in COMMANDS)
    for name in COMMANDS:
        try:
            code = main([name, "--help"])
        except SystemExit as exit_:  # argparse's --help
            code = exit_.code
        assert code == 0, name
        assert f"trl-justrl {name}" in capsys.readouterr().out, name
    assert main(["no-such-command"]) == 2 and "unknown command" in capsys.readouterr().err


def test_recipes_and_accelerate_configs_by_name_or_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the checkout: names still resolve, to the package's files
    assert {"demo_cpu", "justrl_deepseek_1.5b", "open_rs_exp3"} <= set(shipped_recipes())
    assert shipped_accelerate_configs() == ["ddp", "fsdp2", "zero2", "zero3"]
    demo = find_recipe("demo_cpu")
    assert demo == find_recipe("demo_cpu.yaml") == find_recipe("launch/recipes/demo_cpu.yaml")
    assert demo.parent.name == "recipes" and demo.parent.parent.name == "trl_justrl" and demo.is_file()
    assert find_accelerate_config("zero2").name == "zero2.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("learning_rate: 1.0e-6\n")
    assert find_recipe(str(own)) == own
    with pytest.raises(FileNotFoundError, match="'justrl_deepseek' not found.*shipped: demo_cpu"):
        find_recipe("justrl_deepseek")
    assert with_recipe_file(["--config=demo_cpu", "--max_steps", "2"]) == ["--config", str(demo), "--max_steps", "2"]


def test_evaluation_takes_training_spellings():
    assert snake_case_as_kebab(["--output_dir", "o", "--max_new_tokens=8", "--model", "m_1"]) == [
        "--output-dir", "o", "--max-new-tokens=8", "--model", "m_1"]


@pytest.mark.slow
def test_a_tiny_run_through_the_console_script_with_overrides(tmp_path, tiny_model_path, capsys):
    """What a user of the installed package runs (the Makefile installs the console script), with command-line values
    over the recipe's; `python -m trl_justrl.train` is the same entry (accelerate launch -m trl_justrl.train)."""
    recipe = write_recipe(tmp_path, tiny_model_path)  # 4 updates into out/, with the run summary
    command = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "trl_justrl"]
    overrides = ["--max_steps", "2", "--output_dir", str(tmp_path / "other"), "--print_summary", "false"]
    result = run([*command, "train", "--config", str(recipe), *overrides], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    check_outputs(tmp_path / "other", steps=2)
    assert not (tmp_path / "out").exists() and "Run summary" not in result.stdout
    result = run([sys.executable, "-m", "trl_justrl.train", "--help"], tmp_path)
    assert result.returncode == 0 and "--config" in result.stdout
    with pytest.raises(SystemExit) as stop:  # the command's code, in this process
        main(["train", "--config", "no_such_recipe"])
    assert stop.value.code == 2 and "'no_such_recipe' not found" in capsys.readouterr().err


@pytest.mark.slow
def test_the_wheel_ships_recipes_configs_and_the_command(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    for name in tracked.stdout.split("\0"):
        if name and (REPO / name).is_file() and not (REPO / name).is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("trl_justrl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"trl_justrl/recipes/{r}.yaml" for r in shipped_recipes()} <= set(names)
    assert {f"trl_justrl/recipes/accelerate/{c}.yaml" for c in shipped_accelerate_configs()} <= set(names)
    assert {f"trl_justrl/evaluation/protocols/{p}.yaml" for p in shipped_protocols()} <= set(names)
    assert all(name.startswith(("trl_justrl/", "trl_justrl-")) for name in names)  # no generic top-level module
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "trl-justrl = trl_justrl.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
