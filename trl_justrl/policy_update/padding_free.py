"""`PaddingFreeUpdates`: the GRPOTrainer hooks that make policy updates padding-free (trimming.py, packing.py)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from trl.models.utils import disable_gradient_checkpointing

from ..trl_internals import (
    add_step_time,
    buffered_micro_batches,
    is_vision_language,
    position_in_buffer,
    set_buffered_micro_batches,
)
from .forwards import PolicyForwardTap
from .packing import check_packing_backend, enable_packing, forward_packed, plan_packs, row_extents, row_tokens
from .trimming import forward_trimmed, group_by_length, take_rows


class PreparedMicroBatch(dict):
    """A training micro-batch (or pack) already taken from TRL's buffer: `_prepare_inputs` passes it through."""


class PaddingFreeUpdates:
    """Mixin for a `GRPOTrainer` subclass (before it in the bases), reading `args.remove_padding` and
    `args.max_tokens_per_microbatch`. Exact: TRL's log-probs, loss and gradients, with less compute.

    - every policy forward runs over its rows' real tokens: trimmed per chunk, or packed (`_get_per_token_logps_...`);
    - within an optimizer update, completions of similar length share a micro-batch (`_prepare_inputs`);
    - TRL's old-log-prob pass is replaced by `_fill_old_logps`, once the micro-batches are formed: only the updates
      after the first need old log-probs (the first is on-policy);
    - with packing, `training_step` gives each pack its own forward and backward.
    """

    # ---- the model and its forwards ------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """With `max_tokens_per_microbatch`: per-row attention in packed forwards (packing.enable_packing)."""
        super().configure_model()
        if self.args.max_tokens_per_microbatch is None:
            return
        check_packing_backend(deepspeed=self.is_deepspeed_enabled, data_parallel=self.args.n_gpu > 1)
        if is_vision_language(self):
            raise ValueError("max_tokens_per_microbatch packs text rows; image inputs are not split by tokens. "
                             "Unset it for vision-language models.")
        enable_packing(self.accelerator.unwrap_model(self.model))

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
        compute_aux_loss=False, **multimodal,
    ):
        """TRL's forward, each chunk over its real extent only (trimming.forward_trimmed), or with
        `max_tokens_per_microbatch` the rows packed end to end (packing.forward_packed)."""
        forward = super()._get_per_token_logps_and_entropies
        # Image inputs are indexed by row and image, not by column: TRL's own (padded) path for them.
        if not self.args.remove_padding or any(value is not None for value in multimodal.values()):
            return forward(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                           compute_aux_loss, **multimodal)
        if self.args.max_tokens_per_microbatch is not None:
            extents = row_extents(attention_mask, logits_to_keep)
            packs = self._plan_packs(None if extents is None else [end - start for start, end in extents])
            if packs is not None:
                return forward_packed(forward, model, input_ids, extents, packs, logits_to_keep, compute_entropy,
                                      compute_aux_loss)
        return forward_trimmed(forward, model, input_ids, attention_mask, logits_to_keep, batch_size,
                               compute_entropy, compute_aux_loss)

    def _plan_packs(self, tokens: list[int] | None) -> list[list[int]] | None:
        """Packs of at most `max_tokens_per_microbatch` tokens of rows with `tokens` real tokens, as many on every
        process (a wrapped model's forward may talk to the other processes: DDP syncs buffers, FSDP gathers weights).
        None when some process has rows it cannot pack (`tokens` None): then every process runs its rows unpacked."""
        budget = self.args.max_tokens_per_microbatch
        packs = plan_packs(tokens, budget) if tokens is not None else None
        if self.accelerator.num_processes > 1:
            local = torch.tensor([[int(packs is None), len(packs or [])]], device=self.accelerator.device)
            unpackable, count = self.accelerator.gather(local).max(dim=0).values.tolist()
            if unpackable:
                return None
            if count > len(packs):
                packs = plan_packs(tokens, budget, at_least=count)
        return packs

    # ---- old log-probs: computed once the micro-batches are formed ----------------------------------------------

    def _defers_old_logps(self) -> bool:
        """Whether TRL's old-log-prob pass may wait for the micro-batches (then skipping the on-policy first update):
        training with padding removal, one PPO epoch, no reference model, several updates per generation batch, text
        only, and nothing that reads old log-probs while scoring (vLLM importance-sampling correction, off-policy
        masking)."""
        return (
            self.args.remove_padding and self.model.training and self.num_iterations == 1 and self.beta == 0.0
            and self.args.gradient_accumulation_steps < self.args.steps_per_generation
            and not (self.use_vllm and self.vllm_importance_sampling_correction)
            and self.off_policy_mask_threshold is None and not is_vision_language(self)
        )

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's generation and scoring; when `_defers_old_logps`, without its old-log-prob pass (the one policy
        forward GRPOTrainer._generate_and_score_completions makes with beta = 0), which `_fill_old_logps` replaces."""
        if not self._defers_old_logps():
            return super()._generate_and_score_completions(inputs)
        with PolicyForwardTap(self, skip=True) as tap:
            output = super()._generate_and_score_completions(inputs)
        if len(tap.calls) != 1 or tap.calls[0][2] or "old_per_token_logps" in output:
            raise RuntimeError(
                "GRPOTrainer._generate_and_score_completions no longer makes exactly one policy forward without "
                f"gradients for old_per_token_logps (saw {tap.calls}); this trl version changed what padding-free "
                "updates rely on. Set remove_padding: false, or use the trl version in setup.cfg."
            )
        return output

    def _prepare_inputs(self, generation_batch: dict[str, Any]) -> dict[str, Any]:
        """TRL's buffering of a generation batch into micro-batches (GRPOTrainer._prepare_inputs); when it buffered
        a new one for training, each update's completions are grouped by length (remove_padding) and the old
        log-probs the later updates lack are filled in. A PreparedMicroBatch passes through."""
        if isinstance(generation_batch, PreparedMicroBatch):
            return generation_batch
        buffered = buffered_micro_batches(self)
        micro_batch = super()._prepare_inputs(generation_batch)
        if not self.model.training or buffered_micro_batches(self) is buffered:
            return micro_batch
        position = position_in_buffer(self, micro_batch)
        per_update = self.args.gradient_accumulation_steps
        if self.args.remove_padding:
            set_buffered_micro_batches(self, group_by_length(buffered_micro_batches(self), per_update))
        batches = buffered_micro_batches(self)
        self._fill_old_logps(batches[per_update:])
        return batches[position]

    def _fill_old_logps(self, micro_batches: list[dict[str, Any]]) -> None:
        """Old log-probs, in place, for the micro-batches that lack them: `micro_batches` are a generation batch's
        updates after the first, scored by the policy that sampled them (no update of this batch has run yet).

        Replaces TRL's old-log-prob pass when `_defers_old_logps` skipped it; a no-op when TRL computed them. The
        first update needs none: TRL then uses the training forward's own detached log-probs (ratio 1), which is
        what the pass would give with the same weights, so a quarter of it is saved at the recipe's 4 updates.
        """
        missing = [batch for batch in micro_batches if batch.get("old_per_token_logps") is None]
        if not missing:
            return
        no_checkpointing = disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs)
        with torch.no_grad(), no_checkpointing:
            for batch in missing:
                ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
                mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
                batch["old_per_token_logps"], _, _ = self._get_per_token_logps_and_entropies(
                    self.model, ids, mask, batch["completion_ids"].size(1), self.args.per_device_train_batch_size
                )

    # ---- packs: one forward and backward each --------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        """TRL's training step. With `max_tokens_per_microbatch` the micro-batch is split into packs
        (`_training_packs`): each pack but the last gets its forward and backward here, its gradients kept local,
        and TRL's step takes the last (which synchronises them when the update ends). TRL's "dapo" loss of a pack is
        its tokens' share of the update's token mean, so the gradients add up to the micro-batch's. Returns the
        micro-batch's loss, detached."""
        if self.args.max_tokens_per_microbatch is None:
            return super().training_step(model, inputs, num_items_in_batch)
        start = time.perf_counter()
        model.train()  # first, as transformers' training_step does: TRL's _prepare_inputs reads the mode
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()  # schedule-free optimizers: training weights before any forward
        *earlier, last = self._training_packs(self._prepare_inputs(inputs))
        losses = [self._pack_backward(model, pack, num_items_in_batch) for pack in earlier]
        add_step_time(self, time.perf_counter() - start)  # TRL's step_time counts the whole micro-step
        loss = super().training_step(model, PreparedMicroBatch(last), num_items_in_batch)
        return loss + torch.stack(losses).sum() if losses else loss

    def _pack_backward(self, model, pack: dict[str, Any], num_items_in_batch: Any) -> torch.Tensor:
        """One pack's forward and backward without gradient synchronisation; its loss, detached."""
        local = self.accelerator.no_sync(model) if self.accelerator.sync_gradients else contextlib.nullcontext()
        with local:  # transformers already holds the sync for all but an update's last micro-batch
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, pack, num_items_in_batch=num_items_in_batch)
            self.accelerator.backward(loss)
        return loss.detach()

    def _training_packs(self, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        """A training micro-batch as packs of at most `max_tokens_per_microbatch` real tokens (one pack when it all
        fits, or when some process has rows it cannot pack)."""
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        plan = self._plan_packs(row_tokens(mask))
        if plan is None or len(plan) == 1:
            return [inputs]
        return [take_rows(inputs, torch.tensor(sorted(pack)), mask.size(0)) for pack in plan]
