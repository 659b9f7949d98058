"""`trl-justrl report`: a real run's page (with a real evaluation of its model) rendered in headless Chromium: not
blank, every figure decoded, nothing on the browser console, and the numbers on the page equal to the JSON they
come from. Skipped where no Chromium is installed (`make test` installs the Debian package as root)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from trl_justrl.report import main as report_main
from trl_justrl.report import read_run


def _working_chromium() -> str | None:
    """A Chromium that runs headless here (Ubuntu's `chromium` can be a snap stub that does not run in a
    container)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        ok = found is not None and subprocess.run([found, "--headless", "--no-sandbox", "--version"],
                                                  capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return found if ok else None


CHROMIUM = _working_chromium()


def browse(page: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `page` (a file URL: nothing served), its console on stderr."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *flags, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)


def shown_number(text: str) -> float:
    return float(text.replace(",", "").strip())


@pytest.fixture(scope="module")
def evaluated(tracked_run, tmp_path_factory) -> Path:
    """The run's final model evaluated on the tiny AIME24 set (2 problems x 2 samples), as `trl-justrl evaluate`
    writes it."""
    from test_evaluation import make_data_dir

    from trl_justrl.evaluation.cli import main as evaluate

    tmp = tmp_path_factory.mktemp("evaluated")
    out = tmp / "eval"
    assert evaluate(["--model", str(tracked_run["tmp"] / "out"), "--benchmarks", "AIME24", "--n", "2", "--limit",
                     "2", "--max-new-tokens", "4", "--backend", "transformers", "--dtype", "float32",
                     "--data-dir", str(make_data_dir(tmp / "data")), "--output-dir", str(out)]) == 0
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (make test installs it as root)")
def test_the_report_of_a_real_run_renders_in_headless_chromium(tracked_run, evaluated, tmp_path):
    run_dir = tracked_run["tmp"] / "out"
    page = tmp_path / "report.html"
    assert report_main([str(run_dir), "--eval", str(evaluated), "--output", str(page)]) == 0
    assert "src=\"http" not in page.read_text()  # self-contained: nothing fetched

    dumped = browse(page, tmp_path, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert ":CONSOLE" not in dumped.stderr, [line for line in dumped.stderr.splitlines() if ":CONSOLE" in line]
    dom = dumped.stdout
    assert 'data-figures-loaded="2/2"' in dom  # the training curves and the validation curve, both decoded

    history = read_run(run_dir).history
    found = re.findall(r'data-key="([^"]+)" data-value="([^"]*)">([^<]*)<', dom)
    values = {key: (json.loads(html.unescape(value)), text) for key, value, text in found}
    for key in ("budget/tokens_generated", "budget/tokens_trained", "budget/paper_estimate_tokens", "train_runtime"):
        logged = next(entry[key] for entry in reversed(history) if key in entry)
        value, text = values[f"history.{key}"]
        assert value == logged and shown_number(text) == pytest.approx(logged, rel=1e-3), key
    results = json.loads((evaluated / "results.json").read_text())["benchmarks"]["AIME24"]
    value, text = values["eval.AIME24.value"]
    assert value == pytest.approx(results["avg_at_n"], abs=0.005) and shown_number(text) == pytest.approx(value)
    difference, text = values["eval.AIME24.difference"]
    assert difference == pytest.approx(value - 52.60, abs=0.01)  # the paper's JustRL-DeepSeek-1.5B AIME24
    assert dom.count('data-key="alert"') == 2  # entropy_collapse and truncation_high at step 1

    shot = tmp_path / "shot.png"
    taken = browse(page, tmp_path, "--window-size=1280,2000", f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    pixels = _pixels(shot)
    assert len(set(pixels)) > 50  # not blank: text, tables and two plotted figures


def _pixels(png: Path) -> list[tuple[int, ...]]:
    from matplotlib.image import imread

    image = imread(str(png))
    return [tuple(int(255 * c) for c in row[x][:3]) for row in image[::20] for x in range(0, len(row), 20)]


def test_a_run_in_progress_is_read_from_its_newest_checkpoint_and_bad_folders_are_named(tmp_path, tracked_run,
                                                                                        capsys):
    run = tmp_path / "run"
    shutil.copytree(tracked_run["tmp"] / "out" / "checkpoint-1", run / "checkpoint-1")
    assert report_main([str(run)]) == 0
    text = (run / "report.html").read_text()
    assert "in progress: as of checkpoint-1" in text and "<img class=\"figure\"" in text
    assert report_main([str(tmp_path / "nothing")]) == 2
    assert "has no trainer_state.json and no checkpoint-N" in capsys.readouterr().err
    assert report_main([str(run), "--eval", str(tmp_path)]) == 2
    assert "results.json not found: --eval takes the --output-dir" in capsys.readouterr().err
