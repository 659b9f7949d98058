"""per_token_policy_loss against an independent element-wise computation of RECIPE.md's formula, with gradients."""

from __future__ import annotations

import math

import pytest
import torch

from trl_justrl.loss import clip_indicators, per_token_policy_loss

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


def test_clip_indicators_mark_the_bounds():
    logps = torch.log(torch.tensor([[0.5, 1.0, 1.5, 20.0], [0.5, 1.0, 1.5, 20.0]]))
    hits = clip_indicators(logps, torch.zeros_like(logps), torch.tensor([1.0, -1.0]), **CLIP)
    assert hits["high"].tolist() == [[False, False, True, True], [False] * 4]
    assert hits["low"].tolist() == [[False] * 4, [True, False, False, False]]
    assert hits["dual"].tolist() == [[False] * 4, [False, False, False, True]]


def test_bad_advantage_shape_is_an_error():
    logps = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"shape \(B,\) or \(B, 1\)"):
        per_token_policy_loss(logps, logps, torch.zeros(3), **CLIP)
    with pytest.raises(ValueError, match="B = 2"):
        per_token_policy_loss(logps, logps, torch.zeros(2, 3), **CLIP)
