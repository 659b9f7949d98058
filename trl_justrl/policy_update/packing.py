"""Packed forwards, as verl's `use_dynamic_bsz`: several rows end to end in one forward of at most N real tokens.

Each row attends only to itself and keeps the positions it had in TRL's padded batch, so log-probs, loss and
gradients are those of one row at a time (up to float summation order; verl's packing-dependent loss weighting is
not copied). Per-row attention: flash attention's own variable-length path, or, for SDPA, `justrl_packed_sdpa` (in
a packed call, torch's variable-length flash kernel on CUDA in half precision, SDPA once per row elsewhere; plain
SDPA for every other call, generation included).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from .trimming import Forward

PACKED_SDPA = "justrl_packed_sdpa"
FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")  # varlen in transformers itself
_IN_PACKED_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("justrl_in_packed_call", default=False)


def plan_packs(tokens: Sequence[int], budget: int, at_least: int = 1) -> list[list[int]]:
    """Row indices grouped into packs of at most `budget` tokens (first fit, longest rows first; a row over the budget
    is a pack of its own), split further into `at_least` packs where there are rows enough (processes must run the
    same number of forwards). Every row is in exactly one pack; the plan depends only on the lengths."""
    order = sorted(range(len(tokens)), key=lambda i: (-tokens[i], i))
    packs: list[list[int]] = []
    room: list[int] = []
    for index in order:
        slot = next((p for p, free in enumerate(room) if tokens[index] <= free), None)
        if slot is None:
            packs.append([index])
            room.append(budget - tokens[index])
        else:
            packs[slot].append(index)
            room[slot] -= tokens[index]
    while len(packs) < min(at_least, len(tokens)):  # the fullest pack of several rows gives up its shortest row
        fullest = max((p for p in packs if len(p) > 1), key=lambda p: sum(tokens[i] for i in p))
        packs.append([fullest.pop()])
    return packs


def row_extents(attention_mask: torch.Tensor, logits_to_keep: int) -> list[tuple[int, int]] | None:
    """Each row's real columns [start, end), or None when a row cannot be packed exactly: a hole in its mask, or no
    real token before its first completion column (then nothing predicts its first completion token)."""
    mask = attention_mask.bool()
    width = mask.size(1)
    counts = mask.sum(dim=1)
    starts = mask.int().argmax(dim=1)
    ends = width - mask.flip(1).int().argmax(dim=1)
    first_completion = width - logits_to_keep
    counts, starts, ends = torch.stack([counts, starts, ends]).tolist()  # one wait on the device, not three
    if any(n == 0 or n != end - start or start >= first_completion for n, start, end in zip(counts, starts, ends,
                                                                                              strict=True)):
        return None
    return list(zip(starts, ends, strict=True))


def row_tokens(attention_mask: torch.Tensor) -> list[int]:
    """Real tokens of each row (prompt and completion)."""
    return attention_mask.bool().sum(dim=1).tolist()


# TRL's FusedCausalLMOutput fields with one value per scored position (trl.trainer.utils.add_fused_lm_head)
_PER_TOKEN_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


class PackedCall:
    """Calls `model` on one packed row: no padding mask, each token at its position in the padded batch, and the
    rows' boundaries for the attention (`cu_seq_lens_*` on the device for flash attention; `packed_row_bounds`, a
    list, for `justrl_packed_sdpa`, which so never waits on the device to read them).

    A call through TRL's fused LM head (`fused_lm_head=True` with `labels`) leaves out each row's last token: it
    predicts nothing in its row and no other token attends to it. The head so scores at most the positions that
    row-at-a-time forwards score (one fewer per row than the whole pack), and the outputs are put back at the pack's
    columns, zero at the rows' ends (whose labels TRL masks anyway: the next row's first token is a prompt token).
    Not for MoE calls with router logits (their load-balancing loss would see fewer tokens) or one-token rows."""

    def __init__(self, model: Any, position_ids: torch.Tensor, boundaries: list[int]):
        self.model, self.position_ids, self.boundaries = model, position_ids, boundaries

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if (args or not kwargs.get("fused_lm_head") or kwargs.get("labels") is None or "shift_labels" in kwargs
                or kwargs.get("output_router_logits")  # an MoE load-balancing loss counts every token given
                or any(b - a < 2 for a, b in zip(self.boundaries[:-1], self.boundaries[1:], strict=True))):
            return self._call(self.position_ids, self.boundaries, *args, **kwargs)
        input_ids, labels = kwargs.pop("input_ids"), kwargs.pop("labels")
        device = input_ids.device
        keep = torch.cat([torch.arange(a, b - 1, device=device)  # every position but each row's last
                          for a, b in zip(self.boundaries[:-1], self.boundaries[1:], strict=True)])
        shortened = [bound - row for row, bound in enumerate(self.boundaries)]
        outputs = self._call(self.position_ids[:, keep], shortened, input_ids=input_ids[:, keep],
                             shift_labels=labels[:, keep + 1], **kwargs)
        width = input_ids.size(1) - 1  # what TRL's shifted call returns: position i predicts token i + 1
        for name in _PER_TOKEN_FIELDS:
            values = getattr(outputs, name, None)
            if values is not None:
                setattr(outputs, name, values.new_zeros(values.size(0), width).index_copy(1, keep, values))
        return outputs

    def _call(self, position_ids: torch.Tensor, boundaries: list[int], *args: Any, **kwargs: Any) -> Any:
        lengths = torch.tensor(boundaries, dtype=torch.int32, device=position_ids.device)
        longest = max(b - a for a, b in zip(boundaries[:-1], boundaries[1:], strict=True))
        kwargs.update(attention_mask=None, position_ids=position_ids, cu_seq_lens_q=lengths, cu_seq_lens_k=lengths,
                      max_length_q=longest, max_length_k=longest, packed_row_bounds=boundaries)
        token = _IN_PACKED_CALL.set(True)
        try:
            return self.model(*args, **kwargs)
        finally:
            _IN_PACKED_CALL.reset(token)


def forward_packed(
    forward: Forward,
    model: Any,
    input_ids: torch.Tensor,
    extents: list[tuple[int, int]],
    packs: list[list[int]],
    logits_to_keep: int,
    compute_entropy: bool = False,
    compute_aux_loss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`forward` (TRL's `_get_per_token_logps_and_entropies`) once per pack of rows (`plan_packs`), each row over its
    real columns `extents` (`row_extents`).

    Returns what `forward` returns for the padded batch: (B, logits_to_keep) log-probs, entropies (or None) and the
    mean of the packs' MoE auxiliary losses (or None); 0 at padding positions.

    Each pack goes through `forward` as one row. The mask handed to it marks the completion tokens (TRL scores the
    positions whose label is unmasked); `PackedCall` drops it from the model call, where the rows' boundaries bound
    the attention instead.
    """
    first_completion = input_ids.size(1) - logits_to_keep
    rows: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    aux_losses = []
    for pack in packs:
        ids, positions, boundaries = [], [], [0]
        for row in pack:
            start, end = extents[row]
            ids.append(input_ids[row, start:end])
            positions.append(torch.arange(start, end, device=input_ids.device))
            boundaries.append(boundaries[-1] + end - start)
        packed_ids, packed_positions = torch.cat(ids).unsqueeze(0), torch.cat(positions).unsqueeze(0)
        score_mask = (packed_positions >= first_completion).long()
        logps, entropies, aux = forward(
            PackedCall(model, packed_positions, boundaries), packed_ids, score_mask, packed_ids.size(1) - 1, None,
            compute_entropy, compute_aux_loss,
        )
        # output column i predicts packed token i + 1
        for row, offset in zip(pack, boundaries[:-1], strict=True):
            start, end = extents[row]
            first = offset + first_completion - start - 1  # predicts the row's first completion column
            count = max(end - first_completion, 0)
            rows[row] = tuple(  # type: ignore[assignment]
                None if values is None else F.pad(values[0, first : first + count], (0, logits_to_keep - count))
                for values in (logps, entropies)
            )
        if compute_aux_loss:
            aux_losses.append(aux)
    order = range(input_ids.size(0))
    return (
        torch.stack([rows[row][0] for row in order]),
        torch.stack([rows[row][1] for row in order]) if compute_entropy else None,
        torch.stack(aux_losses).mean() if compute_aux_loss else None,
    )


