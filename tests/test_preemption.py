"""Crash-consistent, preemption-safe runs: whole checkpoints only, a clean stop on real signals, one writer per
folder, pre-flight refusals before any model loads, and no token at rest. Tiny models; real processes for what
trains, stops or resumes (refusals that end before any model loads call the command's code in the test's process)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import folder_held

from trl_justrl.reporting.budget import TokenBudget
from trl_justrl.run_services.checkpoints import (
    MARKER,
    CheckpointError,
    check_resumable,
    find_resumable,
    incomplete_reason,
    rotate_checkpoints,
    write_marker,
)
from trl_justrl.run_services.preemption import EXIT_REQUEUE, SAME_REQUEST_WINDOW_S
from trl_justrl.run_services.run_folder import (
    LOCK_NAME,
    FolderLock,
    FolderLocked,
    OutputDirError,
    check_output_dir,
    clear_previous_run,
)
from trl_justrl.train import cli

REPO = Path(__file__).resolve().parents[1]
SENTINEL = f"sentinel-{secrets.token_hex(16)}"  # a fresh value each run: nothing token-like is committed


def recipe(tmp_path: Path, model: Path, **overrides) -> Path:
    """A tiny run: one optimizer update per training step (so every step is a generation-batch boundary)."""
    values = {
        "model_name_or_path": str(model), "dataset_name": "synthetic", "synthetic_size": 64, "prompts_per_step": 1,
        "prompts_per_update": 1, "num_generations": 4, "per_device_train_batch_size": 4,
        "max_completion_length": 8, "learning_rate": 1.0e-2, "warmup_rl_steps": 0, "save_every_rl_steps": 1,
        "save_strategy": "steps", "eval_strategy": "no", "max_steps": 6, "logging_steps": 1,
        "gradient_checkpointing": False, "use_cpu": True, "bf16": False, "report_to": "none",
        "output_dir": str(tmp_path / "out"), "reward_funcs": ["test_length_parity"], "seed": 0,
        "console_log": "compact", "print_summary": False,
    } | overrides
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# launch/train.py's cli, with the suite's test rewards registered (conftest.py): a varying reward makes the
# losses worth comparing between an interrupted and an uninterrupted run
TRAIN_WITH_TEST_REWARDS = (
    "import sys; sys.path.insert(0, 'tests'); import conftest; from trl_justrl.train import cli; cli(sys.argv[1:])"
)


def train_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", TRAIN_WITH_TEST_REWARDS, "--config", str(config), *extra]


def env() -> dict[str, str]:
    return os.environ | {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(), cwd=REPO)


def history(folder: Path) -> list[dict]:
    return json.loads((folder / "trainer_state.json").read_text())["log_history"]


def refused_in_this_process(argv: list[str], capfd) -> str:
    """launch/train.py's cli called here (the code a command runs, without an interpreter's start): it must exit 2;
    returns what it wrote to stderr. Runs that train, stop or resume use real processes."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli(argv)
    err = capfd.readouterr().err
    assert stop.value.code == 2, err[-3000:]
    return err


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, tiny_model_path) -> Path:
    """One finished 3-update run with a whole checkpoint after each update, trained once and shared: a test that
    changes it works on its own copy (`copy_of`)."""
    folder = tmp_path_factory.mktemp("saved-run")
    result = run(train_command(recipe(folder, tiny_model_path, max_steps=3)))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def copy_of(saved_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the shared run: (its recipe, naming the copy's folder; the copy's output folder)."""
    shutil.copytree(saved_run / "out", tmp_path / "out")
    values = yaml.safe_load((saved_run / "recipe.yaml").read_text()) | {"output_dir": str(tmp_path / "out")}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(values))
    return tmp_path / "recipe.yaml", tmp_path / "out"


# ---- whole checkpoints ---------------------------------------------------------------------------------------------


def test_checkpoints_are_marked_and_torn_ones_are_skipped_by_name(tmp_path, saved_run, capfd):
    config, out = copy_of(saved_run, tmp_path)
    for step in (1, 2, 3):
        marker = json.loads((out / f"checkpoint-{step}" / MARKER).read_text())
        assert marker["global_step"] == step and "optimizer.pt" in marker["files"] and "model.safetensors" in marker[
            "files"]
    # a save killed after 2 files (no marker), and one whose optimizer file vanished after it was marked
    torn = out / "checkpoint-5"
    torn.mkdir()
    (torn / "config.json").write_text("{}")
    (torn / "model.safetensors").write_bytes(b"\0" * 10)
    (out / "checkpoint-3" / "optimizer.pt").unlink()
    # and one whose trainer_state.json was overwritten in place with as many bytes (sizes alone cannot tell)
    state = out / "checkpoint-2" / "trainer_state.json"
    state.write_bytes(b"x" * state.stat().st_size)
    found = find_resumable(out)
    assert found.path == out / "checkpoint-1"
    reasons = dict(found.skipped)
    assert "no checkpoint_complete.json" in reasons[torn] and "optimizer.pt is missing" in reasons[out / "checkpoint-3"]
    assert "trainer_state.json changed since it was saved" in reasons[out / "checkpoint-2"]
    refused = refused_in_this_process(["--config", str(config), "--resume_from_checkpoint", str(out / "checkpoint-2")],
                                      capfd)
    assert "trainer_state.json is not valid JSON" in refused and "Traceback" not in refused
    # asked for by path, a checkpoint without its optimizer is refused, naming the file
    with pytest.raises(CheckpointError, match=r"checkpoint-3 cannot be resumed from: optimizer.pt missing"):
        check_resumable(out / "checkpoint-3")
    check_resumable(out / "checkpoint-3", save_only_model=True)  # a model-only save needs no optimizer
    # the requeued job resumes from checkpoint-1 and finishes, instead of looping on checkpoint-5
    result = run(train_command(config, "--resume_from_checkpoint", "latest", "--max_steps", "4"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipping" in result.stderr and "checkpoint-5" in result.stderr and "Resuming from" in result.stderr
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    refused = refused_in_this_process(["--config", str(config), "--resume_from_checkpoint", str(out / "checkpoint-5")],
                                      capfd)
    assert "optimizer.pt" in refused and "Loading weights" not in refused


def test_bytes_flipped_in_the_middle_of_a_file_are_found_and_the_previous_checkpoint_is_taken(tmp_path):
    """The marker's digest covers whole files: one byte changed in the middle of a 3 MiB model.safetensors (the
    ends and the size unchanged) makes that checkpoint skipped, by name, for the previous whole one. A marker of an
    earlier version (digests of the files' ends) still reads."""
    from trl_justrl.run_services.checkpoints import file_digest, incomplete_reason

    weights = bytes(range(256)) * (3 * 4096)  # 3 MiB
    for step in (1, 2):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(weights)
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (folder / name).write_bytes(b"state")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        write_marker(folder, step, 1)
    damaged = tmp_path / "checkpoint-2" / "model.safetensors"
    with damaged.open("r+b") as f:
        f.seek(len(weights) // 2)
        f.write(b"\xff")
    found = find_resumable(tmp_path)
    assert found.path == tmp_path / "checkpoint-1"
    assert dict(found.skipped)[tmp_path / "checkpoint-2"] == ("model.safetensors changed since it was saved (its "
                                                              "checksum differs)")
    earlier = tmp_path / "checkpoint-1" / MARKER  # as an earlier version wrote it: no "digest" kind, ends only
    record = json.loads(earlier.read_text())
    del record["digest"]
    for name, entry in record["files"].items():
        entry["digest"] = file_digest(tmp_path / "checkpoint-1" / name, "ends")
    earlier.write_text(json.dumps(record))
    assert incomplete_reason(tmp_path / "checkpoint-1") is None


def test_rotation_counts_and_deletes_whole_checkpoints_only(tmp_path):
    """save_total_limit 2 with whole checkpoints 1-4 (the best model's is 1), a torn checkpoint-5 and a stray
    checkpoint-99 (no marker). transformers' rotation counts all six and keeps the best and the "newest", 99: it
    deletes 2, 3, 4 (every whole checkpoint to resume from) and 5. Here the whole ones are counted: 1 and 4 stay, and
    the unmarked folders are left alone."""
    for step in (1, 2, 3, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(bytes(step))
        write_marker(folder, step, 1)
    for stray in ("checkpoint-5", "checkpoint-99"):
        (tmp_path / stray).mkdir()
        (tmp_path / stray / "config.json").write_text("{}")
    deleted = rotate_checkpoints(tmp_path, 2, best_model_checkpoint=str(tmp_path / "checkpoint-1"))
    assert deleted == [tmp_path / "checkpoint-2", tmp_path / "checkpoint-3"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["checkpoint-1", "checkpoint-4", "checkpoint-5", "checkpoint-99"]
    assert rotate_checkpoints(tmp_path, 1) == [tmp_path / "checkpoint-1"]  # without a best model: the newest one
    assert rotate_checkpoints(tmp_path, None) == [] and (tmp_path / "checkpoint-4").is_dir()


# ---- a clean stop on a real signal -------------------------------------------------------------------------------


def _start_and_signal(cmd: list[str], sig: int, after_line: str, second: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    lines = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # the compact console prints one line per optimizer step
        lines.append(line)
        if line.startswith(after_line):
            proc.send_signal(sig)
            if second:
                time.sleep(0.2)
                proc.send_signal(sig)
            break
        assert time.monotonic() < deadline, "".join(lines)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines) + out, err)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path) -> list[dict]:
    """The uninterrupted run's logged steps (8 updates)."""
    folder = tmp_path_factory.mktemp("reference")
    assert run(train_command(recipe(folder, tiny_model_path, save_strategy="no", save_every_rl_steps=None,
                                    max_steps=8))).returncode == 0
    return [h for h in history(folder / "out") if "reward" in h]


def test_sigterm_and_sigusr1_each_save_and_stop_and_the_resumed_run_matches(tmp_path, tiny_model_path, reference):
    """SIGTERM (a scheduler's stop), then SIGUSR1 (SLURM's warning signal) in the resumed run: each saves a whole
    checkpoint after the update in progress and exits 75; the second resume finishes the same run. (A step's line
    is printed after that step's stop check: a signal sent on it stops a later update.)"""
    assert len({h["reward"] for h in reference}) > 1  # a varying reward: the comparison below means something

    config = recipe(tmp_path, tiny_model_path, save_strategy="no", save_every_rl_steps=None,  # saved only on a stop
                    max_steps=8)
    out = tmp_path / "out"
    latest = ("--resume_from_checkpoint", "latest")
    previous = 0
    for sig, extra in ((signal.SIGTERM, ()), (signal.SIGUSR1, latest)):
        stopped = _start_and_signal(train_command(config, *extra), sig, f"step {previous + 1}/8")
        assert stopped.returncode == EXIT_REQUEUE, stopped.stderr[-3000:]
        assert "received: finishing the current optimizer update" in stopped.stderr
        record = json.loads((out / "stopped.json").read_text())
        step = record["global_step"]
        assert previous < step < 8 and record["exit_code"] == EXIT_REQUEUE
        assert (out / f"checkpoint-{step}" / MARKER).is_file()
        assert not (out / LOCK_NAME).exists()  # the folder lock is released on the way out
        previous = step

    resumed = run(train_command(config, *latest))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (out / "stopped.json").exists()
    entries = [h for h in history(out) if "reward" in h]
    assert [h["step"] for h in entries] == list(range(1, 9))
    for mine, theirs in zip(entries, reference, strict=True):  # stopped at a batch boundary: the same run
        assert mine["reward"] == pytest.approx(theirs["reward"]) and mine["loss"] == pytest.approx(theirs["loss"])
    assert entries[-1]["budget/tokens_generated"] == reference[-1]["budget/tokens_generated"]  # counted once


def test_signals_within_the_window_are_one_request_and_a_later_one_stops_at_once(tmp_path):
    """A job step's stop reaches a training process several times (Ctrl-C's SIGINT, the group's SIGTERM, the
    launcher's SIGUSR1, the parent-death SIGUSR1): signals within SAME_REQUEST_WINDOW_S of the first repeat its
    request, and SIGINT is a request like the others (no KeyboardInterrupt). One after the window ends the process
    at once (128 + signal), or, while a checkpoint is being written, as soon as it is whole. Two processes, signalled
    together: one idle, one inside `saving()`."""
    script = tmp_path / "waits.py"
    script.write_text(
        "import pathlib, sys, time\n"
        "from trl_justrl.run_services.preemption import SAME_REQUEST_WINDOW_S, GracefulStop\n"
        "stop = GracefulStop()\n"
        "stop.install()\n"
        "print('ready', flush=True)\n"
        "if sys.argv[1] == 'saving':\n"
        "    with stop.saving():  # 'writing a checkpoint' for longer than the window\n"
        "        time.sleep(2 * SAME_REQUEST_WINDOW_S)\n"
        "        pathlib.Path(sys.argv[2]).write_text('whole')\n"
        "time.sleep(60)\n"
    )
    saved = tmp_path / "checkpoint"
    procs = {mode: subprocess.Popen([sys.executable, str(script), mode, str(saved)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
             for mode in ("idle", "saving")}
    assert all(proc.stdout.readline().strip() == "ready" for proc in procs.values())
    for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGTERM):  # one request, three carriers
        for proc in procs.values():
            proc.send_signal(sig)
        time.sleep(0.2)
    time.sleep(1.0)
    assert all(proc.poll() is None for proc in procs.values())  # still finishing their update (here: sleeping)
    time.sleep(SAME_REQUEST_WINDOW_S)
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    idle, saving = (procs[mode].communicate(timeout=30)[1] for mode in ("idle", "saving"))
    assert procs["idle"].returncode == 128 + signal.SIGTERM, idle
    assert "SIGINT received: finishing the current optimizer update" in idle and "KeyboardInterrupt" not in idle
    assert idle.count("already stopping") == 2 and "second signal (SIGTERM): stopping now" in idle
    assert procs["saving"].returncode == 128 + signal.SIGTERM, saving
    assert "while a checkpoint is being written: stopping once it is whole" in saving
    assert saved.read_text() == "whole"


def accelerate_launch(tmp_path: Path, model: Path) -> tuple[Path, list[str]]:
    """A 50-update run (saved only on a stop) under `accelerate launch` on one CPU process: (recipe, command)."""
    config = recipe(tmp_path, model, save_strategy="no", save_every_rl_steps=None, max_steps=50)
    script = tmp_path / "train_with_test_rewards.py"
    script.write_text(TRAIN_WITH_TEST_REWARDS.replace("'tests'", repr(str(REPO / "tests"))).replace("; ", "\n"))
    accelerate = Path(sys.executable).with_name("accelerate")
    return config, [str(accelerate), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", str(script), "--config", str(config)]


def test_a_stop_sent_to_the_whole_process_group_of_accelerate_launch_saves_and_stops(tmp_path, tiny_model_path):
    """`kill -TERM -- -PGID` (timeout, systemd, SLURM's job step) reaches accelerate launch and its training process
    together, and accelerate's death adds the parent-death SIGUSR1: the training process takes them as one request,
    saves a whole checkpoint, writes stopped.json (how a plain `accelerate launch` job script detects a stop), releases
    its lock and exits 75."""
    config, cmd = accelerate_launch(tmp_path, tiny_model_path)
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, env=env(), cwd=REPO,
                                start_new_session=True)
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            if line.startswith("step 1/50"):
                os.killpg(proc.pid, signal.SIGTERM)
                break
            assert time.monotonic() < deadline
        proc.communicate(timeout=240)
        out = tmp_path / "out"
        while not (out / "stopped.json").exists() or (out / LOCK_NAME).exists():
            assert time.monotonic() < deadline, errors.read_text()[-3000:]
            time.sleep(0.5)
    stderr = errors.read_text()
    record = json.loads((out / "stopped.json").read_text())
    assert record["exit_code"] == EXIT_REQUEUE and (out / f"checkpoint-{record['global_step']}" / MARKER).is_file()
    assert "stopping now" not in stderr  # however many of the signals arrived, and in whichever order
    assert proc.returncode != 0  # accelerate launch itself died on the signal: only stopped.json tells the job


def test_budget_leaves_an_unfinished_batch_out_of_a_checkpoint():
    from types import SimpleNamespace

    budget = TokenBudget()
    budget._updates_per_generation = 4.0
    budget.add(generated=100, trained=300, at_step=0)  # the first batch: used up at step 4
    budget.on_step_end(None, SimpleNamespace(global_step=4), None)
    budget.add(generated=50, trained=200, at_step=4)  # the second: used up at step 8
    budget.on_step_end(None, SimpleNamespace(global_step=6), None)  # saved mid-batch
    assert budget.state()["args"] == {"tokens_generated": 100, "tokens_trained": 300}
    budget.on_step_end(None, SimpleNamespace(global_step=8), None)  # saved at the boundary
    assert budget.state()["args"] == {"tokens_generated": 150, "tokens_trained": 500}


# ---- the output folder ---------------------------------------------------------------------------------------------


def test_output_dir_checks(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        check_output_dir(file, resuming=False, overwrite=False)
    used = tmp_path / "used"
    (used / "checkpoint-7").mkdir(parents=True)
    (used / "model.safetensors").write_text("x")
    with pytest.raises(OutputDirError, match=r"already holds a run \(checkpoint-7, model.safetensors\)"):
        check_output_dir(used, resuming=False, overwrite=False)
    check_output_dir(used, resuming=True, overwrite=False)  # resuming into it is the point
    check_output_dir(used, resuming=False, overwrite=True)  # allowed, but nothing goes before the folder is locked
    assert (used / "checkpoint-7").is_dir() and (used / "model.safetensors").is_file()
    with pytest.raises(RuntimeError, match="lock held"):
        clear_previous_run(used, FolderLock(used, "not acquired"))
    with FolderLock(used, "test") as lock:
        clear_previous_run(used, lock)
    assert not (used / "checkpoint-7").exists() and not (used / "model.safetensors").exists()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(OutputDirError, match="is not writable"):
            check_output_dir(locked, resuming=False, overwrite=False)


def test_bad_runs_fail_before_any_model_loads(tmp_path, tiny_model_path, capfd):
    config = recipe(tmp_path, tiny_model_path)
    (tmp_path / "out").write_text("not a folder")
    assert "is a file, not a folder" in refused_in_this_process(["--config", str(config)], capfd)
    (tmp_path / "out").unlink()
    (tmp_path / "out" / "checkpoint-3").mkdir(parents=True)
    refused = refused_in_this_process(["--config", str(config)], capfd)
    assert "already holds a run (checkpoint-3)" in refused and "Loading weights" not in refused
    from trl_justrl.recipe_reader import parse_args

    for bad, message in ((["--learning_rate", "nan"], "learning_rate = nan"),
                         (["--learning_rate=-1e-6"], "learning_rate = -1e-06"),
                         (["--max_completion_length", "0"], "max_completion_length = 0"),
                         (["--save_every_rl_steps", "0"], "save_every_rl_steps = 0"),
                         (["--report_to", "mlflow"], "report_to names mlflow, which is not installed")):
        argv = ["--config", str(config), *bad]  # refused while the arguments are parsed, before anything loads
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            parse_args(argv)


def test_one_writer_per_folder(tmp_path, tiny_model_path, capfd):
    out = tmp_path / "out"
    config = recipe(tmp_path, tiny_model_path)
    with folder_held(out) as holder:
        refused = refused_in_this_process(["--config", str(config)], capfd)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in refused and "Loading weights" not in refused
        # overwrite_output_dir deletes a previous run only once this run holds the folder: a live run loses nothing
        (out / "checkpoint-2").mkdir()
        refused = refused_in_this_process(["--config", str(config), "--overwrite_output_dir", "true"], capfd)
        assert f"pid {holder.pid}" in refused and (out / "checkpoint-2").is_dir()
    assert (out / LOCK_NAME).exists()  # the holder was killed: its file stays, its kernel lock went with it
    with FolderLock(out, "test"):
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):
            FolderLock(out, "another").acquire()
    assert not (out / LOCK_NAME).exists()
    # a lock file that no process holds never blocks a run: empty, cut short, or naming a live unrelated process
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        unrelated = json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "purpose": "training (justrl)"})
        for content in ("", '{"pid": 12', unrelated):
            (out / LOCK_NAME).write_text(content)
            with FolderLock(out, "training") as lock:
                assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_without_working_file_locks_the_file_alone_is_the_claim(tmp_path, monkeypatch, caplog):
    """flock failing with ENOLCK (NFS without lockd): the file is created exclusively; a holder alive on this host
    keeps it, a dead one's is taken over."""
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with FolderLock(tmp_path, "first") as lock:
        assert lock.held and "has no working file locks" in caplog.text
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):
            FolderLock(tmp_path, "second").acquire()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with FolderLock(tmp_path, "after a crash") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_where_exclusive_flock_needs_a_writable_descriptor_the_lock_is_taken_through_one(tmp_path, monkeypatch):
    """NFS emulates flock with fcntl locks: an exclusive lock on a read-only descriptor fails with EBADF there."""
    import errno
    import fcntl

    flock = fcntl.flock

    def nfs_flock(fd, operation):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY and operation & fcntl.LOCK_EX:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    with FolderLock(tmp_path, "first") as lock:
        assert lock.held and json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):
            FolderLock(tmp_path, "second").acquire()


