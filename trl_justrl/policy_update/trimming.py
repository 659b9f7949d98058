"""Trimmed forwards and length-grouped micro-batches, as verl's `use_remove_padding`: exact, less compute.

TRL pads a generation batch to its longest prompt (left) and completion (right) and never trims a micro-batch, so
with the recipe's 15,360-token cap most forwards run over ~16K positions for ~5K real tokens. Padding keys are
masked out of attention, so cutting all-padding columns (keeping each token's position id) changes no log-prob;
grouping similar lengths inside an update keeps its completions and TRL's "dapo" normaliser, so its gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def real_extent(attention_mask: torch.Tensor, logits_to_keep: int) -> tuple[int, int]:
    """Columns [left, right) holding a real token in some row; completion columns are never cut from the left and at
    least one is kept (the outputs are padded back to `logits_to_keep` anyway)."""
    width = attention_mask.size(1)
    first_completion = width - logits_to_keep
    used = attention_mask.any(dim=0).nonzero()
    if used.numel() == 0:
        return 0, width
    left = min(int(used[0]), first_completion)
    right = max(int(used[-1]) + 1, first_completion + 1)
    return left, right


class AtPositions:
    """Calls `model` with the position ids the columns [start, end) had in the untrimmed batch (0-based)."""

    def __init__(self, model: Any, start: int, end: int):
        self.model, self.start, self.end = model, start, end

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        input_ids = kwargs["input_ids"]
        positions = torch.arange(self.start, self.end, device=input_ids.device)
        kwargs["position_ids"] = positions.unsqueeze(0).expand(input_ids.size(0), -1)
        return self.model(*args, **kwargs)


# TRL's GRPOTrainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
# batch_size, compute_entropy, compute_aux_loss) -> (log-probs, entropies or None, MoE aux loss or None)
Forward = Callable[..., tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]


def forward_trimmed(
    forward: Forward,
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    batch_size: int | None = None,
    compute_entropy: bool = False,
    compute_aux_loss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`forward` (TRL's `_get_per_token_logps_and_entropies`) chunk by chunk, each over its real extent only.

    Returns what `forward` returns for the whole batch: (B, logits_to_keep) log-probs, entropies (or None) and the
    mean of the chunks' MoE auxiliary losses (or None). Values at padding positions are 0 (they are masked out).
    """
    rows, width = input_ids.shape
    batch_size = batch_size or rows
    first_completion = width - logits_to_keep
    logps, entropies, aux_losses = [], [], []
    for start in range(0, rows, batch_size):
        ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
        left, right = real_extent(mask, logits_to_keep)
        kept = right - first_completion
        chunk_model = AtPositions(model, left, right) if left > 0 else model
        chunk_logps, chunk_entropies, chunk_aux = forward(
            chunk_model, ids[:, left:right], mask[:, left:right], kept, None, compute_entropy, compute_aux_loss
        )
        logps.append(F.pad(chunk_logps, (0, logits_to_keep - kept)))
        if compute_entropy:
            entropies.append(F.pad(chunk_entropies, (0, logits_to_keep - kept)))
        if compute_aux_loss:
            aux_losses.append(chunk_aux)
    return (
        torch.cat(logps, dim=0),
        torch.cat(entropies, dim=0) if compute_entropy else None,
        torch.stack(aux_losses).mean() if compute_aux_loss else None,
    )


def _row_lengths(batch: dict[str, Any]) -> torch.Tensor:
    """Sort key of each row: real completion length, then real prompt length."""
    completion = batch["completion_mask"].sum(dim=1)
    prompt = batch["prompt_mask"].sum(dim=1)
    return completion * (batch["prompt_mask"].size(1) + 1) + prompt


def _merge(micro_batches: list[dict[str, Any]], rows: int) -> dict[str, Any] | None:
    """The micro-batches' rows as one batch; None when a field is not row-aligned (then nothing is regrouped)."""
    merged: dict[str, Any] = {}
    for key, first in micro_batches[0].items():
        values = [mb[key] for mb in micro_batches]
        if isinstance(first, torch.Tensor) and first.dim() >= 1 and first.size(0) == rows:
            merged[key] = torch.cat(values, dim=0)
        elif isinstance(first, list) and len(first) == rows:
            merged[key] = [item for value in values for item in value]
        elif first is None or (isinstance(first, torch.Tensor) and first.dim() == 0):
            merged[key] = first  # shared by the whole generation batch (e.g. num_items_in_batch)
        else:
            return None
    return merged


def take_rows(batch: dict[str, Any], index: torch.Tensor, rows: int) -> dict[str, Any]:
    """The rows `index` of every row-aligned field (tensors and lists with `rows` entries); other fields as they are."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) == rows:
            out[key] = value[index.to(value.device)]
        elif isinstance(value, list) and len(value) == rows:
            out[key] = [value[i] for i in index.tolist()]
        else:
            out[key] = value
    return out


def group_by_length(micro_batches: list[dict[str, Any]], per_update: int) -> list[dict[str, Any]]:
    """Within each run of `per_update` micro-batches (one optimizer update), regroup the rows by length.

    The rows of an update are sorted by real completion length (then prompt length) and dealt back into micro-batches
    of the same size, so each micro-batch's padded extent is as small as the update allows. Updates keep exactly
    their completions. Micro-batches of one row, or fields that are not row-aligned (images), are left as they are.
    """
    if not micro_batches or "completion_mask" not in micro_batches[0] or "prompt_mask" not in micro_batches[0]:
        return micro_batches
    rows = micro_batches[0]["completion_mask"].size(0)
    if rows < 2 or per_update < 2 or any(mb["completion_mask"].size(0) != rows for mb in micro_batches):
        return micro_batches
    regrouped = []
    for start in range(0, len(micro_batches), per_update):
        window = micro_batches[start : start + per_update]
        merged = _merge(window, rows) if len(window) > 1 else None
        if merged is None:
            regrouped.extend(window)
            continue
        total = rows * len(window)
        order = torch.argsort(_row_lengths(merged).cpu(), stable=True)
        regrouped.extend(take_rows(merged, order[i : i + rows], total) for i in range(0, total, rows))
    return regrouped
