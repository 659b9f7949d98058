"""Benchmark: one JustRL policy update (old-log-prob pass + 4 optimizer updates) for stock TRL and JustRLTrainer.

    python benchmarks/policy_update.py                      # CPU, scaled-down paper lengths, both trainers
    python benchmarks/policy_update.py --uniform            # every prompt and completion the same length (no padding)
    python benchmarks/policy_update.py --max-tokens 1120    # also JustRLTrainer with packed forwards
    python benchmarks/policy_update.py --preset qwen2-1.5b  # GPU: a Qwen2-1.5B config, bf16, paper lengths

Both trainers get the same random Qwen2-shaped model (built from a config, seeded), the same generation batch (a
fixed `rollout_func` returns the same token ids: no sampling is timed) and the same objective: stock
`trl.GRPOTrainer` with `loss_type="dapo"`, epsilon 0.2 / 0.28, `delta=10`, `beta=0`, and `JustRLTrainer` (the same
loss through TRL, plus padding-free micro-batches). A JustRL step is timed from the start of its generation batch to
the end of its last optimizer update; the first step (warm-up) is left out and the median of the rest is reported,
with real (unpadded) tokens per second, the ratio, and the largest difference between the two runs' per-update
losses. `--max-tokens N` adds a third run, `justrl_packed`: JustRLTrainer with `max_tokens_per_microbatch=N` (each
update's completions packed end to end into forwards of at most N real tokens). `--repeats N` runs the set N times,
alternating the trainers, and reports the median of the N ratios to stock (a shared machine's load drifts). With
micro-batches of one completion (or packed ones) it also estimates the model FLOPs each trainer executes per step and
the rate each achieved (how far the speed-up is from the work saved). Results and the run's machine and versions are
printed; `--json PATH` also writes them.

`--set-config KEY=VALUE` sets a field of every trainer's config (TRL's speed options side by side on the same work:
`use_liger_kernel=true`, `gradient_checkpointing=false|auto`, `cast_lm_head_to_fp32=true`; `attn_implementation=X`
and other `model_init_kwargs.KEY=X` reach the model's loading). `--profile-update N` profiles optimizer update N
(1-based; the warm-up step's last update, 4, leaves the timed steps untouched) with a `torch.profiler` schedule
(update N-1 its warm-up) and writes the top operators by device time and by self time to `--profile-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

PRESETS = {
    # CPU: the paper's lengths scaled down (cap 15,360 -> 512, mean ~4.5K -> 150, 3-5% truncated; prompts 24-48),
    # and a small model whose attention is a sizeable share of its work at that length, as at 16K in Qwen2-1.5B
    "cpu-small": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=4096, cap=512, mean=150, prompt_min=24, prompt_max=48,
                      dtype="float32", gradient_checkpointing=False),
    # GPU: Qwen2-1.5B's shape (the paper's models), the paper's lengths
    "qwen2-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, cap=15360, mean=4500, prompt_min=100,
                       prompt_max=400, dtype="bfloat16", gradient_checkpointing=True),
}
EOS, PAD = 2, 2  # the SmolLM2 tokenizer's <|im_end|>, also its pad token


def completion_lengths(count: int, cap: int, mean: int, truncated: int, generator: torch.Generator) -> list[int]:
    """`count` lengths with a long right tail around `mean` (gamma, shape 2), `truncated` of them at the cap."""
    gamma = torch.distributions.Gamma(torch.tensor(2.0), torch.tensor(2.0 / mean))
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    lengths = [int(min(max(gamma.sample().item(), 8), cap - 1)) for _ in range(count)]
    for i in torch.randperm(count, generator=generator)[:truncated].tolist():
        lengths[i] = cap
    return lengths


def make_rollouts(prompts: int, generations: int, preset: dict, uniform: bool, seed: int) -> dict:
    """Fixed prompt and completion token ids (EOS-terminated unless truncated at the cap)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = preset["vocab_size"]
    count = prompts * generations
    if uniform:
        p_lengths = [preset["prompt_max"]] * prompts
        c_lengths = [preset["mean"]] * count
    else:
        p_lengths = torch.randint(preset["prompt_min"], preset["prompt_max"] + 1, (prompts,), generator=generator)
        p_lengths = p_lengths.tolist()
        c_lengths = completion_lengths(count, preset["cap"], preset["mean"], max(1, round(0.04 * count)), generator)
    prompt_ids = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in p_lengths]
    completion_ids = []
    for n in c_lengths:
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        if n < preset["cap"]:
            ids[-1] = EOS
        completion_ids.append(ids)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids}