def test_a_run_of_an_earlier_version_holding_its_lock_file_is_refused(tmp_path, monkeypatch):
    """Earlier versions locked `.trl_justrl.lock`: while such a run holds it, a new run is refused (NFS too)."""
    import errno
    import fcntl

    from trl_justrl.run_services.run_folder import LEGACY_LOCK_NAME

    legacy = tmp_path / LEGACY_LOCK_NAME
    legacy.write_text(json.dumps({"pid": 4242, "host": "old-node", "purpose": "training (justrl)"}))
    fd = os.open(legacy, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: conflicts even within this process
    try:
        with pytest.raises(FolderLocked, match="pid 4242 on host old-node"):
            FolderLock(tmp_path, "new").acquire()
        flock = fcntl.flock

        def nfs_flock(descriptor, operation):  # NFS: no exclusive lock through a read-only descriptor
            if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY and operation & fcntl.LOCK_EX:
                raise OSError(errno.EBADF, "Bad file descriptor")
            return flock(descriptor, operation)

        monkeypatch.setattr(fcntl, "flock", nfs_flock)
        with pytest.raises(FolderLocked, match="pid 4242 on host old-node"):
            FolderLock(tmp_path, "new").acquire()
        monkeypatch.undo()
    finally:
        os.close(fd)
    FolderLock(tmp_path, "new").acquire().release()  # its holder gone: the file left behind blocks nothing


# ---- no token at rest ----------------------------------------------------------------------------------------------


def test_a_token_on_a_command_line_or_in_a_recipe_is_refused_before_anything_starts(tmp_path, tiny_model_path, capsys):
    """`accelerate launch` prints a failed run's whole argv, and `ps` shows it to every user: a token there (or in a
    shared recipe) is refused by training, the planner and the launchers, naming HF_TOKEN and never the value. One
    real process shows the exit status; the other entry points are called in this process (the same code)."""
    from trl_justrl.cluster import launcher, plan

    config = recipe(tmp_path, tiny_model_path, max_steps=2)
    result = run(train_command(config, "--hub_token", SENTINEL))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "hub_token on the command line is refused" in result.stderr and "HF_TOKEN" in result.stderr
    assert SENTINEL not in result.stdout + result.stderr

    def exit_status(call) -> int:
        try:
            return call()
        except SystemExit as stop:
            return stop.code

    with_token = recipe(tmp_path / "shared", tiny_model_path, max_steps=2, hub_token=SENTINEL)
    checks = {
        "train, argument": lambda: cli(["--config", str(config), f"--hub_token={SENTINEL}"]),
        "train, abbreviated": lambda: cli(["--config", str(config), "--hub_t", SENTINEL]),  # argparse would expand it
        "train, dashes": lambda: cli(["--config", str(config), f"--hub-tok={SENTINEL}"]),
        "train, recipe": lambda: cli(["--config", str(with_token)]),
        "plan": lambda: plan.main(["--nodes", "1", "--gpus-per-node", "8", "--config", str(with_token)]),
        "launch, recipe": lambda: launcher.main(["multinode", "--dry-run", "--config", str(with_token)]),
        "launch, arguments": lambda: launcher.main(["multinode", "--dry-run", "--", "--hub_token", SENTINEL]),
        "launch, abbreviated": lambda: launcher.main(["multinode", "--dry-run", "--", "--hub-t", SENTINEL]),
    }
    for name, call in checks.items():
        assert exit_status(call) == 2, name
        printed = capsys.readouterr()
        assert "is refused" in printed.err and "HF_TOKEN" in printed.err, name
        assert SENTINEL not in printed.out + printed.err, name
    assert not (tmp_path / "out").exists()  # refused before the output folder, the data or the model


def test_sigterm_to_accelerate_launch_leaves_no_orphan_training(tmp_path, tiny_model_path):
    """`accelerate launch` dies on SIGTERM without passing it on; its training process asked the kernel for SIGUSR1
    when its parent dies, so it saves and stops instead of training on alone."""
    config, cmd = accelerate_launch(tmp_path, tiny_model_path)
    result = _start_and_signal(cmd, signal.SIGTERM, "step 1/50")
    assert result.returncode != 0  # accelerate itself died on the signal
    out = tmp_path / "out"
    deadline = time.monotonic() + 120
    while not (out / "stopped.json").exists():  # the orphaned training process saves, then stops
        assert time.monotonic() < deadline, f"the training process did not stop: {result.stderr[-3000:]}"
        time.sleep(0.5)
    step = json.loads((out / "stopped.json").read_text())["global_step"]
    assert (out / f"checkpoint-{step}" / MARKER).is_file() and step < 50
    time.sleep(2.0)
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(config).encode() in _cmdline(p)]
    assert alive == []


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_a_final_model_that_cannot_be_written_is_rescued(tmp_path):
    from types import SimpleNamespace

    from trl_justrl.train import save_final_model

    written = []

    def save_model(path):
        if not written:
            written.append(("failed", path))
            raise OSError(28, "No space left on device")
        Path(path).mkdir(parents=True, exist_ok=True)
        written.append(("saved", path))

    trainer = SimpleNamespace(save_model=save_model, state=SimpleNamespace(global_step=17),
                              args=SimpleNamespace(push_to_hub=True))
    with pytest.raises(OSError, match=r"Could not write the final model to .*out \(No space left on device\); it was "
                                      r"saved to .*trl_justrl-rescue-out-step17 instead"):
        save_final_model(trainer, tmp_path / "out")
    assert written[1][0] == "saved" and Path(written[1][1]).name == "trl_justrl-rescue-out-step17"
    assert trainer.args.push_to_hub  # pushes were off while saving (transformers pushes on each save_model), and back


