"""Bad inputs named before anything runs, and outputs that survive kills: training data, evaluation outputs, the
launchers' signal forwarding, one evaluation per folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import folder_held

from trl_justrl.cluster.launcher import run_node
from trl_justrl.cluster.plan import Command
from trl_justrl.data import load_training_data, looks_local
from trl_justrl.data_errors import DataError
from trl_justrl.evaluation.sampling import Sample, TransformersBackend
from trl_justrl.evaluation.store import GenerationStore
from trl_justrl.run_services.preemption import EXIT_REQUEUE
from trl_justrl.run_services.run_folder import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]


# ---- training data --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [["2", "x"], {"value": 2}, True])
def test_non_scalar_answers_are_refused_by_file_row_and_field(tmp_path, answer):
    file = tmp_path / "train.jsonl"
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+x?", "answer": answer}]
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl: line 2: field 'answer' must be one answer"):
        load_training_data(str(file))


def test_undecodable_and_torn_jsonl_lines_are_named(tmp_path):
    good = json.dumps({"problem": "1+1?", "answer": "2"}).encode()
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(good + b"\n" + '{"problem": "caf\u00e9?", "answer": "1"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"latin1.jsonl: could not be read as (jsonl|text) \(line 2: not UTF-8"):
        load_training_data(str(latin))
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(good + b"\n" + good + b"\n" + good[:12] + b"\n")
    with pytest.raises(DataError, match=r"torn.jsonl: could not be read as jsonl \(line 3: not JSON"):
        load_training_data(str(torn))


def test_hidden_folders_are_skipped_and_duplicates_counted(tmp_path, caplog):
    folder = tmp_path / "data"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}]
    pd.DataFrame(rows).to_parquet(folder / "train.parquet")
    pd.DataFrame(rows[:1]).to_parquet(folder / ".ipynb_checkpoints" / "train-checkpoint.parquet")
    with caplog.at_level(logging.INFO):
        data = load_training_data(str(folder))
    assert len(data) == 3 and "_row_key" not in data.column_names  # the notebook copy is not read; duplicates kept
    assert "skipping 1 file(s) in hidden folders" in caplog.text and ".ipynb_checkpoints" in caplog.text
    assert "(1 repeat an earlier row's prompt and answer" in caplog.text


def test_a_missing_relative_path_is_not_a_hub_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for source in ("data/train", "data/train.parquet", "a/b/c", "./x"):
        assert looks_local(source)
        with pytest.raises(DataError, match=f"{source}: no such file or folder"):
            load_training_data(source)
    assert not looks_local("BytedTsinghua-SIA/DAPO-Math-17k") and not looks_local("knoveleng/open-rs")


# ---- evaluation outputs ---------------------------------------------------------------------------------------------


def _sample(pid: str, i: int) -> Sample:
    return Sample(pid, i, 1, f"answer {i}", 3, "stop")


def test_a_torn_or_undecodable_line_is_set_aside_and_redone(tmp_path, caplog):
    path = tmp_path / "generations.jsonl"
    store = GenerationStore(path)
    store.append([_sample("a", 0), _sample("a", 1)])
    store.append([_sample("b", 0), _sample("b", 1)])
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"answer", b"\xff\xfenswer")  # problem b's first sample: not UTF-8
    path.write_bytes(b"".join(lines) + b'{"problem_id": "c", "sam')  # and a line cut short
    with caplog.at_level(logging.WARNING):
        done = store.load_complete(2)
    assert list(done) == ["a"]  # b lost a sample: generated again
    assert "generations.jsonl, line 3: not UTF-8" in caplog.text and "generations.jsonl, line 5: not a sample" in (
        caplog.text)
    assert len((tmp_path / "generations.jsonl.rejected").read_bytes().splitlines()) == 2
    assert store.load_complete(2).keys() == {"a"}  # the file was rewritten clean


def test_each_problem_is_on_disk_before_the_next_is_generated(tmp_path, tiny_model_path):
    import inspect

    from trl_justrl.evaluation.runner import EvalOptions, run_evaluation
    from trl_justrl.evaluation.sampling import SamplingSettings

    assert inspect.isgeneratorfunction(TransformersBackend.generate)  # it yields each problem as it is done
    data = tmp_path / "data" / "AIME24"
    data.mkdir(parents=True)
    pd.DataFrame([{"id": str(i), "problem": f"{i}+{i}?", "answer": str(2 * i)} for i in range(5)]).to_parquet(
        data / "test.parquet")
    real = TransformersBackend.from_pretrained(str(tiny_model_path), dtype="float32")

    class KilledAfterTwo:
        def generate(self, problems, n, settings):
            for index, group in enumerate(real.generate(problems, n, settings)):
                if index == 2:
                    raise KeyboardInterrupt  # a kill while the third problem is in flight
                yield group

    opts = EvalOptions(model="tiny", benchmarks=["AIME24"], output_dir=str(tmp_path / "ev"),
                       data_dir=str(tmp_path / "data"), n=2, settings=SamplingSettings(max_new_tokens=3),
                       batch_problems=64)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(opts, KilledAfterTwo)
    kept = GenerationStore(tmp_path / "ev" / "AIME24" / "generations.jsonl").load_complete(2)
    assert len(kept) == 2  # the two finished problems of the 64-problem batch survived


def test_one_evaluation_per_folder(tmp_path, tiny_model_path):
    from trl_justrl.evaluation.cli import main as cli_main

    out = tmp_path / "ev"
    with folder_held(out, "evaluation of other"):
        assert cli_main(["--model", str(tiny_model_path), "--benchmarks", "AIME24", "--output-dir", str(out),
                         "--backend", "transformers"]) == 2


def test_an_evaluation_into_a_read_only_folder_is_an_error_line(tmp_path, tiny_model_path, capsys):
    from trl_justrl.evaluation.cli import main as cli_main

    read_only = tmp_path / "ro"
    read_only.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)],
                             capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root without a read-only mount: every folder is writable")
        read_only.chmod(0o500)
    try:
        assert cli_main(["--model", str(tiny_model_path), "--benchmarks", "AIME24", "--output-dir",
                         str(read_only / "ev"), "--backend", "transformers"]) == 2
        err = capsys.readouterr().err
        assert f"{read_only / 'ev'} cannot be claimed for this run" in err and "Traceback" not in err
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(read_only)], check=False)


def test_evaluation_checks_the_checkpoint_before_sampling(tmp_path, tiny_model_path, capsys):
    """A marked checkpoint with bytes changed mid-file, an unmarked one with its weights cut short, and an unmarked
    whole one: an error naming the file, an error naming the cut, a warning (the evaluation goes on)."""
    from trl_justrl.evaluation.cli import main as cli_main
    from trl_justrl.run_services.checkpoints import MARKER, write_marker

    checkpoint = tmp_path / "run" / "checkpoint-3"
    shutil.copytree(tiny_model_path, checkpoint)
    write_marker(checkpoint, 3, 1)
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    whole = bytes(data)

    def evaluate() -> tuple[int, str]:  # NOPE: stops at the benchmark's name, after the model's checks
        code = cli_main(["--model", str(checkpoint), "--benchmarks", "NOPE", "--output-dir", str(tmp_path / "ev")])
        return code, capsys.readouterr().err

    code, err = evaluate()
    assert code == 2 and "not a whole checkpoint" not in err and "warning" not in err and "NOPE" in err
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, err = evaluate()
    assert code == 2 and f"{checkpoint} is not a whole checkpoint: model.safetensors changed since it was saved" in err
    assert "Traceback" not in err
    (checkpoint / MARKER).unlink()
    weights.write_bytes(whole[: len(whole) - 1000])
    code, err = evaluate()
    assert code == 2 and f"{weights} is cut short" in err and "Traceback" not in err and "NOPE" not in err
    weights.write_bytes(whole)
    code, err = evaluate()
    assert code == 2 and f"warning: {checkpoint} has no {MARKER}" in err and "NOPE" in err


def _cmdlines() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return found


def test_data_parallel_evaluation_forwards_signals_and_leaves_no_worker(tmp_path, tiny_model_path):
    data = tmp_path / "data" / "AIME24"
    data.mkdir(parents=True)
    pd.DataFrame([{"id": str(i), "problem": f"{i}+{i}?", "answer": str(2 * i)} for i in range(40)]).to_parquet(
        data / "test.parquet")
    out = tmp_path / "ev"
    cmd = [sys.executable, "-m", "trl_justrl.evaluation", "--model", str(tiny_model_path),
           "--data-dir", str(tmp_path / "data"),
           "--benchmarks", "AIME24", "--n", "2", "--backend", "transformers", "--max-new-tokens", "64",
           "--output-dir", str(out), "--data-parallel-size", "2", "--dtype", "float32"]
    parent = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + 120
    while not list((out / "AIME24").glob("generations.shard*.jsonl")) or not any(
            p.stat().st_size for p in (out / "AIME24").glob("generations.shard*.jsonl")):
        assert time.monotonic() < deadline and parent.poll() is None, parent.communicate()
        time.sleep(0.2)
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 128 + signal.SIGTERM and "the workers stopped too" in err
    time.sleep(1.0)
    assert not [c for c in _cmdlines() if str(out) in c and "--shard" in c]  # no orphan worker
    sizes = {p: p.stat().st_size for p in (out / "AIME24").glob("generations.shard*.jsonl")}
    time.sleep(1.5)
    assert sizes == {p: p.stat().st_size for p in (out / "AIME24").glob("generations.shard*.jsonl")}
    assert not (out / LOCK_NAME).exists()


# ---- the launchers pass signals on and wait --------------------------------------------------------------------------

CHILD = """
import signal, sys, time, pathlib
def stop(signum, frame):
    time.sleep(1.0)  # 'saving a checkpoint'
    pathlib.Path(sys.argv[1]).write_text(signal.Signals(signum).name)
    sys.exit(75)
