"""A scoped tap on a trainer's policy forward (TRL's `GRPOTrainer._get_per_token_logps_and_entropies`).

Inside `with PolicyForwardTap(trainer) as tap:` every policy forward the block makes is counted and its log-probs
kept (or, with `skip=True`, answered with no values); the trainer's own method is back when the block ends. Callers
check `tap.calls` against what they expect TRL to do, so a TRL release that calls differently fails loudly.
"""

from __future__ import annotations

from typing import Any

import torch

FORWARD = "_get_per_token_logps_and_entropies"


class PolicyForwardTap:
    """Count (and record, or skip) the policy forwards made inside a `with` block.

    `calls`: (rows, logits_to_keep, grad enabled) of each call, in order; `logps`: the detached log-probs of each
    recorded call (empty when skipping).
    """

    def __init__(self, trainer: Any, *, skip: bool = False):
        self.trainer, self.skip = trainer, skip
        self.calls: list[tuple[int, int, bool]] = []
        self.logps: list[torch.Tensor] = []
        self._previous: Any = None

    def __enter__(self) -> PolicyForwardTap:
        self._previous = vars(self.trainer).get(FORWARD)
        forward = getattr(self.trainer, FORWARD)

        def tapped(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
            self.calls.append((input_ids.size(0), logits_to_keep, torch.is_grad_enabled()))
            if self.skip:
                return None, None, None
            logps, entropies, aux_loss = forward(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
            self.logps.append(logps.detach())
            return logps, entropies, aux_loss

        setattr(self.trainer, FORWARD, tapped)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is None:
            delattr(self.trainer, FORWARD)  # the class's method again
        else:
            setattr(self.trainer, FORWARD, self._previous)
