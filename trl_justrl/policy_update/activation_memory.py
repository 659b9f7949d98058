"""Training memory of one micro-batch, estimated from the model config, and `gradient_checkpointing: auto`.

Activations: what autograd keeps between a decoder's forward and backward (Llama / Qwen2 / Mistral layers, SDPA or
flash attention, so no (tokens x tokens) matrix), fitted on the tensors autograd saves (tests count them with
`torch.autograd.graph.saved_tensors_hooks`): per token and layer 6 hidden-size tensors in the compute dtype and 2 in
float32 (RMSNorm upcasts), keys and values, 4 intermediate-size tensors (gate, up, activation, product); under
gradient checkpointing only each layer's input, plus one layer's full set while it is recomputed. Model states:
weights, gradients and AdamW's two moments in the weights' dtype (TRL loads float32 unless `model_init_kwargs.dtype`
says otherwise), autocast's half-precision copy of the weights during the backward, and one weight-sized temporary
in the optimizer step (torch's foreach AdamW). The peak is the larger of the backward's and the step's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

AUTO = "auto"
HEADROOM = 0.85  # recompute unless the estimate leaves 15% of the device for the allocator's fragmentation and spikes
_HEAD_TOKENS, _HEAD_VOCAB = 4096, 32768  # TRL's fused LM head works in tiles of this many tokens x vocabulary entries


def checkpointing_setting(value: str | bool) -> bool | str:
    """`gradient_checkpointing` as a recipe or the command line gives it: a boolean, or "auto"."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"gradient_checkpointing = {value!r}: true, false or auto.")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one device holds at the peak of a training micro-step (see the module docstring)."""

    tokens: int
    model_states: int  # weights, gradients, AdamW's two moments
    weight_copies: int  # autocast's half-precision weights, held through the backward (0 without autocast)
    optimizer_temporary: int  # the optimizer step's weight-sized temporary
    activations_recompute: int  # with gradient checkpointing
    activations_full: int  # without
    head_workspace: int  # the fused LM head's float32 tiles and their gradients

    def peak(self, checkpointing: bool) -> int:
        activations = self.activations_recompute if checkpointing else self.activations_full
        backward = self.model_states + self.weight_copies + activations + self.head_workspace
        return max(backward, self.model_states + self.optimizer_temporary)

    def to_dict(self) -> dict[str, int]:
        return asdict(self) | {"peak_with_checkpointing": self.peak(True), "peak_without": self.peak(False)}


def _count_parameters(config: Any) -> int:
    """Parameters of the model `config` describes, counted on the meta device (nothing allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def layer_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """What autograd keeps per token of one decoder layer without checkpointing (the module docstring)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_width = (getattr(text, "num_key_value_heads", None) or heads) * _head_dim(text)
    return ((6 * dtype_bytes + 2 * 4) * text.hidden_size + 4 * dtype_bytes * text.intermediate_size
            + 2 * dtype_bytes * kv_width + 4 * heads)  # the last: attention's float32 log-sum-exp per head