signal.signal(signal.SIGUSR1, stop)
pathlib.Path(sys.argv[1] + '.started').write_text('')
time.sleep(60)
"""
PARENT = "import subprocess, sys; sys.exit(subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]]).wait())"


def test_launcher_forwards_a_stop_waits_for_training_and_requeues(tmp_path, monkeypatch):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'requeued'}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    saved = tmp_path / "saved"
    server = Command(0, "h", "vllm", {}, [sys.executable, "-c", "import time; time.sleep(60)"], background=True)
    train = Command(0, "h", "train", {}, [sys.executable, "-c", PARENT, CHILD, str(saved)])

    def preempt():
        deadline = time.monotonic() + 30
        while not Path(f"{saved}.started").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)  # what SLURM / scancel sends the launcher

    threading.Thread(target=preempt, daemon=True).start()
    start = time.monotonic()
    code = run_node([server, train], requeue_job="4242")
    assert code == EXIT_REQUEUE and time.monotonic() - start < 30
    assert saved.read_text() == "SIGUSR1"  # the training process got the clean-stop signal and finished saving
    assert (tmp_path / "requeued").read_text().strip() == "requeue 4242"
    assert not [c for c in _cmdlines() if str(saved) in c]  # nothing left running


# torch elastic's agent starts its workers in sessions of their own and dies on SIGUSR1; the worker asks for SIGUSR1
# when its parent dies (as GracefulStop does), saves, exits 75
AGENT = ("import subprocess, sys; sys.exit(subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]], "
         "start_new_session=True).wait())")
WORKER = CHILD.replace("signal.signal(signal.SIGUSR1, stop)",
                       "signal.signal(signal.SIGUSR1, stop)\n"
                       "from trl_justrl.run_services.preemption import stop_when_parent_dies\n"
                       "stop_when_parent_dies(signal.SIGUSR1)")
RUN_NODE = """
import sys
from trl_justrl.cluster.launcher import run_node
from trl_justrl.cluster.plan import Command
train = Command(0, "h", "train", {}, [sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
sys.exit(run_node([train], adopt=True))
"""


def test_the_launcher_waits_for_workers_in_sessions_of_their_own(tmp_path):
    """A stop that kills the agent (torchrun, accelerate) while its workers, in sessions of their own, still save:
    the launcher adopts them, waits until they have saved and exited, and returns their 75."""
    saved = tmp_path / "saved"
    launcher = subprocess.Popen([sys.executable, "-c", RUN_NODE, AGENT, WORKER, str(saved)], cwd=REPO,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not Path(f"{saved}.started").exists():
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.1)
    time.sleep(0.5)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == EXIT_REQUEUE, err
    assert saved.read_text() == "SIGUSR1"  # written before the launcher returned: it waited for the worker
