"""Padding-free packing is exact: packed forwards, losses, gradients and whole runs against TRL's padded path."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest
import torch
from test_trimming import COMPLETION_WIDTH, loss_inputs, padded_batch
from trl import GRPOTrainer

from trl_justrl import JustRLConfig, JustRLTrainer
from trl_justrl.data import load_training_data
from trl_justrl.policy_update.packing import PACKED_SDPA, check_packing_backend, enable_packing, plan_packs, row_extents
from trl_justrl.policy_update.padding_free import PreparedMicroBatch

pytestmark = pytest.mark.slow

BUDGET = 260  # tokens per packed forward in the runs below: two of their rows (~125 tokens each)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, tiny_model_path, tiny_config):
    args = tiny_config(tmp_path_factory.mktemp("packing"), max_completion_length=COMPLETION_WIDTH,
                       max_tokens_per_microbatch=40)
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"], args=args,
                            train_dataset=load_training_data("synthetic", synthetic_size=8))
    trainer.model.float()
    return trainer


def test_plan_packs_keeps_the_budget_and_every_row_once():
    tokens = [30, 5, 12, 50, 7, 7, 20, 1]
    packs = plan_packs(tokens, budget=32)
    assert sorted(i for pack in packs for i in pack) == list(range(len(tokens)))
    assert [3] in packs  # over the budget: alone
    assert all(sum(tokens[i] for i in pack) <= 32 for pack in packs if pack != [3])
    assert packs == [[3], [0, 7], [6, 2], [4, 5, 1]]  # first fit, longest first: 50 | 30+1 | 20+12 | 7+7+5
    assert plan_packs(tokens, budget=32) == packs  # deterministic
    more = plan_packs(tokens, budget=32, at_least=7)
    assert len(more) == 7 and sorted(i for pack in more for i in pack) == list(range(len(tokens)))
    assert len(plan_packs(tokens, budget=1000, at_least=20)) == len(tokens)  # never more packs than rows
    assert plan_packs(tokens, budget=1000) == [[3, 0, 6, 2, 4, 5, 1, 7]]


def test_row_extents_refuses_rows_it_cannot_pack():
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    assert row_extents(mask, logits_to_keep=3) == [(1, 5), (0, 3)]
    assert row_extents(torch.tensor([[1, 0, 1, 1, 0, 0]]), logits_to_keep=3) is None  # a hole
    assert row_extents(torch.tensor([[0, 0, 0, 1, 1, 0]]), logits_to_keep=3) is None  # no prompt token


def forward_args(trainer, batch: dict, batch_size: int | None = None, entropy: bool = True) -> tuple:
    """The arguments of `_get_per_token_logps_and_entropies` for a padded batch (prompt + completion columns)."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    return trainer.model, ids, mask, COMPLETION_WIDTH, batch_size, entropy, False


@contextlib.contextmanager
def packing_budget(trainer, budget: int | None):
    """The trainer's `max_tokens_per_microbatch` set to `budget` inside the block (40 again after it)."""
    trainer.args.max_tokens_per_microbatch = budget
    try:
        yield
    finally:
        trainer.args.max_tokens_per_microbatch = 40


def packed_and_padded(trainer, batch: dict, budget: int) -> tuple[tuple, tuple]:
    """Log-probs and entropies of `batch` through the trainer's packed forwards and through TRL's padded one."""
    args = forward_args(trainer, batch)
    with packing_budget(trainer, budget), torch.no_grad():
        return (trainer._get_per_token_logps_and_entropies(*args),
                GRPOTrainer._get_per_token_logps_and_entropies(trainer, *args))