def _head_dim(text: Any) -> int:
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def estimate_memory(config: Any, tokens: int, dtype_bytes: int = 2, weight_bytes: int | None = None,
                    parameters: int | None = None, shards: int = 1) -> MemoryEstimate:
    """The estimate for a micro-batch of `tokens` tokens (all rows together) of the model `config` describes, with
    activations of `dtype_bytes` bytes (2 for bf16, 4 for float32), weights of `weight_bytes` (default: the same)
    and model states split over `shards` processes (FSDP's full sharding; 1 for DDP)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers = text.hidden_size, text.num_hidden_layers
    parameters = _count_parameters(config) if parameters is None else parameters
    weight_bytes = dtype_bytes if weight_bytes is None else weight_bytes
    per_layer = layer_bytes_per_token(config, dtype_bytes)
    outside = (dtype_bytes + 4) * hidden + 8 * _head_dim(text)  # final norm (float32 input, output), rotary tables
    full = tokens * (layers * per_layer + outside)
    recompute = tokens * (layers * hidden * dtype_bytes + per_layer + outside)
    head = 2 * min(tokens, _HEAD_TOKENS) * min(text.vocab_size, _HEAD_VOCAB) * 4
    return MemoryEstimate(
        tokens=tokens, model_states=4 * parameters * weight_bytes // shards,
        weight_copies=parameters * dtype_bytes if weight_bytes > dtype_bytes else 0,
        optimizer_temporary=parameters * weight_bytes // shards, activations_recompute=recompute,
        activations_full=full, head_workspace=head,
    )


def device_memory(device: torch.device) -> int:
    """Bytes the training device has: the GPU's memory, or the machine's RAM on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_checkpointing(estimate: MemoryEstimate, available: int) -> bool:
    """Recompute (True) unless the micro-batch without recomputation fits in HEADROOM of `available` bytes."""
    return estimate.peak(checkpointing=False) > HEADROOM * available


def micro_batch_tokens(args: Any) -> int:
    """The most tokens one forward of the run holds: a pack (max_tokens_per_microbatch, or one row over it),
    else a micro-batch of rows padded to the context (max_prompt_length + max_completion_length)."""
    context = (getattr(args, "max_prompt_length", None) or 0) + (args.max_completion_length or 0)
    budget = getattr(args, "max_tokens_per_microbatch", None)
    if budget is not None:
        return max(budget, context)
    return args.per_device_train_batch_size * context


_HALF = ("bfloat16", "float16", torch.bfloat16, torch.float16)


def precision_bytes(args: Any, model_config: Any, weight_dtype: torch.dtype | None = None) -> tuple[int, int]:
    """(activation bytes, weight bytes) per value of a run: weights in `weight_dtype` (a loaded model's), else as
    TRL loads them (`model_init_kwargs.dtype`, float32 by default, "auto" = the checkpoint's); activations in half
    precision under bf16 / fp16 autocast."""
    dtype = weight_dtype or (getattr(args, "model_init_kwargs", None) or {}).get("dtype", "float32")
    if dtype == "auto":
        dtype = str(getattr(model_config, "dtype", None) or "float32").removeprefix("torch.")
    weight_bytes = 2 if dtype in _HALF else 4
    return (2 if args.bf16 or args.fp16 or weight_bytes == 2 else 4), weight_bytes


def resolve_auto_checkpointing(args: Any, model_config: Any, parameters: int | None = None,
                               weight_dtype: torch.dtype | None = None) -> bool:
    """Replace `gradient_checkpointing: auto` in `args` by the choice for this model and device (logged); return
    it. `parameters` and `weight_dtype`: a loaded model's (else counted from the config, dtype as TRL loads it).
    Model states count as split over the processes under FSDP, whole under DDP; with vLLM colocated, the device
    memory it reserves (`vllm_gpu_memory_utilization`) is not available to training."""
    dtype_bytes, weight_bytes = precision_bytes(args, model_config, weight_dtype)
    shards = args.world_size if getattr(args, "fsdp", None) else 1
    estimate = estimate_memory(model_config, micro_batch_tokens(args), dtype_bytes, weight_bytes, parameters,
                               shards)
    available = device_memory(args.device)
    if getattr(args, "use_vllm", False) and getattr(args, "vllm_mode", None) == "colocate":
        available = int(available * (1 - args.vllm_gpu_memory_utilization))
    choice = choose_checkpointing(estimate, available)
    gib = 2**30
    logger.info(
        "gradient_checkpointing: auto -> %s: a micro-batch of %d tokens needs about %.1f GiB without recomputation "
        "(%.1f GiB with), of %.1f GiB on %s (recompute above %.0f%%).", str(choice).lower(), estimate.tokens,
        estimate.peak(False) / gib, estimate.peak(True) / gib, available / gib, args.device, HEADROOM * 100,
    )
    args.gradient_checkpointing = args.activation_checkpointing = choice
    return choice
