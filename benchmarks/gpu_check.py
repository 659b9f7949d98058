"""The GPU check: one command for whoever holds a GPU for a few minutes (at most 6 on one H100 / H200).

    python benchmarks/gpu_check.py --out OUT --workdir /tmp/gpu_check --tokenizer TOKENIZER_FOLDER
    python benchmarks/gpu_check.py --device cpu --preset cpu-small --out OUT     # the same paths on CPU (the suite)

Phases, each printed with its wall time as it ends, each result written to OUT/summary.json at once (a run cut off
keeps what finished; a phase that fails is recorded and the next runs):

- `environment`: device, versions, memory;
- `smoke`: a small random model trained 2 JustRL steps end to end (`trl_justrl.train`, transformers generation, bf16,
  packed forwards, gradient checkpointing), a checkpoint at each step, then a resume from the latest to step 3;
- `model`: the preset's random model (Qwen2-1.5B's shape on GPU), built once;
- `update:justrl`, `update:justrl_packed`, `update:stock`: `benchmarks/policy_update.py` for one trainer each (one
  warm-up and `--steps` timed JustRL steps, in its own process), with a `torch.profiler` profile of ONE optimizer
  update (the warm-up step's last, so no timed step is profiled): OUT/profile_update_<trainer>.txt, top operators by
  device and by self time. Stock TRL runs last: it is the slowest, and its number is known from earlier runs.

`--set-config KEY=VALUE` goes to every trainer's config (policy_update.py) and into the summary. Models, checkpoints
and each phase's log go to `--workdir` (default OUT/work; a failed phase's last log lines are in the summary); OUT
keeps the summary and the three profiles, four files. Exit status 0 when every phase passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

# per preset: packing budget of the policy-update runs, the smoke model's shape and its completions' length (bf16 on
# a CPU is slow: the suite's smoke writes half as many tokens)
PRESETS = {
    "qwen2-1.5b": dict(max_tokens=32768, smoke_completion_length=32,
                       smoke_model=dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2)),
    "cpu-small": dict(max_tokens=1120, smoke_completion_length=16,
                      smoke_model=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2)),
}
TRAINERS = ("justrl", "justrl_packed", "stock")
SMOKE_UPDATES_PER_STEP = 2  # prompts_per_step 2, prompts_per_update 1


def length_parity(completions, **kwargs):
    """A reward that varies for a random model (even / odd text length), so the smoke's advantages are not zero."""
    return [1.0 if len(c if isinstance(c, str) else c[0]["content"]) % 2 else -1.0 for c in completions]


class Check:
    """The phases' results, written to `summary.json` after each phase (atomically: a reader never sees half).
    A SIGTERM or SIGINT to the check stops the phase's process group too (it runs in its own session)."""

    def __init__(self, out: Path, deadline: float, command: list[str]):
        self.out, self.deadline = out, deadline
        self.summary: dict = {"command": " ".join(command), "phases": [], "updates": {}}
        self.started = time.monotonic()
        self._child: subprocess.Popen | None = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)

    def _stop(self, signum: int, frame) -> None:
        if self._child is not None and self._child.poll() is None:
            os.killpg(self._child.pid, signal.SIGKILL)
        raise SystemExit(128 + signum)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, name: str, status: str, seconds: float, **details) -> None:
        self.summary["phases"].append({"name": name, "status": status, "seconds": round(seconds, 1), **details})
        self.summary["elapsed_s"] = round(time.monotonic() - self.started, 1)
        print(f"[gpu_check] {name}: {status} in {seconds:.1f} s (elapsed {self.summary['elapsed_s']:.0f} s, "
              f"{max(self.left(), 0):.0f} s left)", flush=True)
        self.write()

    def write(self) -> None:
        partial = self.out / "summary.json.partial"
        partial.write_text(json.dumps(self.summary, indent=2, default=str))
        partial.replace(self.out / "summary.json")

    def run(self, name: str, command: list[str], log: Path) -> tuple[str, float]:
        """`command` in its own process group, its output to `log`, stopped at the check's deadline."""
        start = time.monotonic()
        if self.left() <= 0:
            return "skipped: time limit reached", 0.0
        env = os.environ | {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                            "TRL_EXPERIMENTAL_SILENCE": "1"}
        with log.open("w") as stream:
            process = self._child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT,
                                                     env=env, start_new_session=True)
            try:
                code = process.wait(timeout=self.left())
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return "cut off at the time limit", time.monotonic() - start
            finally:
                self._child = None
        return ("ok" if code == 0 else f"failed (exit {code})"), time.monotonic() - start


def _tail(path: Path, lines: int = 30) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []


def environment(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "versions": {}}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "math_verify"):
        try:
            info["versions"][name] = __import__(name).__version__
        except Exception as error:  # a missing wheel is the first thing to know
            info["versions"][name] = f"missing: {error}"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch sees no GPU")
        from trl_justrl.policy_update import packing

        props = torch.cuda.get_device_properties(0)
        with torch.autocast("cuda", dtype=torch.bfloat16):  # as training runs: float32 queries under autocast
            varlen = packing._varlen_dtype(torch.zeros(1, 2, 4, 64, device="cuda"))
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported(),
                 "packed_attention": f"variable-length kernel in {varlen}" if varlen else "SDPA per row"}
    return info


def smoke_recipe(args: argparse.Namespace, model_dir: Path, folder: Path) -> Path:
    """The smoke's recipe: 2 prompts x 4 rollouts per step, 2 updates per step, packs of 256 tokens (2 rows)."""
    import yaml

    values = {
        "model_name_or_path": str(model_dir), "dataset_name": "synthetic", "synthetic_size": 64,
        "prompts_per_step": 2, "prompts_per_update": 1, "num_generations": 4,
        "max_completion_length": PRESETS[args.preset]["smoke_completion_length"],
        "max_tokens_per_microbatch": 256, "learning_rate": 1.0e-4, "warmup_rl_steps": 0, "bf16": True,
        "use_cpu": args.device == "cpu", "gradient_checkpointing": True, "save_every_rl_steps": 1,
        "save_strategy": "steps", "eval_strategy": "no", "max_steps": 2 * SMOKE_UPDATES_PER_STEP,
        "logging_steps": SMOKE_UPDATES_PER_STEP, "report_to": "none", "output_dir": str(folder / "run"),
        "reward_funcs": ["gpu_check_length_parity"], "seed": 0, "console_log": "compact", "print_summary": False,
        "use_vllm": False,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def smoke(check: Check, args: argparse.Namespace, tokenizer) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    start = time.monotonic()
    folder = args.workdir / "smoke"
    model_dir = folder / "model"
    if not (model_dir / "config.json").is_file():
        torch.manual_seed(0)
        config = Qwen2Config(**PRESETS[args.preset]["smoke_model"], vocab_size=len(tokenizer),
                             max_position_embeddings=2048, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    recipe = smoke_recipe(args, model_dir, folder)
    train = [sys.executable, str(Path(__file__).resolve()), "--train", "--config", str(recipe)]
    logs = args.workdir / "logs"
    status, _ = check.run("smoke (2 steps)", train, logs / "smoke_train.log")
    details: dict = {}
    if status == "ok":
        resume = [*train, "--max_steps", str(3 * SMOKE_UPDATES_PER_STEP), "--resume_from_checkpoint", "latest"]
        status, _ = check.run("smoke (resume)", resume, logs / "smoke_resume.log")
    run = folder / "run"
    state = run / "trainer_state.json"
    if state.is_file():
        history = json.loads(state.read_text())
        details = {"global_step": history["global_step"],
                   "losses": [entry["loss"] for entry in history["log_history"] if "loss" in entry],
                   "checkpoints": sorted(p.name for p in run.glob("checkpoint-*"))}
        if status == "ok" and history["global_step"] != 3 * SMOKE_UPDATES_PER_STEP:
            status = f"failed: resumed run ended at update {history['global_step']}, not {3 * SMOKE_UPDATES_PER_STEP}"
    if status != "ok":
        details["log_tail"] = _tail(logs / "smoke_resume.log") or _tail(logs / "smoke_train.log")
    check.record("smoke", status, time.monotonic() - start, **details)


def policy_update_module():
    spec = importlib.util.spec_from_file_location("policy_update", ROOT / "benchmarks" / "policy_update.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def updates(check: Check, args: argparse.Namespace) -> None:
    import torch

    policy_update = policy_update_module()
    preset = policy_update.preset_values(args.preset, args.set)
    start = time.monotonic()
    try:
        model_dir = policy_update.build_model(preset, args.workdir)
    except Exception as error:  # recorded; the trainers cannot run without it
        check.record("model", f"failed: {type(error).__name__}: {error}", time.monotonic() - start)
        return
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the trainers run in their own processes
    check.record("model", "ok", time.monotonic() - start, folder=str(model_dir), preset=preset)
    for kind in TRAINERS:
        report_path = args.workdir / f"update_{kind}.json"
        report_path.unlink(missing_ok=True)
        command = [sys.executable, str(ROOT / "benchmarks" / "policy_update.py"), "--preset", args.preset,
                   "--device", args.device, "--prompts", str(args.prompts), "--steps", str(args.steps),
                   "--only", kind, "--max-tokens", str(args.max_tokens), "--workdir", str(args.workdir),
                   "--json", str(report_path), "--profile-update", "4", "--profile-dir", str(args.out),
                   "--tokenizer", str(args.tokenizer)]
        if args.set:
            command += ["--set", *args.set]
        if args.set_config:
            command += ["--set-config", *args.set_config]
        status, seconds = check.run(f"update:{kind}", command, args.workdir / "logs" / f"update_{kind}.log")
        details: dict = {}
        if report_path.is_file():
            report = json.loads(report_path.read_text())
            result = report["results"][kind]
            check.summary["updates"][kind] = result | {"real_tokens_per_step": report["real_tokens_per_step"],
                                                      "completion_mean": report["completion_mean"]}
            check.summary.setdefault("workload", {k: report[k] for k in (
                "preset", "preset_values", "device", "completions", "completion_mean", "completion_max",
                "truncated", "real_tokens_per_step", "config_overrides", "machine", "versions")})
            details = {k: result.get(k) for k in ("seconds_per_step", "real_tokens_per_s", "mfu",
                                                  "peak_memory_gib", "estimated_peak_gib")}
        if status != "ok":
            details["log_tail"] = _tail(args.workdir / "logs" / f"update_{kind}.log")
        check.record(f"update:{kind}", status, seconds, **details)
    compare(check.summary)
    check.write()


def compare(summary: dict) -> None:
    """Speed-ups over stock and the largest per-update loss difference, from the trainers that finished."""
    results = summary["updates"]
    comparison = {}
    for kind in ("justrl", "justrl_packed"):
        if kind in results and "stock" in results:
            comparison[f"speedup_{kind}"] = results["stock"]["seconds_per_step"] / results[kind]["seconds_per_step"]
            comparison[f"max_loss_difference_{kind}"] = max(
                (abs(a - b) for a, b in zip(results["stock"]["losses"], results[kind]["losses"], strict=False)),
                default=None)
    if "justrl" in results and "justrl_packed" in results:
        comparison["packed_over_unpacked"] = (results["justrl"]["seconds_per_step"]
                                              / results["justrl_packed"]["seconds_per_step"])
    summary["comparison"] = comparison


def train_child(argv: list[str]) -> int:
    """The smoke's training process: `trl_justrl.train` with the length-parity reward registered."""
    from trl_justrl.rewards import register_reward
    from trl_justrl.train import cli

    register_reward("gpu_check_length_parity")(length_parity)
    cli(argv)  # exits non-zero itself on bad settings or a failed run
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--train"]:
        return train_child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="default: qwen2-1.5b on cuda, cpu-small on cpu")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"))
    parser.add_argument("--workdir", type=Path, default=None, help="models, checkpoints (default: OUT/work)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="a folder with the SmolLM2 tokenizer files (default: the embedded model's)")
    parser.add_argument("--time-limit", type=float, default=360.0, help="seconds for all phases (default 6 min)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed JustRL steps per trainer, after one warm-up")
    parser.add_argument("--max-tokens", type=int, default=None, help="the packed run's budget (default: preset's)")
    parser.add_argument("--phases", nargs="*", choices=["smoke", "updates"], default=["smoke", "updates"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="policy_update.py preset values")
    parser.add_argument("--set-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="a field of every trainer's config, e.g. use_liger_kernel=true (policy_update.py)")
    args = parser.parse_args(argv)
    args.preset = args.preset or ("qwen2-1.5b" if args.device == "cuda" else "cpu-small")
    args.max_tokens = args.max_tokens or PRESETS[args.preset]["max_tokens"]
    args.out.mkdir(parents=True, exist_ok=True)
    args.workdir = (args.workdir or args.out / "work").resolve()
    (args.workdir / "logs").mkdir(parents=True, exist_ok=True)
    args.out = args.out.resolve()
    policy_update = policy_update_module()
    try:  # a misspelt option fails here, before any model is built
        policy_update.check_config_overrides(policy_update.parse_config_overrides(args.set_config),
                                             [policy_update.trainer_classes(kind)[0] for kind in TRAINERS])
        policy_update.preset_values(args.preset, args.set)
    except ValueError as error:
        parser.error(str(error))

    check = Check(args.out, time.monotonic() + args.time_limit, ["python", "benchmarks/gpu_check.py", *argv])
    check.summary["set_config"] = policy_update.parse_config_overrides(args.set_config)
    start = time.monotonic()
    try:
        check.summary["environment"] = environment(args.device)
    except RuntimeError as error:
        check.record("environment", f"failed: {error}", time.monotonic() - start)
        return 1
    check.record("environment", "ok", time.monotonic() - start)

    from transformers import AutoTokenizer

    from trl_justrl.models import resolve_model

    if args.tokenizer is None:
        args.tokenizer = Path(resolve_model("smollm2-135m-instruct"))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if "smoke" in args.phases:
        smoke(check, args, tokenizer)
    if "updates" in args.phases:
        updates(check, args)
    failed = [phase["name"] for phase in check.summary["phases"] if phase["status"] != "ok"]
    print(f"[gpu_check] done in {time.monotonic() - check.started:.0f} s; summary: {args.out / 'summary.json'}"
          + (f"; not ok: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