@pytest.mark.parametrize("budget", [1, 40, 10_000])
def test_packed_forward_equals_trls_padded_forward(trainer, budget):
    batch = padded_batch(rows=7, seed=budget)
    packed, padded = packed_and_padded(trainer, batch, budget)
    real = batch["completion_mask"].bool()
    torch.testing.assert_close(packed[0][real], padded[0][real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[1][real], padded[1][real], rtol=1e-5, atol=1e-5)
    assert torch.all(packed[0][~real] == 0) and torch.all(packed[1][~real] == 0)


@pytest.mark.parametrize("compact", [False, True], ids=["every-position", "labelled-only"])
def test_packed_lm_head_scores_no_more_positions_than_rows_one_at_a_time(trainer, monkeypatch, compact):
    """TRL's fused head scores every position it is given (CPU), or only those with a label (`compact`, as on CUDA
    with Triton). Packed forwards give it no more positions than one row per forward, with the same values."""
    import trl.trainer.utils as trl_utils

    scored: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden, *args):
        scored.append(hidden.size(0))
        return apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting)
    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: compact)  # the choice only; kernels stay torch's
    batch = padded_batch(rows=7, seed=3)
    args = forward_args(trainer, batch, batch_size=1)  # batch_size 1: one row per forward
    results, counts = {}, {}
    for name, budget in (("rows", None), ("packed", 10_000)):
        scored.clear()
        with packing_budget(trainer, budget), torch.no_grad():
            results[name] = trainer._get_per_token_logps_and_entropies(*args)
        counts[name] = sum(scored)
    real = batch["completion_mask"].bool()
    rows_tokens = int(args[2].sum())
    # the pack: its labelled positions, or every token but each row's last (a whole-pack head would score 6 more)
    assert len(scored) == 1 and counts["packed"] == (int(real.sum()) if compact else rows_tokens - 7)
    assert counts["packed"] <= counts["rows"]
    for packed, alone in zip(results["packed"][:2], results["rows"][:2], strict=True):
        torch.testing.assert_close(packed[real], alone[real], rtol=1e-5, atol=1e-5)
        assert torch.all(packed[~real] == 0)