class FixedRollouts:
    """A TRL `rollout_func`: the same completions for every generation batch (prompt i's group gets rows i*G..)."""

    def __init__(self, rollouts: dict, generations: int):
        self.rollouts, self.generations = rollouts, generations

    def __call__(self, prompts: list, trainer) -> dict:
        index = {p: i for i, p in enumerate(trainer._benchmark_prompt_order)}
        rows = []
        for k, prompt in enumerate(prompts):
            group = index[prompt[-1]["content"] if isinstance(prompt, list) else prompt]
            rows.append(group * self.generations + k % self.generations)
        return {
            "prompt_ids": [self.rollouts["prompt_ids"][r // self.generations] for r in rows],
            "completion_ids": [self.rollouts["completion_ids"][r] for r in rows],
            "logprobs": None,
        }


def constant_reward(completions, **kwargs):
    """A reward with spread inside each group (so advantages are non-zero) that costs nothing to compute."""
    return [float(i % 3) for i in range(len(completions))]


class StepTimer(TrainerCallback):
    """Wall time of each JustRL step (generation batch + its optimizer updates) and every loss."""

    def __init__(self, updates_per_step: int, synchronize):
        self.updates_per_step, self.synchronize = updates_per_step, synchronize
        self.step_times: list[float] = []
        self.losses: list[float] = []
        self._start = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step % self.updates_per_step == 0:
            self.synchronize()
            self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.updates_per_step == 0:
            self.synchronize()
            self.step_times.append(time.perf_counter() - self._start)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


class OneUpdateProfile(TrainerCallback):
    """`torch.profiler` over optimizer update `update` (1-based) only, update - 1 its warm-up; writes the top
    operators by total and by self time (device time on CUDA, CPU time on CPU) as text, keeps them for the JSON."""

    def __init__(self, update: int, path: Path, device: str, rows: int = 25):
        self.update, self.path, self.device, self.rows = update, path, device, rows
        self.top: dict[str, list[dict]] = {}
        self._profiler = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._profiler is None and state.global_step == max(self.update - 2, 0):
            from torch.profiler import ProfilerActivity, profile, schedule

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
            warmup = 1 if self.update > 1 else 0
            self._profiler = profile(activities=activities, on_trace_ready=self._write,
                                     schedule=schedule(wait=0, warmup=warmup, active=1, repeat=1))
            self._profiler.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self._profiler is not None and not self.top:
            if self.device == "cuda":
                torch.cuda.synchronize()  # the update's last kernels stay in its own window
            self._profiler.step()  # the schedule calls _write once the active update ends
            if state.global_step >= self.update:
                self._profiler.stop()

    def _write(self, profiler) -> None:
        averages = profiler.key_averages()
        prefix = "device" if self.device == "cuda" else "cpu"
        sections = []
        for key, title in ((f"{prefix}_time_total", "total"), (f"self_{prefix}_time_total", "self")):
            sections.append(f"# optimizer update {self.update}: top operators by {title} {prefix} time\n"
                            + averages.table(sort_by=key, row_limit=self.rows))
            ranked = sorted(averages, key=lambda event: getattr(event, key), reverse=True)[: self.rows]
            self.top[title] = [{"operator": event.key, "calls": event.count,
                                "total_ms": getattr(event, f"{prefix}_time_total") / 1e3,
                                "self_ms": getattr(event, f"self_{prefix}_time_total") / 1e3} for event in ranked]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n\n".join(sections))


def preset_values(preset: str, items: list[str]) -> dict:
    """PRESETS[preset] with `--set KEY=VALUE` items applied; ValueError naming a key the preset does not have."""
    values = dict(PRESETS[preset])
    for item in items:
        key, _, value = item.partition("=")
        if key not in values:
            raise ValueError(f"--set {key}: not a preset key ({', '.join(values)})")
        values[key] = type(values[key])(value) if not isinstance(values[key], bool) else value == "true"
    return values


def parse_config_overrides(items: list[str]) -> dict[str, object]:
    """`KEY=VALUE` strings as config values: YAML scalars (true, 3, 1e-6, sdpa); `attn_implementation` and
    `model_init_kwargs.KEY` go into `model_init_kwargs`, another `FIELD.KEY` into that dict field."""
    import yaml

    overrides: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set-config {item!r}: expected KEY=VALUE")
        value = yaml.safe_load(text) if text else ""
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads 1e-6 as text
            except ValueError:
                pass
        if key == "attn_implementation":
            key = "model_init_kwargs.attn_implementation"
        field_name, _, sub_key = key.partition(".")
        if sub_key:
            overrides.setdefault(field_name, {})[sub_key] = value  # type: ignore[index]
        else:
            overrides[field_name] = value
    return overrides


def check_config_overrides(overrides: dict[str, object], config_classes: list[type]) -> None:
    """Refuse a key that is not a field of every trainer's config (before any model is built)."""
    import dataclasses

    for cls in config_classes:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"--set-config {', '.join(unknown)}: not a field of {cls.__name__}")


def trainer_classes(kind: str):
    from trl import GRPOConfig, GRPOTrainer

    from trl_justrl import JustRLConfig, JustRLTrainer

    return (GRPOConfig, GRPOTrainer) if kind == "stock" else (JustRLConfig, JustRLTrainer)


def largest_forward_tokens(kind: str, rollouts: dict, generations: int, max_tokens: int | None) -> int:
    """Tokens of the run's largest forward: stock pads each row to the batch's width; JustRLTrainer runs a row over
    its own tokens, or a pack of up to `max_tokens` (a longer row alone)."""
    rows = [len(rollouts["prompt_ids"][i // generations]) + len(ids)
            for i, ids in enumerate(rollouts["completion_ids"])]
    if kind == "stock":
        return max(map(len, rollouts["prompt_ids"])) + max(map(len, rollouts["completion_ids"]))
    if kind == "justrl_packed":
        return max(max_tokens, max(rows))
    return max(rows)


def run(kind: str, model_dir: Path, tokenizer, rollouts: dict, args: argparse.Namespace, preset: dict) -> dict:
    from datasets import Dataset

    from trl_justrl.policy_update.activation_memory import (
        AUTO,
        estimate_memory,
        precision_bytes,
        resolve_auto_checkpointing,
    )

    updates, generations = 4, args.generations
    per_update = args.prompts // updates * generations
    common = dict(
        output_dir=str(args.workdir / kind), report_to="none", use_cpu=args.device == "cpu",
        bf16=preset["dtype"] == "bfloat16", num_generations=generations, max_completion_length=preset["cap"],
        max_steps=updates * (args.steps + 1), logging_steps=1, save_strategy="no", learning_rate=1e-6,
        gradient_checkpointing=preset["gradient_checkpointing"], seed=0, shuffle_dataset=False,
        per_device_train_batch_size=args.micro_batch, vllm_importance_sampling_correction=False,
    )
    accumulation = per_update // args.micro_batch
    config_class, trainer_class = trainer_classes(kind)
    if kind == "stock":
        specific = dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, delta=10.0, beta=0.0,
                        gradient_accumulation_steps=accumulation, steps_per_generation=accumulation * updates,
                        weight_decay=0.1, max_grad_norm=1.0, lr_scheduler_type="constant")
    else:
        specific = dict(prompts_per_step=args.prompts, prompts_per_update=args.prompts // updates,
                        warmup_rl_steps=0, save_every_rl_steps=None,
                        max_tokens_per_microbatch=args.max_tokens if kind == "justrl_packed" else None)
    overrides = dict(args.config_overrides)
    init_kwargs = overrides.pop("model_init_kwargs", {})
    config = config_class(**(common | specific | overrides | {"model_init_kwargs": init_kwargs or None}))
    model_config = AutoConfig.from_pretrained(model_dir)
    if config.gradient_checkpointing == AUTO:  # resolved here for every trainer: stock GRPOTrainer knows no "auto"
        resolve_auto_checkpointing(config, model_config)
    estimate = estimate_memory(model_config, largest_forward_tokens(kind, rollouts, generations, args.max_tokens),
                               *precision_bytes(config, model_config))
    prompts = [f"problem {i}" for i in range(args.prompts)]
    dataset = Dataset.from_list([{"prompt": p} for p in prompts] * (args.steps + 1))
    timer = StepTimer(updates, torch.cuda.synchronize if args.device == "cuda" else (lambda: None))
    callbacks = [timer]
    if args.profile_update is not None:
        profile = OneUpdateProfile(args.profile_update, args.profile_dir / f"profile_update_{kind}.txt", args.device)
        callbacks.append(profile)
    trainer = trainer_class(
        model=str(model_dir), reward_funcs=[constant_reward], args=config, train_dataset=dataset,
        processing_class=tokenizer, rollout_func=FixedRollouts(rollouts, generations), callbacks=callbacks,
    )
    trainer._benchmark_prompt_order = prompts
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    measured = timer.step_times[1:] or timer.step_times
    checkpointing = bool(trainer.args.gradient_checkpointing)
    result = {"seconds_per_step": statistics.median(measured), "all_step_seconds": timer.step_times,
              "losses": timer.losses, "gradient_checkpointing": checkpointing,
              "estimated_peak_gib": estimate.peak(checkpointing) / 2**30,
              "estimated_peak_gib_other_setting": estimate.peak(not checkpointing) / 2**30}
    if args.profile_update is not None:
        result["profile"] = {"update": args.profile_update, "file": str(profile.path), "top": profile.top}
    if args.device == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


MODEL_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size")


def build_model(preset: dict, workdir: Path) -> Path:
    """The preset's random Qwen2-shaped model (seeded), saved once under `workdir`; its folder."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    model_dir = workdir / ("model-" + "-".join(str(preset[k]) for k in MODEL_KEYS))
    if not (model_dir / "config.json").is_file():
        torch.manual_seed(0)
        config = Qwen2Config(**{k: preset[k] for k in MODEL_KEYS}, max_position_embeddings=preset["cap"] + 1024,
                             tie_word_embeddings=preset["vocab_size"] < 100000, bos_token_id=1, eos_token_id=EOS,
                             pad_token_id=PAD, dtype=preset["dtype"])
        device = "cuda" if torch.cuda.is_available() else "cpu"  # a 1.5B model initialises in seconds there
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, preset["dtype"]))
        model.save_pretrained(model_dir)
        del model
    return model_dir


def _shape(preset: dict) -> tuple[int, int, int, int, int]:
    h, layers, inter, vocab = (preset[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                                     "vocab_size"))
    kv = h * preset["num_key_value_heads"] // preset["num_attention_heads"]
    return h, layers, inter, vocab, kv


def model_flops_per_token(preset: dict) -> float:
    """Training FLOPs per real token (forward 2N + backward 4N, plus the old-log-prob forward 2N): 8N."""
    h, layers, inter, vocab, kv = _shape(preset)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter
    return 8.0 * (layers * per_layer + h * vocab)


def forward_flops(preset: dict, positions: int, attention_pairs: float, scored: int) -> float:
    """FLOPs of one forward: the linear layers over `positions`, attention over `attention_pairs` (query, key)
    pairs per layer (QK^T and AV, all heads), and the LM head over `scored` positions."""
    h, layers, inter, vocab, kv = _shape(preset)
    linear = 2.0 * positions * layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    return linear + 4.0 * h * attention_pairs * layers + 2.0 * h * vocab * scored


def executed_flops(preset: dict, rollouts: dict, generations: int, device: str) -> dict[str, float]:
    """Model FLOPs each trainer executes per JustRL step with micro-batches of one completion (an estimate: backward
    = 2 forwards, one more forward per backward under gradient checkpointing).

    Stock TRL runs every row over the batch's padded width, with a padding mask (all width^2 attention pairs) unless
    the row has no padding (then causal, as SDPA runs it). JustRLTrainer runs each row over its own tokens, causal
    (T(T+1)/2 pairs), and its old-log-prob pass over the three updates after the first (3/4 of the rows on average;
    TRL shuffles rows before splitting). TRL's LM head scores every position but the last on CPU and only the
    completion tokens on CUDA.
    """
    prompts = [len(rollouts["prompt_ids"][i // generations]) for i in range(len(rollouts["completion_ids"]))]
    completions = [len(ids) for ids in rollouts["completion_ids"]]
    width = max(prompts) + max(completions)
    train_passes = 4.0 if preset["gradient_checkpointing"] else 3.0  # forward + backward (+ recomputed forward)
    stock_row = [forward_flops(preset, width, width * (width + 1) / 2 if p + c == width else width * width,
                               width - 1 if device == "cpu" else c)
                 for p, c in zip(prompts, completions, strict=True)]
    justrl_row = [forward_flops(preset, p + c, (p + c) * (p + c + 1) / 2, p + c - 1 if device == "cpu" else c)
                  for p, c in zip(prompts, completions, strict=True)]
    return {"stock": (1.0 + train_passes) * sum(stock_row), "justrl": (0.75 + train_passes) * sum(justrl_row)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda for qwen2-1.5b")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per JustRL step (4 updates of a quarter)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=1, help="completions per forward (the recipe: 1)")
    parser.add_argument("--steps", type=int, default=2, help="timed JustRL steps after one warm-up step")
    parser.add_argument("--uniform", action="store_true", help="no padding: every length equal (overhead check)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="also run JustRLTrainer packing each update's completions into forwards of at most this "
                        "many real tokens ('justrl_packed': max_tokens_per_microbatch; the paper's verl run used "
                        "32,768 for a 16,384-token context)")
    parser.add_argument("--only", choices=["stock", "justrl", "justrl_packed"], default=None)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the trainers this many times, alternating; each speed-up is the median of the pairs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override preset values, e.g. --set mean=150 hidden_size=128")
    parser.add_argument("--set-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="set a field of every trainer's config, e.g. use_liger_kernel=true "
                        "gradient_checkpointing=false attn_implementation=sdpa (recorded in the JSON)")
    parser.add_argument("--profile-update", type=int, default=None, metavar="N",
                        help="profile optimizer update N (1-based) of each trainer; 4 = the warm-up step's last")
    parser.add_argument("--profile-dir", type=Path, default=None, help="where profiles go (default: --workdir)")
    parser.add_argument("--workdir", type=Path, default=Path("outputs/benchmark_policy_update"))
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="a folder with the SmolLM2 tokenizer files (default: the embedded model's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        preset = preset_values(args.preset, args.set)
    except ValueError as error:
        parser.error(str(error))
    args.device = args.device or ("cuda" if args.preset == "qwen2-1.5b" else "cpu")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.prompts % 4:
        parser.error("--prompts must be a multiple of 4 (4 optimizer updates per step)")
    if args.only == "justrl_packed" and args.max_tokens is None:
        parser.error("--only justrl_packed needs --max-tokens")
    if args.profile_update is not None and args.profile_update < 1:
        parser.error("--profile-update counts optimizer updates from 1")
    args.profile_dir = args.profile_dir or args.workdir
    kinds = ["stock", "justrl"] + (["justrl_packed"] if args.max_tokens is not None else [])
    kinds = [kind for kind in kinds if args.only in (None, kind)]
    try:  # a misspelt option fails here, before any model is built
        args.config_overrides = parse_config_overrides(args.set_config)
        check_config_overrides(args.config_overrides, [trainer_classes(kind)[0] for kind in kinds])
    except ValueError as error:
        parser.error(str(error))

    from transformers import AutoTokenizer

    from trl_justrl.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or resolve_model("smollm2-135m-instruct"),
                                              padding_side="left")
    model_dir = build_model(preset, args.workdir)
    rollouts = make_rollouts(args.prompts, args.generations, preset, args.uniform, seed=0)
    real_tokens = sum(map(len, rollouts["completion_ids"])) + sum(
        len(rollouts["prompt_ids"][i // args.generations]) for i in range(len(rollouts["completion_ids"])))

    # Alternate the trainers (stock, JustRL, stock, ...) so that slow drifts of a shared machine hit both alike.
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for repeat in range(args.repeats):
        for kind in kinds:
            runs[kind].append(run(kind, model_dir, tokenizer, rollouts, args, preset))
            print(f"{kind} (run {repeat + 1}/{args.repeats}): {runs[kind][-1]['seconds_per_step']:.2f} s per JustRL "
                  "step", flush=True)
    results = {}
    for kind, kind_runs in runs.items():
        results[kind] = {
            "seconds_per_step": statistics.median(r["seconds_per_step"] for r in kind_runs),
            "run_seconds_per_step": [r["seconds_per_step"] for r in kind_runs],
            "all_step_seconds": [r["all_step_seconds"] for r in kind_runs],
            "losses": kind_runs[0]["losses"],
        }
        for key in ("gradient_checkpointing", "estimated_peak_gib", "estimated_peak_gib_other_setting", "profile"):
            if key in kind_runs[0]:
                results[kind][key] = kind_runs[0][key]
        if "peak_memory_gib" in kind_runs[0]:
            results[kind]["peak_memory_gib"] = max(r["peak_memory_gib"] for r in kind_runs)
        results[kind]["real_tokens_per_s"] = real_tokens / results[kind]["seconds_per_step"]

    lengths = [len(ids) for ids in rollouts["completion_ids"]]
    report = {
        "command": " ".join(["python", "benchmarks/policy_update.py", *(argv if argv is not None else sys.argv[1:])]),
        "preset": args.preset, "preset_values": preset, "device": args.device, "uniform": args.uniform,
        "micro_batch": args.micro_batch, "max_tokens_per_microbatch": args.max_tokens,
        "config_overrides": args.config_overrides,
        "completions": len(lengths), "completion_mean": statistics.mean(lengths), "completion_max": max(lengths),
        "truncated": sum(n >= preset["cap"] for n in lengths), "real_tokens_per_step": real_tokens,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
        "versions": {name: __import__(name).__version__ for name in ("torch", "transformers", "trl", "accelerate")},
        "results": results,
    }
    if args.micro_batch == 1:  # single-row micro-batches, or packed rows (the same work: each row causal, unpadded)
        flops = executed_flops(preset, rollouts, args.generations, args.device)
        for kind, result in results.items():
            work = flops["stock" if kind == "stock" else "justrl"]  # packing changes how, not what, is computed
            result["executed_gflops_per_step"] = work / 1e9
            result["achieved_gflops_per_s"] = work / 1e9 / result["seconds_per_step"]
        report["executed_flop_ratio"] = flops["stock"] / flops["justrl"]
    differences = []
    for kind, key in (("justrl", "speedup"), ("justrl_packed", "speedup_packed")):
        if "stock" not in results or kind not in results:
            continue
        ratios = [a["seconds_per_step"] / b["seconds_per_step"] for a, b in zip(runs["stock"], runs[kind],
                                                                                 strict=True)]
        report[key] = statistics.median(ratios)  # of the paired runs
        report[key + "_per_repeat"] = ratios
        differences += [abs(x - y) for a, b in zip(runs["stock"], runs[kind], strict=True)
                        for x, y in zip(a["losses"], b["losses"], strict=False)]
    if differences:
        report["max_loss_difference"] = max(differences)
    if args.device == "cuda":
        for result in results.values():
            result["mfu"] = model_flops_per_token(preset) * result["real_tokens_per_s"] / 989e12  # H100 bf16 dense
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