def test_two_processes_agree_on_the_stop_step_when_one_is_signalled(tmp_path, tiny_model_path):
    """SIGUSR1 to rank 1 only (as a node-local preemption might): both ranks stop after the same update and write one
    whole checkpoint holding both ranks' RNG state."""
    config = recipe(tmp_path, tiny_model_path, save_strategy="no", save_every_rl_steps=None, max_steps=40,
                    prompts_per_step=2, prompts_per_update=2)
    torchrun = Path(sys.executable).with_name("torchrun")
    script = tmp_path / "train_with_test_rewards.py"
    script.write_text(TRAIN_WITH_TEST_REWARDS.replace("'tests'", repr(str(REPO / "tests"))).replace("; ", "\n"))
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29537", str(script), "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        if line.startswith("step 2/40"):
            break
        assert time.monotonic() < deadline
    ranks = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(script).encode() in _cmdline(p)
             and b"torchrun" not in _cmdline(p)]
    rank1 = next(p for p in ranks if b"RANK=1\0" in (p / "environ").read_bytes())
    os.kill(int(rank1.name), signal.SIGUSR1)
    out, err = proc.communicate(timeout=240)
    step = json.loads((tmp_path / "out" / "stopped.json").read_text())["global_step"]
    marker = json.loads((tmp_path / "out" / f"checkpoint-{step}" / MARKER).read_text())
    assert marker["world_size"] == 2 and {"rng_state_0.pth", "rng_state_1.pth"} <= set(marker["files"])
    assert step < 40 and err.count("Stopping on request at step") >= 1


