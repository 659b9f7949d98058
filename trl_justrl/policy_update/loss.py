"""The JustRL per-token policy objective as the paper states it: PPO clip-higher with dual-clip for A < 0.

With r = exp(logp - logp_old), A the sequence advantage, lo / hi the clip ratios and c the dual-clip constant:

    loss_clip = max(-A * r, -A * clamp(r, 1 - lo, 1 + hi))
    loss      = min(loss_clip, -A * c)   where A < 0,   loss_clip otherwise

and the update's loss is the token mean sum(loss * mask) / sum(mask). Training runs TRL's own loss, which is the same:
`loss_type="dapo"` and `delta` = c, where TRL clamps r at c before the PPO min: for A < 0,
-A * max(min(r, c), clip(r)) = min(loss_clip, -A * c) since c > 1 + hi; for A >= 0 the clamp never binds
(`tests/test_loss.py` checks it through a real compute_loss and backward).
"""

from __future__ import annotations

import torch


def _as_column(advantages: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """Per-sequence advantages, (B,) or (B, 1), as a (B, 1) column that broadcasts over tokens."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    if advantages.dim() != 2 or advantages.size(1) != 1 or advantages.size(0) != logps.size(0):
        raise ValueError(
            f"advantages must have shape (B,) or (B, 1) with B = {logps.size(0)}, got {tuple(advantages.shape)}"
        )
    return advantages


def per_token_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon_low: float,
    epsilon_high: float,
    clip_ratio_c: float,
) -> torch.Tensor:
    """Per-token JustRL loss, same shape as `logps` (B, T); gradients flow through `logps` only.

    `advantages` holds one value per sequence, shape (B,) or (B, 1).
    """
    adv = _as_column(advantages, logps)
    ratio = torch.exp(logps - old_logps)
    loss_clip = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high))
    loss_dual = torch.minimum(loss_clip, -adv * clip_ratio_c)
    return torch.where(adv < 0, loss_dual, loss_clip)


@torch.no_grad()
def dual_clip_mask(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip_ratio_c: float
) -> torch.Tensor:
    """Boolean (B, T) mask of the tokens held at the dual clip (A < 0 and r > c: zero gradient), for logging."""
    adv = _as_column(advantages, logps)
    return (adv < 0) & (torch.exp(logps - old_logps) > clip_ratio_c)
