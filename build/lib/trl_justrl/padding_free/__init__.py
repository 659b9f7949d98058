"""Padding-free policy updates for TRL's GRPOTrainer, as verl's `use_remove_padding` and `use_dynamic_bsz` ran
JustRL: trimmed forwards and length-grouped micro-batches (`trimming`), packed forwards (`packing`), and the trainer
hooks that use them (`updates.PaddingFreeUpdates`). Exact: the same log-probs, loss and gradients as TRL's padded
path, up to float summation order (tests/test_microbatch.py, tests/test_packing.py)."""

from .updates import PaddingFreeUpdates, PreparedMicroBatch

__all__ = ["PaddingFreeUpdates", "PreparedMicroBatch"]