AGREE = """
import json, sys
from types import SimpleNamespace
import torch.distributed as dist
import trl_justrl.run_services.checkpoints as checkpoints
dist.init_process_group("gloo")
rank = dist.get_rank()
if rank:  # only the main process may read the checkpoints' bytes
    checkpoints.file_digest = lambda *a, **k: (_ for _ in ()).throw(AssertionError("rank 1 read a file"))
for asked in sys.argv[2:]:
    args = SimpleNamespace(world_size=2, process_index=rank, output_dir=sys.argv[1], resume_from_checkpoint=asked,
                           save_only_model=False)
    try:
        print(json.dumps({"resume": checkpoints.agreed_resume_checkpoint(args)}), flush=True)
    except Exception as err:
        print(json.dumps({"error": type(err).__name__ + ": " + str(err)}), flush=True)
"""


def test_the_processes_resume_from_the_checkpoint_the_main_one_checked(tmp_path):
    """With several processes, the main one checks the checkpoints (every byte: 25 GB for a 1.5B run) and tells
    the others which one to load, or the error they all stop on. Two gloo processes, real files."""
    for step in (1, 2):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (folder / name).write_bytes(bytes(64 * step))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        write_marker(folder, step, 2)
    (tmp_path / "checkpoint-2" / "model.safetensors").write_bytes(bytes(127) + b"x")  # same size, changed
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", AGREE, str(tmp_path), "latest", str(tmp_path / "checkpoint-9")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env=env() | {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                           "MASTER_PORT": str(port)}) for rank in (0, 1)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for out, err in outputs:  # per process: the answer to `latest`, then to a checkpoint that is not there
        latest, missing = (json.loads(line) for line in out.strip().splitlines()[-2:])
        assert latest == {"resume": str(tmp_path / "checkpoint-1")}, err[-2000:]
        assert missing["error"].startswith("FileNotFoundError: resume_from_checkpoint="), missing


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    """A claim taken on another machine: held (job 77's killed node, its NFS lease not yet expired) or left behind,
    another job is refused, naming the machine; job 77 requeued takes it over."""

    def refused_to_job_78_taken_by_job_77(refusal: str) -> None:
        monkeypatch.setenv("SLURM_JOB_ID", "78")
        with pytest.raises(FolderLocked, match=refusal):
            FolderLock(tmp_path, "training").acquire()
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        with FolderLock(tmp_path, "training") as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()

    with folder_held(tmp_path, host="another-node", SLURM_JOB_ID="77") as holder:
        refused_to_job_78_taken_by_job_77(f"pid {holder.pid} on host another-node")
    # left behind by a node that died (no process holds it here): a file system whose locks stay on one machine
    # cannot tell it from a live run there
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 12, "host": "another-node", "slurm_job": "77"}))
    refused_to_job_78_taken_by_job_77(r"pid 12 on host another-node .*another machine.*delete")


