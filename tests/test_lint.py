"""The code base stays ruff-clean (ruff comes with the dev extra)."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(__import__("sys").executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    result = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_shipped_files_cite_only_what_the_repository_holds():
    """Code, recipes, README and docs cite the public sources (docs/recipe.md), never the maintainers' notes beside
    the checkout (a user who clones the repository has no ../shared)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    shipped = [name for name in tracked if not name.startswith(("tests/", ".ci/")) and name != "DEVELOPERS.md"
               and (REPO / name).is_file() and not (REPO / name).is_symlink()]
    assert "README.md" in shipped and "trl_justrl/recipes/demo_cpu.yaml" in shipped
    pointing = [name for name in shipped if "../shared" in (REPO / name).read_text(errors="ignore")
                or "RECIPE.md" in (REPO / name).read_text(errors="ignore")]
    assert not pointing, pointing