def _varlen_kernel() -> Callable | None:
    """torch's variable-length flash attention (`torch.nn.attention.varlen.varlen_attn`), where this torch has it
    with the arguments used here; None otherwise."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if {"scale", "window_size", "enable_gqa"} <= set(inspect.signature(varlen_attn).parameters) \
        else None


_VARLEN = _varlen_kernel()


@functools.cache
def _flash_capable(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (8, 0)  # flash attention: Ampere or later


def _varlen_dtype(query: torch.Tensor) -> torch.dtype | None:
    """The half-precision dtype the variable-length kernel runs `query` in, or None where it does not apply (not
    CUDA, a GPU before Ampere, float32 without autocast, heads over 256). Under autocast the dtype is autocast's,
    as it is for SDPA: the rotary tables leave queries and keys in float32 there."""
    if _VARLEN is None or query.device.type != "cuda" or query.size(-1) > 256:
        return None
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else query.dtype
    if dtype not in (torch.bfloat16, torch.float16) or not _flash_capable(query.device.index or 0):
        return None
    return dtype


def _packed_sdpa_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """In a packed forward (rows given by `packed_row_bounds`), causal attention within each row: one call of
    torch's variable-length kernel for the whole pack where it applies (`_varlen_dtype`), else SDPA once per row;
    plain SDPA for every other call. Inputs (1, heads, tokens, dim); output (1, tokens, heads, dim), as
    transformers' SDPA returns it."""
    bounds = kwargs.pop("packed_row_bounds", None)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise ValueError("Packed forwards (max_tokens_per_microbatch) support full attention only, not a sliding "
                         "window; unset max_tokens_per_microbatch for this model.")
    dtype, lengths = _varlen_dtype(query), kwargs.get("cu_seq_lens_q")
    if dtype is not None and lengths is not None and not kwargs.get("dropout"):
        # (tokens, heads, dim) views of the (1, heads, tokens, dim) projections; the rows' cumulative lengths
        # (PackedCall's, already on the device) bound the attention; window (-1, 0) is causal
        q, k, v = (x[0].transpose(0, 1).to(dtype) for x in (query, key, value))
        output = _VARLEN(q, k, v, lengths, lengths, kwargs["max_length_q"], kwargs["max_length_q"],
                        scale=kwargs.get("scaling"), window_size=(-1, 0), enable_gqa=key.size(1) != query.size(1))
        return output.unsqueeze(0), None
    outputs = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                               dropout=kwargs.get("dropout", 0.0), scaling=kwargs.get("scaling"), is_causal=True)[0]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(outputs, dim=1), None