# ---- requeued and resumed runs -------------------------------------------------------------------------------------


def test_a_finished_run_requeued_trains_nothing_and_changed_settings_are_refused(tmp_path, saved_run, capfd,
                                                                                  caplog):
    """Every restart passes `--resume_from_checkpoint latest`: a finished run says so and exits 0; a resume that
    changes the objective, batch or schedule is refused before the model loads, listing each change, unless
    resume_allow_changes (then it is recorded in the model card); logging changes pass. The runs that train are real
    processes; the requeues that end before the model loads call the command's code here."""
    config, out = copy_of(saved_run, tmp_path)  # finished at update 3
    final = (out / "model.safetensors").stat().st_mtime_ns

    capfd.readouterr()
    assert cli(["--config", str(config), "--resume_from_checkpoint", "latest", "--max_steps", "3"]) == out
    assert "already finished at step 3; nothing to train" in caplog.text
    assert "Loading weights" not in capfd.readouterr().err
    assert not (out / "checkpoint-4").exists() and (out / "model.safetensors").stat().st_mtime_ns == final

    for extra, listed in ((["--learning_rate", "5e-3"], "learning_rate: 0.01 -> 0.005"),
                          (["--prompts_per_step", "2", "--prompts_per_update", "2"], "prompts_per_step: 1 -> 2")):
        refused = refused_in_this_process(
            ["--config", str(config), "--resume_from_checkpoint", "latest", "--max_steps", "4", *extra], capfd)
        assert listed in refused and "resume_allow_changes" in refused
        assert "Loading weights" not in refused and not (out / "checkpoint-4").exists()

    allowed = run(train_command(config, "--resume_from_checkpoint", "latest", "--max_steps", "4", "--learning_rate",
                                "5e-3", "--resume_allow_changes", "true", "--logging_steps", "2"))
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "learning_rate: 0.01 -> 0.005" in allowed.stderr and "logging_steps: 1 -> 2" in allowed.stderr
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert json.loads((out / "resume_changes.json").read_text()) == [
        {"resumed_at_step": 3, "changes": ["learning_rate: 0.01 -> 0.005"]}]
    card = (out / "README.md").read_text()
    assert "Resumed at update 3 with changed settings: `learning_rate: 0.01 -> 0.005`" in card

    # finished, but killed after its last checkpoint, before the final save: the checkpoint becomes the final model
    (out / "finished.json").unlink()
    (out / "model.safetensors").unlink()
    caplog.clear()
    capfd.readouterr()
    assert cli(["--config", str(config), "--resume_from_checkpoint", "latest", "--max_steps", "4", "--learning_rate",
                "5e-3"]) == out
    assert "checkpoint-4 is at step 4 = max_steps: training is done" in caplog.text
    assert "Loading weights" not in capfd.readouterr().err
    assert not (out / "checkpoint-5").exists() and (out / "finished.json").is_file()
    assert (out / "model.safetensors").read_bytes() == (out / "checkpoint-4" / "model.safetensors").read_bytes()