def test_packed_attention_through_the_variable_length_kernel(trainer, monkeypatch):
    """On CUDA in half precision a pack's attention is one call of torch's variable-length kernel per layer. Here a
    stand-in with its signature and (tokens, heads, dim) layout runs it on CPU (causal SDPA per row), so the call's
    arguments and layouts are checked; the GPU check runs the kernel itself."""
    import torch.nn.functional as F

    from trl_justrl.policy_update import packing

    if packing._VARLEN is not None:  # this torch's kernel takes the arguments the stand-in takes
        import inspect

        assert {"scale", "window_size", "enable_gqa"} <= set(inspect.signature(packing._VARLEN).parameters)
    calls = []

    def stand_in(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        bounds = cu_q.tolist()
        assert q.dim() == 3 and window_size == (-1, 0) and cu_q is cu_k and cu_q.dtype == torch.int32
        assert max_q == max_k == max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        calls.append(bounds)
        rows = [F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                               v[a:b].transpose(0, 1), is_causal=True, scale=scale,
                                               enable_gqa=enable_gqa).transpose(0, 1)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return torch.cat(rows)

    monkeypatch.setattr(packing, "_VARLEN", stand_in)
    monkeypatch.setattr(packing, "_varlen_dtype", lambda query: query.dtype)
    batch = padded_batch(rows=7, seed=5)
    packed, padded = packed_and_padded(trainer, batch, 10_000)
    assert len(calls) == trainer.model.config.num_hidden_layers and len(calls[0]) == 8  # one pack of 7 rows
    real = batch["completion_mask"].bool()
    torch.testing.assert_close(packed[0][real], padded[0][real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[1][real], padded[1][real], rtol=1e-5, atol=1e-5)


def test_packing_changes_what_the_model_computes(trainer, monkeypatch):
    """The test above can fail: packed rows attending across each other give other log-probs."""
    from trl_justrl.policy_update import packing

    def one_sequence(module, query, key, value, attention_mask, **kwargs):
        kwargs.pop("packed_row_bounds", None)
        return packing.sdpa_attention_forward(module, query, key, value, None, is_causal=True,
                                              dropout=kwargs.get("dropout", 0.0), scaling=kwargs.get("scaling"))

    batch = padded_batch(rows=4, seed=3)
    args = forward_args(trainer, batch, entropy=False)
    with packing_budget(trainer, 10_000), torch.no_grad():
        padded = GRPOTrainer._get_per_token_logps_and_entropies(trainer, *args)[0]
        monkeypatch.setitem(packing.AttentionInterface._global_mapping, PACKED_SDPA, one_sequence)
        crossed = trainer._get_per_token_logps_and_entropies(*args)[0]
    real = batch["completion_mask"].bool()
    assert (crossed[real] - padded[real]).abs().max() > 1e-3


def training_step_loss_and_gradients(trainer, inputs: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The trainer's training step on one prepared micro-batch: its loss and the gradients it leaves."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    trainer.model.zero_grad()
    loss = trainer.training_step(trainer.model, PreparedMicroBatch(inputs))
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]


def test_packed_loss_and_gradients_equal_the_padded_path(trainer):
    """One micro-batch over the budget: split into packs, each with its forward and backward in training_step."""
    inputs = loss_inputs(rows=6, seed=5)
    trainer.model.train()
    assert len(trainer._training_packs(inputs)) > 1
    results = {}
    for budget in (40, None):
        trainer.args.max_tokens_per_microbatch, trainer.args.remove_padding = budget, budget is not None
        results[budget] = training_step_loss_and_gradients(trainer, inputs)
    trainer.args.max_tokens_per_microbatch, trainer.args.remove_padding = 40, True
    torch.testing.assert_close(results[40][0], results[None][0], rtol=1e-5, atol=1e-6)
    for packed, padded in zip(results[40][1], results[None][1], strict=True):
        torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in results[40][1])


def test_compute_loss_returns_a_loss_and_runs_no_backward(trainer):
    """Packing splits a micro-batch in training_step; compute_loss of the same micro-batch only computes its loss
    (the packed forward inside it is one graph), leaving every gradient untouched."""
    inputs = loss_inputs(rows=6, seed=5)
    trainer.model.train()
    # what transformers' training loop sets before each update, which TRL's dapo loss reads (not left to another test)
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    assert len(trainer._training_packs(inputs)) > 1
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    assert loss.requires_grad and loss.dim() == 0
    assert all(p.grad is None for p in trainer.model.parameters())


def test_other_calls_keep_plain_sdpa(trainer):
    """After enable_packing, a padded forward (as generation makes) gives what the SDPA model gave."""
    batch = padded_batch(rows=3, seed=9)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    assert trainer.model.config._attn_implementation == PACKED_SDPA
    with torch.no_grad():
        ours = trainer.model(input_ids=ids, attention_mask=mask).logits
        trainer.model.set_attn_implementation("sdpa")
        try:
            plain = trainer.model(input_ids=ids, attention_mask=mask).logits
        finally:
            trainer.model.set_attn_implementation(PACKED_SDPA)
    assert torch.equal(ours, plain)


def test_saved_checkpoints_name_plain_attention(trainer, tmp_path):
    trainer.model.save_pretrained(tmp_path)
    assert PACKED_SDPA not in (tmp_path / "config.json").read_text()


def test_attention_that_cannot_pack_is_refused(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="eager")
    with pytest.raises(ValueError, match="'eager'.*attn_implementation='sdpa'"):
        enable_packing(model)
    model.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(ValueError, match="sliding_attention"):
        enable_packing(model)


def test_packing_settings(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    args = JustRLConfig(output_dir=str(tmp_path), use_cpu=True, max_tokens_per_microbatch=32768, report_to="none")
    # the paper's batch on one process: an update's 64 prompts x 8 completions are one micro-batch, packed by tokens
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (
        512, 1, 4)
    with pytest.raises(ValueError, match="remove_padding"):
        tiny_config(tmp_path, max_tokens_per_microbatch=64, remove_padding=False)
    with pytest.raises(ValueError, match="max_tokens_per_microbatch = 0"):
        tiny_config(tmp_path, max_tokens_per_microbatch=0)
    with pytest.raises(ValueError, match="DeepSpeed"):
        tiny_config(tmp_path, max_tokens_per_microbatch=64, deepspeed={"train_micro_batch_size_per_gpu": "auto"})
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` with a DeepSpeed config sets
    with pytest.raises(ValueError, match="DeepSpeed"):
        tiny_config(tmp_path, max_tokens_per_microbatch=64)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    with pytest.raises(ValueError, match="DataParallel"):
        check_packing_backend(deepspeed=False, data_parallel=True)


def test_the_deepspeed_refusal_has_one_source():
    """Config, trainer and planner refuse packing under DeepSpeed through packing.check_packing_backend only."""
    package = Path(__file__).resolve().parents[1] / "trl_justrl"
    sources = {path.relative_to(package).as_posix(): path.read_text() for path in package.rglob("*.py")}
    refusing = sorted(name for name, text in sources.items() if "not offered under DeepSpeed" in text)
    assert refusing == ["policy_update/packing.py"]
    callers = sorted(name for name, text in sources.items() if "check_packing_backend(" in text
                     and name != "policy_update/packing.py")
    assert callers == ["cluster/plan.py", "config.py", "policy_update/padding_free.py"]


def test_training_with_packing_ends_at_the_same_weights(tmp_path, tiny_model_path, tiny_config):
    """Real steps, gradient checkpointing on: each update's 4 completions packed into forwards of at most BUDGET
    tokens (several packs per update, several rows per pack) against one completion per forward; the same updates,
    up to float summation order."""
    final, tokens, packs = {}, [], []
    for budget in (BUDGET, None):
        args = tiny_config(tmp_path / str(budget), max_steps=4, learning_rate=1e-3, max_tokens_per_microbatch=budget,
                           per_device_train_batch_size=1, gradient_checkpointing=budget is not None)
        trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict", "test_length_parity"],
                                args=args, train_dataset=load_training_data("synthetic", synthetic_size=8))
        if budget:
            assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 1)
            original = trainer._training_packs

            def record(inputs, original=original):
                tokens.append((inputs["prompt_mask"].sum(1) + inputs["completion_mask"].sum(1)).tolist())
                packs.append([pack["prompt_mask"].size(0) for pack in original(inputs)])
                return original(inputs)

            trainer._training_packs = record
        trainer.train()
        final[budget] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert len(packs) == 4 and all(sum(p) == 4 for p in packs), (tokens, packs)
    assert any(len(p) > 1 for p in packs) and any(n > 1 for p in packs for n in p), (tokens, packs)
    for key, value in final[BUDGET].items():
        torch.testing.assert_close(value, final[None][key], rtol=1e-4, atol=1e-5)


PLAN_SCRIPT = """
import json
from types import SimpleNamespace
from accelerate import Accelerator
from trl_justrl.trainer import JustRLTrainer

accelerator = Accelerator(cpu=True)
me = SimpleNamespace(args=SimpleNamespace(max_tokens_per_microbatch=100), accelerator=accelerator)
rank = accelerator.process_index
tokens = [[60, 60, 60, 60], [10, 10, 10, 10]][rank]  # rank 0 needs 4 packs, rank 1 one
unpackable = None if rank == 1 else tokens
result = {"packs": JustRLTrainer._plan_packs(me, tokens),
          "unpackable": JustRLTrainer._plan_packs(me, unpackable)}
open(f"plan-{rank}.json", "w").write(json.dumps(result))
accelerator.wait_for_everyone()
accelerator.end_training()  # tears the process group down on every process before exiting
"""


def test_processes_agree_on_the_number_of_packs(tmp_path):
    """2 gloo processes: the one with short rows splits them into as many packs as the other needs; rows one
    process cannot pack make every process run unpacked."""
    from test_train_script import run

    script = tmp_path / "plan.py"
    script.write_text(PLAN_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    result = run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29541", str(script)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = [json.loads((tmp_path / f"plan-{rank}.json").read_text()) for rank in (0, 1)]
    assert found[0] == {"packs": [[0], [1], [2], [3]], "unpackable": None}
    assert found[1] == {"packs": [[0], [3], [2], [1]], "unpackable": None}


def test_two_processes_train_packed_to_the_same_weights(tmp_path, tiny_model_path, two_process_run):
    """launch/train.py under torchrun, 2 processes, gradient checkpointing: each process's 2 rows of an update in
    two packs (the first backpropagated without gradient sync, the second with it) end at the weights of the same
    run without packing (one micro-batch of 2 per update: the shared `two_process_run`)."""
    from safetensors.torch import load_file
    from test_train_script import TRAIN, check_outputs, run, write_recipe

    plain, plain_result = two_process_run
    assert plain_result.returncode == 0, plain_result.stderr[-4000:]
    check_outputs(plain / "out", steps=4)
    assert "'per_device_train_batch_size': 2" in plain_result.stderr
    recipe = write_recipe(tmp_path, tiny_model_path, gradient_checkpointing=True, max_tokens_per_microbatch=130)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29542", str(TRAIN), "--config", str(recipe)]
    result = run(cmd, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    check_outputs(tmp_path / "out", steps=4)
    assert "'per_device_train_batch_size': 2" in result.stderr
    packed = load_file(tmp_path / "out" / "model.safetensors")
    for key, value in load_file(plain / "out" / "model.safetensors").items():
        torch.testing.assert_close(packed[key], value, rtol=1e-4, atol=1e-5)