def _packed_sdpa_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """transformers' SDPA mask, except in a packed forward: none there (the rows' boundaries bound the attention)."""
    return None if _IN_PACKED_CALL.get() else sdpa_mask(*args, **kwargs)


def check_packing_backend(*, deepspeed: bool, data_parallel: bool = False) -> None:
    """Refuse packing where it cannot be exact: the one rule the config, the trainer and the cluster planner apply.

    Packs need several backward passes per optimizer micro-step, each without gradient synchronisation but the last;
    DeepSpeed's engine steps the optimizer on every backward, and torch DataParallel replicates per forward.
    """
    if deepspeed:
        raise ValueError("max_tokens_per_microbatch is not offered under DeepSpeed (its engine steps the optimizer on "
                         "every backward of a micro-step; packs need several). Unset it, or use DDP / FSDP "
                         "(accelerate_configs/ddp.yaml or fsdp2.yaml).")
    if data_parallel:
        raise ValueError("max_tokens_per_microbatch is not offered under torch DataParallel (several GPUs in one "
                         "process); launch one process per GPU (accelerate launch / torchrun), or unset it.")


def enable_packing(model: Any) -> None:
    """Make `model` attend per row in packed forwards (flash attention does already; SDPA becomes PACKED_SDPA).

    Raises ValueError, naming the setting, for attention this cannot pack exactly (eager, flex, sliding windows).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise ValueError(f"max_tokens_per_microbatch packs rows with full causal attention; this model has "
                         f"{sorted(layer_types)} layers. Unset max_tokens_per_microbatch for it.")
    implementation = base.config._attn_implementation
    AttentionInterface.register(PACKED_SDPA, _packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, _packed_sdpa_mask)
    if implementation in FLASH_ATTENTION or implementation == PACKED_SDPA:
        return
    if implementation != "sdpa":
        raise ValueError(
            f"max_tokens_per_microbatch needs the model's attention to be 'sdpa' or flash attention (per-row attention "
            f"in a packed forward); it is {implementation!r}. Load the model with attn_implementation='sdpa' (e.g. "
            f"model_init_kwargs: {{attn_implementation: sdpa}}), or unset max_tokens_per_microbatch."
        )
    base.set_attn_implementation(PACKED_SDPA)