def test_a_stop_in_the_last_update_finishes_the_run(tmp_path, tiny_model_path):
    """A signal during the last optimizer update: the run saves its final model and finishes (exit 0), so a requeue
    has nothing left to do."""
    config = recipe(tmp_path, tiny_model_path, save_strategy="no", save_every_rl_steps=None, max_steps=2)
    result = _start_and_signal(train_command(config), signal.SIGTERM, "step 1/2")
    out = tmp_path / "out"
    if result.returncode == EXIT_REQUEUE:  # the signal landed in update 1: resume into the last one and stop there
        result = _start_and_signal(train_command(config, "--resume_from_checkpoint", "latest"), signal.SIGTERM,
                                   "step 2/2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "finished.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "stopped.json").exists()


# ---- a full disk ---------------------------------------------------------------------------------------------------


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# launch/train.py's cli with checkpoint-2's writes failing as a full disk fails them (for machines where a small tmpfs
# cannot be mounted): torch.save writes part of the file, then raises torch's own error
TRAIN_WITH_A_FULL_DISK_AT_CHECKPOINT_2 = TRAIN_WITH_TEST_REWARDS.replace("from trl_justrl.train import cli; ", (
    "import torch, shutil, collections; save = torch.save; "
    "usage = collections.namedtuple('usage', 'total used free'); "
    "full = lambda f: 'checkpoint-2' in str(f); "
    "shutil.disk_usage = lambda p: usage(40 << 20, 40 << 20, 0); "
    "torch.save = lambda obj, f, *a, **k: (open(f, 'wb').write(b'PK' * 1000), (_ for _ in ()).throw(RuntimeError("
    "'[enforce fail at inline_container.cc:672] . unexpected pos 2000 vs 1900'))) "
    "if full(f) else save(obj, f, *a, **k); "
    "from trl_justrl.train import cli; "))


