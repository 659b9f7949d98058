"""The objective: per_token_policy_loss against an independent element-wise computation of RECIPE.md's formula, and
TRL's own loss path (loss_type="dapo", delta = c), as JustRLTrainer runs it, against per_token_policy_loss."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from trl_justrl.policy_update.loss import dual_clip_mask, per_token_policy_loss

LO, HI, C = 0.2, 0.28, 10.0
CLIP = dict(epsilon_low=LO, epsilon_high=HI, clip_ratio_c=C)


def reference_loss(logp: float, old: float, adv: float) -> float:
    """RECIPE.md, literally: loss_clip = max(-A r, -A clamp(r)); capped at -A c where A < 0."""
    r = math.exp(logp - old)
    clipped = min(max(r, 1 - LO), 1 + HI)
    loss_clip = max(-adv * r, -adv * clipped)
    return min(loss_clip, -adv * C) if adv < 0 else loss_clip


def reference_grad(logp: float, old: float, adv: float) -> float:
    """d loss / d logp by cases: -A r where the unclipped term is active, else 0 (dr/dlogp = r)."""
    r = math.exp(logp - old)
    if adv > 0:
        return 0.0 if r > 1 + HI else -adv * r
    if adv < 0:
        return 0.0 if (r < 1 - LO or r > C) else -adv * r
    return 0.0


# log-ratios that hit every branch: far above 1.28, far below 0.8, inside, above c = 10, exactly at the bounds
LOG_RATIOS = [math.log(x) for x in (0.05, 0.5, 0.79, 0.8, 0.95, 1.0, 1.1, 1.28, 1.3, 3.0, 9.5, 10.5, 50.0)]
ADVANTAGES = [-2.0, -0.7, 0.0, 0.4, 1.5]


def _grid():
    generator = torch.Generator().manual_seed(0)
    old = torch.randn(len(ADVANTAGES), len(LOG_RATIOS), generator=generator, dtype=torch.float64) - 2.0
    logps = old + torch.tensor(LOG_RATIOS, dtype=torch.float64)
    return logps, old, torch.tensor(ADVANTAGES, dtype=torch.float64)


@pytest.mark.parametrize("adv_shape", ["(B,)", "(B, 1)"])
def test_matches_the_formula_on_every_branch(adv_shape):
    logps, old, adv = _grid()
    advantages = adv if adv_shape == "(B,)" else adv.unsqueeze(1)
    out = per_token_policy_loss(logps, old, advantages, **CLIP)
    assert out.shape == logps.shape
    for b in range(logps.size(0)):
        for t in range(logps.size(1)):
            expected = reference_loss(logps[b, t].item(), old[b, t].item(), adv[b].item())
            assert out[b, t].item() == pytest.approx(expected, rel=1e-9, abs=1e-12), (b, t)


def test_random_tensors_match_the_formula():
    generator = torch.Generator().manual_seed(1)
    old = -torch.rand(16, 40, generator=generator, dtype=torch.float64) * 5
    logps = old + torch.randn(16, 40, generator=generator, dtype=torch.float64) * 1.5  # ratios ~ e^-4 .. e^4
    adv = torch.randn(16, generator=generator, dtype=torch.float64) * 2
    adv[3] = 0.0
    out = per_token_policy_loss(logps, old, adv, **CLIP)
    expected = torch.tensor(
        [[reference_loss(logps[b, t].item(), old[b, t].item(), adv[b].item()) for t in range(40)] for b in range(16)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out, expected)
    assert torch.all(out[3] == 0)  # A = 0: no loss


def test_gradients_flow_only_through_unclipped_tokens():
    logps, old, adv = _grid()
    logps = logps.clone().requires_grad_(True)
    old.requires_grad_(True)
    per_token_policy_loss(logps, old, adv, **CLIP).sum().backward()
    assert old.grad is None or torch.all(old.grad == -logps.grad)  # ratio depends on the difference only
    for b in range(logps.size(0)):
        for t in range(logps.size(1)):
            expected = reference_grad(logps[b, t].item(), old[b, t].item(), adv[b].item())
            assert logps.grad[b, t].item() == pytest.approx(expected, rel=1e-9, abs=1e-12), (b, t)


def test_dual_clip_caps_the_negative_advantage_loss():
    logps = torch.tensor([[math.log(100.0)]], dtype=torch.float64)
    old = torch.zeros_like(logps)
    adv = torch.tensor([-1.0], dtype=torch.float64)
    capped = per_token_policy_loss(logps, old, adv, **CLIP)
    assert capped.item() == pytest.approx(C)  # -A * c, not -A * r = 100
    uncapped = per_token_policy_loss(logps, old, adv, **(CLIP | {"clip_ratio_c": 1e9}))
    assert uncapped.item() == pytest.approx(100.0)


def test_on_policy_gradient_is_minus_the_advantage():
    logps = torch.full((2, 3), -1.0, requires_grad=True)
    per_token_policy_loss(logps, logps.detach(), torch.tensor([0.5, -2.0]), **CLIP).sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.5] * 3, [2.0] * 3]))


def test_dual_clip_mask_marks_negative_advantages_above_c():
    logps = torch.log(torch.tensor([[0.5, 1.0, 1.5, 20.0], [0.5, 1.0, 1.5, 20.0]]))
    held = dual_clip_mask(logps, torch.zeros_like(logps), torch.tensor([1.0, -1.0]), C)
    assert held.tolist() == [[False] * 4, [False, False, False, True]]


def test_bad_advantage_shape_is_an_error():
    logps = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"shape \(B,\) or \(B, 1\)"):
        per_token_policy_loss(logps, logps, torch.zeros(3), **CLIP)
    with pytest.raises(ValueError, match="B = 2"):
        per_token_policy_loss(logps, logps, torch.zeros(2, 3), **CLIP)


# ---- TRL's loss path as JustRLTrainer runs it ---------------------------------------------------------------------

# Rows: advantage; columns: ratio r = exp(logp - old). Together they hit every branch: A < 0 with r above c, below
# 1 - 0.2 and in between; A > 0 above 1.28, below 0.8 and inside; A = 0. The last column is padding (mask 0).
BRANCH_ADVANTAGES = [-1.5, -0.3, 0.0, 0.8, 2.0, -0.9]
BRANCH_RATIOS = [0.3, 0.79, 0.9, 1.0, 1.2, 1.3, 4.0, 9.9, 10.5, 60.0, 1.1]


class FixedLogProbs(torch.nn.Module):
    """Stands in for the policy under TRL's fused-lm-head forward: its completion log-probs are a parameter (the
    trainer may trim all-padding completion columns on the right; the prompt columns come first)."""

    def __init__(self, logps: torch.Tensor, prompt_width: int):
        super().__init__()
        self.logps = torch.nn.Parameter(logps.clone())
        self.prompt_width = prompt_width

    def forward(self, input_ids, attention_mask=None, labels=None, fused_lm_head=False, **_):
        assert fused_lm_head, "TRL asks for per-token log-probs from the fused LM head"
        batch, width = input_ids.shape
        pad = torch.zeros(batch, self.prompt_width, dtype=self.logps.dtype)
        log_probs = torch.cat([pad, self.logps[:, : width - self.prompt_width]], dim=1)
        return SimpleNamespace(log_probs=log_probs, entropy=torch.zeros_like(log_probs), aux_loss=None)


def test_trls_dapo_loss_with_delta_is_the_recipes_objective(tmp_path, tiny_model_path):
    """One real compute_loss + backward through GRPOTrainer's code: same loss and gradients as the reference."""
    from trl_justrl import JustRLConfig, JustRLTrainer
    from trl_justrl.data import load_training_data

    rows, width = len(BRANCH_ADVANTAGES), len(BRANCH_RATIOS)
    args = JustRLConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", prompts_per_step=1,
        prompts_per_update=1, num_generations=rows, per_device_train_batch_size=rows, max_completion_length=width,
        warmup_rl_steps=0, save_every_rl_steps=None, save_strategy="no", max_steps=1, gradient_checkpointing=False,
    )
    assert (args.loss_type, args.delta, args.epsilon, args.epsilon_high, args.beta) == ("dapo", C, LO, HI, 0.0)
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"], args=args,
                            train_dataset=load_training_data("synthetic", synthetic_size=4))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps  # set by Trainer.train() per update

    generator = torch.Generator().manual_seed(0)
    old = -torch.rand(rows, width, generator=generator) * 3 - 0.5
    logps = old + torch.log(torch.tensor(BRANCH_RATIOS)).expand(rows, width)
    mask = torch.ones(rows, width)
    mask[:, -1] = 0.0
    mask[1, -3:] = 0.0  # a shorter completion
    advantages = torch.tensor(BRANCH_ADVANTAGES)
    policy = FixedLogProbs(logps, prompt_width=3)
    inputs = {
        "prompt_ids": torch.ones(rows, 3, dtype=torch.long), "prompt_mask": torch.ones(rows, 3, dtype=torch.long),
        "completion_ids": torch.ones(rows, width, dtype=torch.long), "completion_mask": mask.long(),
        "advantages": advantages, "old_per_token_logps": old, "num_items_in_batch": mask.sum(),
    }
    loss = trainer.compute_loss(policy, inputs)
    loss.backward()

    reference_logps = logps.clone().requires_grad_(True)
    per_token = per_token_policy_loss(reference_logps, old, advantages, **CLIP)
    reference = (per_token * mask).sum() / mask.sum()  # the token mean over the update
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(policy.logps.grad, reference_logps.grad, rtol=1e-6, atol=1e-6)
    # the grid really hits the clipped branches: zero gradient there, non-zero elsewhere
    assert (reference_logps.grad == 0).sum() > 10 and (reference_logps.grad != 0).sum() > 10

    held = dual_clip_mask(logps, old, advantages, C).float()
    expected_dual = ((held * mask).sum() / mask.sum()).item()
    assert expected_dual > 0
    assert trainer._metrics["train"]["clip_ratio/dual_mean"][-1] == pytest.approx(expected_dual)
    assert "clip_ratio/low_mean" in trainer._metrics["train"]  # TRL's own clip metrics keep coming

    # the check can fail: without TRL's delta the tokens held at the dual clip get a gradient again
    trainer.args.delta = None
    policy.logps.grad = None
    trainer.compute_loss(policy, inputs).backward()
    differs = (policy.logps.grad - reference_logps.grad).abs() > 1e-6
    assert differs.any() and torch.equal(differs, held.bool() & mask.bool())
