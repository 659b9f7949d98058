"""benchmarks/policy_update.py: its FLOP estimate against a hand count, and one tiny end-to-end run of both trainers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def policy_update():
    spec = importlib.util.spec_from_file_location("policy_update", ROOT / "benchmarks" / "policy_update.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["policy_update"] = module
    spec.loader.exec_module(module)
    return module


PRESET = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              vocab_size=100, gradient_checkpointing=False)


def test_forward_flops_by_hand(policy_update):
    # per position and layer: 2 * (2*8*8 + 2*8*4 + 3*8*16) = 2 * 576; attention 4 * 8 per pair; head 2 * 8 * 100
    assert policy_update.forward_flops(PRESET, positions=3, attention_pairs=6, scored=2) == (
        2 * 3 * 2 * 576 + 4 * 8 * 6 * 2 + 2 * 8 * 100 * 2)


def test_executed_flops_padded_against_trimmed(policy_update):
    # two rows of one prompt (2 tokens) and completions of 1 and 3 tokens: padded width 5
    rollouts = {"prompt_ids": [[5, 6]], "completion_ids": [[7], [7, 8, 9]]}
    flops = policy_update.executed_flops(PRESET, rollouts, generations=2, device="cpu")
    f = policy_update.forward_flops
    stock = 4 * (f(PRESET, 5, 25, 4) + f(PRESET, 5, 15, 4))  # row 1 padded (all 25 pairs), row 2 not (causal)
    # old-log-prob pass (1 forward: 3/4 of the rows for JustRL) + forward and backward (3 forwards)
    justrl = 3.75 * (f(PRESET, 3, 6, 2) + f(PRESET, 5, 15, 4))
    assert flops == pytest.approx({"stock": stock, "justrl": justrl})
    on_gpu = policy_update.executed_flops(PRESET, rollouts, generations=2, device="cuda")
    assert on_gpu["stock"] == pytest.approx(4 * (f(PRESET, 5, 25, 1) + f(PRESET, 5, 15, 3)))  # completions scored


@pytest.mark.slow
def test_tiny_run_alternates_and_reports(policy_update, tmp_path, smollm2_path, capsys):
    out = tmp_path / "result.json"
    assert policy_update.main([
        "--steps", "1", "--repeats", "2", "--workdir", str(tmp_path), "--json", str(out), "--set", "hidden_size=32",
        "intermediate_size=64", "num_hidden_layers=2", "vocab_size=512", "cap=24", "mean=8", "prompt_min=4",
        "prompt_max=8", "--max-tokens", "48",
    ]) == 0
    printed = capsys.readouterr().out
    assert (printed.index("stock (run 1/2)") < printed.index("justrl (run 1/2)")
            < printed.index("justrl_packed (run 1/2)") < printed.index("stock (run 2/2)"))
    report = json.loads(out.read_text())
    for kind in ("stock", "justrl", "justrl_packed"):
        result = report["results"][kind]
        assert len(result["run_seconds_per_step"]) == 2 and len(result["losses"]) == 8  # 2 steps x 4 updates
        assert result["executed_gflops_per_step"] > 0 and result["real_tokens_per_s"] > 0
    assert len(report["speedup_per_repeat"]) == 2 and report["speedup"] > 0
    assert len(report["speedup_packed_per_repeat"]) == 2 and report["speedup_packed"] > 0
    assert report["executed_flop_ratio"] > 1.0  # the batch has padding to cut
    assert report["max_loss_difference"] < 1e-5  # the same objective on the same inputs


def test_verify_order_finds_the_equation_asymmetry():
    """benchmarks/verify_order.py on a released equation answer and an integer one: the orders disagree only where
    math-verify's verify is asymmetric (Open-RS's order accepts an equation's bare right-hand side)."""
    spec = importlib.util.spec_from_file_location("verify_order", ROOT / "benchmarks" / "verify_order.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    golds = [("MATH-500", "5x - 7y + 11z + 4 = 0"), ("AIME24", "204")]
    items = [(b, g, kind, answer) for b, g in golds for kind, answer in module.answer_forms(g).items()]
    result = module.compare_orders(items)
    assert result["compared"] == len(items) and result["gold_unparsed"] == 0
    found = {(d["gold"], d["kind"]): d["verify(prediction, gold)"] for d in result["disagree"]}
    assert found[("5x - 7y + 11z + 4 = 0", "right-hand side")] is True
    assert all(gold != "204" for gold, _ in found)