def test_a_full_disk_names_the_folder_removes_the_torn_checkpoint_and_keeps_earlier_ones(tmp_path, tiny_model_path,
                                                                                           saved_run):
    """On a filesystem with room for one checkpoint and a half (a real tmpfs where it can be mounted), the second
    save fails: the error names the folder and the free space, the torn checkpoint-2 is removed (the disk is not kept
    full), checkpoint-1 stays whole and resumable, the lock is released, the exit status is 1."""
    one = _folder_bytes(saved_run / "out" / "checkpoint-1")  # a checkpoint of the same tiny run
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(1.5 * one) // 4096 * 4096 + 65536}",
                              "tmpfs", str(small)], capture_output=True).returncode == 0
    try:
        config = recipe(tmp_path, tiny_model_path, max_steps=4, output_dir=str(small / "out"))
        cmd = train_command(config)
        if not mounted:
            cmd[2] = TRAIN_WITH_A_FULL_DISK_AT_CHECKPOINT_2
        result = run(cmd)
        out = small / "out"
        assert result.returncode == 1, result.stderr[-3000:]
        assert f"Saving checkpoint-2 in {out} failed: no space left on the device" in result.stderr
        assert "MB free of" in result.stderr and "The incomplete checkpoint-2 was removed" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (out / "checkpoint-2").exists() and not (out / LOCK_NAME).exists()
        assert find_resumable(out).path == out / "checkpoint-1" and find_resumable(out).skipped == []
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(small)], check=False)


