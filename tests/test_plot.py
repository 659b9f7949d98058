"""The dynamics plot: a PNG with the entropy, reward and length panels from a real run's trainer_state.json."""

from __future__ import annotations

import json
import shutil

import matplotlib.image
import pytest

from trl_justrl.reporting.plot import dynamics_series, main, make_figure, plot_dynamics
from trl_justrl.reporting.summary import format_summary, summarize_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    """A copy of the shared tiny run's trainer_state.json (so the tests' PNGs do not land in the run's folder)."""
    folder = tmp_path_factory.mktemp("plotted-run")
    shutil.copy(f"{tiny_run.args.output_dir}/trainer_state.json", folder / "trainer_state.json")
    return folder


def write_history(folder, history):
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 8, "log_history": history}))
    return folder


@pytest.mark.slow
def test_plot_of_a_real_run(run_dir, tmp_path):
    path = plot_dynamics(run_dir, tmp_path / "figure.png")
    assert path == tmp_path / "figure.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300

    figure = make_figure(run_dir)
    assert [ax.get_title() for ax in figure.axes] == ["Policy entropy", "Mean reward", "Mean response length"]
    # x = JustRL steps (2 optimizer updates each), inferred from the logged budget/rl_step
    x_label, series = dynamics_series(json.loads((run_dir / "trainer_state.json").read_text())["log_history"])
    assert x_label.startswith("JustRL step") and series["reward"][0] == [1.0, 2.0]
    assert figure.axes[0].get_xlabel() == x_label and figure.axes[1].get_ylabel() == "mean reward"
    assert list(figure.axes[1].lines[0].get_ydata()) == series["reward"][1]


@pytest.mark.slow
def test_the_summary_draws_and_names_the_plot(run_dir):
    summary = summarize_run(run_dir, draw_plot=True)
    assert summary.dynamics_plot == str(run_dir / "dynamics.png")
    assert (run_dir / "dynamics.png").read_bytes()[:8] == PNG_SIGNATURE
    assert f"dynamics plot          {run_dir / 'dynamics.png'}" in format_summary(summary)
    assert summarize_run(run_dir).dynamics_plot is None  # only when asked


def test_validation_accuracy_gets_a_fourth_panel(tmp_path):
    history = [
        {"eval/AIME24/mean@4": 10.0, "step": 0},
        {"entropy": 1.3, "reward": -0.5, "completions/mean_length": 700.0, "budget/rl_step": 1.0, "step": 4},
        {"entropy": 1.2, "reward": -0.2, "completions/mean_length": 600.0, "eval/AIME24/mean@4": 20.0,
         "budget/rl_step": 2.0, "step": 8},
    ]
    figure = make_figure(write_history(tmp_path, history))
    assert len(figure.axes) == 4 and figure.axes[3].get_title() == "Validation score (the paper's Figure 1)"
    line = figure.axes[3].lines[0]
    assert line.get_label() == "AIME24 mean@4" and list(line.get_xdata()) == [0.0, 2.0]


def test_without_the_rl_step_the_x_axis_is_the_optimizer_step(tmp_path):
    history = [{"entropy": 1.3, "step": 4}, {"entropy": float("nan"), "step": 6}, {"entropy": 1.1, "step": 8}]
    figure = make_figure(write_history(tmp_path, history))
    assert len(figure.axes) == 3 and figure.axes[0].get_xlabel() == "optimizer step"
    assert list(figure.axes[0].lines[0].get_xdata()) == [4, 8]  # the NaN is left out
    assert "not logged" in figure.axes[1].texts[0].get_text()  # no reward in this history


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        make_figure(tmp_path / "missing")
    write_history(tmp_path, [{"train_runtime": 1.0, "step": 8}])
    with pytest.raises(ValueError, match=f"{tmp_path / 'trainer_state.json'} has no training metrics"):
        make_figure(tmp_path)
    assert main([str(tmp_path)]) == 1
    assert "has no training metrics" in capsys.readouterr().err
    assert not (tmp_path / "dynamics.png").exists()


def test_command_line(tmp_path, capsys):
    write_history(tmp_path, [{"entropy": 1.3, "reward": 0.1, "completions/mean_length": 50.0, "step": 4}])
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "dynamics.png")
    assert (tmp_path / "dynamics.png").read_bytes()[:8] == PNG_SIGNATURE
    assert main([str(tmp_path), "--output", str(tmp_path / "sub" / "other.png")]) == 0
    assert (tmp_path / "sub" / "other.png").is_file()
