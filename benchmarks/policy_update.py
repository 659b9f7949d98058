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
from transformers import TrainerCallback

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


def run(kind: str, model_dir: Path, tokenizer, rollouts: dict, args: argparse.Namespace, preset: dict) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trl_justrl import JustRLConfig, JustRLTrainer

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
    if kind == "stock":
        config = GRPOConfig(**common, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, delta=10.0, beta=0.0,
                            gradient_accumulation_steps=accumulation, steps_per_generation=accumulation * updates,
                            weight_decay=0.1, max_grad_norm=1.0, lr_scheduler_type="constant")
        trainer_class = GRPOTrainer
    else:
        config = JustRLConfig(**common, prompts_per_step=args.prompts, prompts_per_update=args.prompts // updates,
                              warmup_rl_steps=0, save_every_rl_steps=None,
                              max_tokens_per_microbatch=args.max_tokens if kind == "justrl_packed" else None)
        trainer_class = JustRLTrainer
    prompts = [f"problem {i}" for i in range(args.prompts)]
    dataset = Dataset.from_list([{"prompt": p} for p in prompts] * (args.steps + 1))
    timer = StepTimer(updates, torch.cuda.synchronize if args.device == "cuda" else (lambda: None))
    trainer = trainer_class(
        model=str(model_dir), reward_funcs=[constant_reward], args=config, train_dataset=dataset,
        processing_class=tokenizer, rollout_func=FixedRollouts(rollouts, generations), callbacks=[timer],
    )
    trainer._benchmark_prompt_order = prompts
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    measured = timer.step_times[1:] or timer.step_times
    result = {"seconds_per_step": statistics.median(measured), "all_step_seconds": timer.step_times,
              "losses": timer.losses}
    if args.device == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


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
    parser.add_argument("--workdir", type=Path, default=Path("outputs/benchmark_policy_update"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in preset:
            parser.error(f"--set {key}: not a preset key ({', '.join(preset)})")
        preset[key] = type(preset[key])(value) if not isinstance(preset[key], bool) else value == "true"
    args.device = args.device or ("cuda" if args.preset == "qwen2-1.5b" else "cpu")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.prompts % 4:
        parser.error("--prompts must be a multiple of 4 (4 optimizer updates per step)")
    if args.only == "justrl_packed" and args.max_tokens is None:
        parser.error("--only justrl_packed needs --max-tokens")

    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from trl_justrl.models import resolve_model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"), padding_side="left")
    model_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size")
    config = Qwen2Config(**{k: preset[k] for k in model_keys}, max_position_embeddings=preset["cap"] + 1024,
                         tie_word_embeddings=preset["vocab_size"] < 100000, bos_token_id=1, eos_token_id=EOS,
                         pad_token_id=PAD, dtype=preset["dtype"])
    model_dir = args.workdir / ("model-" + "-".join(str(preset[k]) for k in model_keys))
    if not (model_dir / "config.json").is_file():
        AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    rollouts = make_rollouts(args.prompts, args.generations, preset, args.uniform, seed=0)
    real_tokens = sum(map(len, rollouts["completion_ids"])) + sum(
        len(rollouts["prompt_ids"][i // args.generations]) for i in range(len(rollouts["completion_ids"])))

    # Alternate the trainers (stock, JustRL, stock, ...) so that slow drifts of a shared machine hit both alike.
    kinds = ["stock", "justrl"] + (["justrl_packed"] if args.max_tokens is not None else [])
    kinds = [kind for kind in kinds if args.only in (None, kind)]
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
        if "peak_memory_gib" in kind_runs[0]:
            results[kind]["peak_memory_gib"] = max(r["peak_memory_gib"] for r in kind_runs)
        results[kind]["real_tokens_per_s"] = real_tokens / results[kind]["seconds_per_step"]

    lengths = [len(ids) for ids in rollouts["completion_ids"]]
    report = {
        "command": " ".join(["python", "benchmarks/policy_update.py", *(argv if argv is not None else sys.argv[1:])]),
        "preset": args.preset, "preset_values": preset, "device": args.device, "uniform": args.uniform,
        "micro_batch": args.micro_batch, "max_tokens_per_microbatch": args.max_tokens,
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
