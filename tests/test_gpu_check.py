"""benchmarks/gpu_check.py on CPU: every phase of the GPU check, its output folder and summary, and its time limit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "hidden_size=32", "intermediate_size=64", "num_hidden_layers=2", "vocab_size=512", "cap=24", "mean=8",
        "prompt_min=4", "prompt_max=8", "--max-tokens", "48", "--steps", "1"]


def gpu_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--preset", "cpu-small",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_every_phase_runs_on_cpu_and_lands_in_one_folder(tmp_path, smollm2_path):
    out = tmp_path / "check"
    result = gpu_check("--out", str(out), *TINY, "--set-config", "cast_lm_head_to_fp32=true")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    phases = [phase["name"] for phase in summary["phases"]]
    assert phases == ["environment", "smoke", "model", "update:justrl", "update:justrl_packed", "update:stock"]
    assert all(phase["status"] == "ok" for phase in summary["phases"]), summary["phases"]
    printed = [line for line in result.stdout.splitlines() if line.startswith("[gpu_check]")]
    assert [line.split(":")[0].split()[-1] for line in printed[:-1]] == [p.split(":")[0] for p in phases]
    # the smoke: 2 steps of 2 updates with a checkpoint each, then a resume from the latest to step 3
    smoke = summary["phases"][1]
    assert smoke["global_step"] == 6 and len(smoke["losses"]) == 3
    assert {"checkpoint-4", "checkpoint-6"} <= set(smoke["checkpoints"])
    assert "Resuming from" in (out / "work" / "logs" / "smoke_resume.log").read_text()
    assert sorted(path.name for path in out.iterdir()) == [
        "profile_update_justrl.txt", "profile_update_justrl_packed.txt", "profile_update_stock.txt", "summary.json",
        "work"]
    # the updates: each trainer timed, profiled over one update, its estimate and settings recorded
    assert summary["set_config"] == {"cast_lm_head_to_fp32": True}
    assert summary["workload"]["config_overrides"] == {"cast_lm_head_to_fp32": True}
    for kind in ("justrl", "justrl_packed", "stock"):
        result = summary["updates"][kind]
        assert len(result["all_step_seconds"][0]) == 2 and result["estimated_peak_gib"] > 0
        profile = (out / f"profile_update_{kind}.txt").read_text()
        assert "optimizer update 4: top operators by total cpu time" in profile
        assert "optimizer update 4: top operators by self cpu time" in profile
        assert result["profile"]["top"]["self"][0]["self_ms"] > 0
    comparison = summary["comparison"]
    assert comparison["max_loss_difference_justrl"] < 1e-4 and comparison["max_loss_difference_justrl_packed"] < 1e-4
    assert comparison["packed_over_unpacked"] > 0


@pytest.mark.slow
def test_a_check_cut_off_keeps_what_finished(tmp_path, smollm2_path):
    out = tmp_path / "check"
    # many steps: the first trainer is still training when the limit comes, however fast the set-up was
    result = gpu_check("--out", str(out), *TINY, "--steps", "400", "--phases", "updates", "--time-limit", "12",
                       timeout=300)
    assert result.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    statuses = {phase["name"]: phase["status"] for phase in summary["phases"]}
    assert statuses["environment"] == "ok" and statuses["model"] == "ok"
    assert statuses["update:justrl"] == "cut off at the time limit"
    assert statuses["update:stock"] == "skipped: time limit reached"


def test_a_misspelt_key_fails_before_any_work(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check_module)
    out = tmp_path / "check"
    misspelt = ((["--set-config", "use_ligger_kernel=true"], "use_ligger_kernel: not a field of JustRLConfig"),
                (["--set", "hiden_size=32"], "--set hiden_size: not a preset key"))
    for option, message in misspelt:
        with pytest.raises(SystemExit) as stopped:
            gpu_check_module.main(["--device", "cpu", "--out", str(out), *option])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (out / "summary.json").exists()