def test_an_output_folder_that_turns_read_only_mid_run_is_one_error_line(tmp_path, tiny_model_path):
    """The folder's mount turns read-only between two saves (a real remount): one error line naming the cause and
    the folder, no traceback (the lock's removal used to end in a third one, hiding the error), exit 1; the earlier
    checkpoints stay whole and the lock file left behind blocks no later run."""
    mount = tmp_path / "mount"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("no tmpfs can be mounted here (needs root)")
    process = None
    try:
        config = recipe(tmp_path, tiny_model_path, max_steps=4, output_dir=str(mount / "out"))
        process = subprocess.Popen(train_command(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=env(), cwd=REPO)
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("step 1/4"):  # checkpoint-1 is being saved: turn read-only once it is whole
                deadline = time.monotonic() + 60
                while not (mount / "out" / "checkpoint-1" / MARKER).exists():
                    assert time.monotonic() < deadline, "checkpoint-1 never became whole"
                    time.sleep(0.05)
                for _ in range(20):  # busy while a file is open for writing (the lock's descriptor is read-only)
                    remount = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True,
                                             text=True)
                    if remount.returncode == 0:
                        break
                    time.sleep(0.05)
                assert remount.returncode == 0, remount.stderr
        output = "".join(lines)
        assert process.wait(timeout=120) == 1, output[-3000:]
        out = mount / "out"
        assert f"in {out} failed: the folder turned read-only" in output and "Traceback" not in output
        assert f"{out / LOCK_NAME} could not be removed" in output
        assert incomplete_reason(out / "checkpoint-1") is None
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        FolderLock(out, "a later run").acquire().release()  # the file left behind holds no lock
        assert find_resumable(out).path == out / "checkpoint-1"
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        subprocess.run(["umount", "--lazy", str(mount)], check=False)
