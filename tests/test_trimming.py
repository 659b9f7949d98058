"""Padding-free updates are exact: trimmed forwards and length-grouped micro-batches against TRL's padded path."""

from __future__ import annotations

import pytest
import torch
from trl import GRPOTrainer

from trl_justrl import JustRLTrainer
from trl_justrl.data import load_training_data
from trl_justrl.policy_update.trimming import group_by_length, real_extent

pytestmark = pytest.mark.slow

PROMPT_WIDTH, COMPLETION_WIDTH = 12, 20


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, tiny_model_path, tiny_config):
    args = tiny_config(tmp_path_factory.mktemp("microbatch"), max_completion_length=COMPLETION_WIDTH)
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict"], args=args,
                            train_dataset=load_training_data("synthetic", synthetic_size=8))
    trainer.model.float()
    return trainer


def padded_batch(rows: int, seed: int, vocab: int = 2000) -> dict[str, torch.Tensor]:
    """Left-padded prompts and right-padded completions of random lengths, as TRL builds a generation batch; the
    batch's widths are wider than any row (so every chunk has columns to trim) and one completion is empty."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths = torch.randint(2, PROMPT_WIDTH - 2, (rows,), generator=generator)
    completion_lengths = torch.randint(1, COMPLETION_WIDTH - 3, (rows,), generator=generator)
    completion_lengths[-1] = 0
    columns_p, columns_c = torch.arange(PROMPT_WIDTH), torch.arange(COMPLETION_WIDTH)
    prompt_mask = (columns_p.unsqueeze(0) >= PROMPT_WIDTH - prompt_lengths.unsqueeze(1)).long()
    completion_mask = (columns_c.unsqueeze(0) < completion_lengths.unsqueeze(1)).long()
    prompt_ids = torch.randint(3, vocab, (rows, PROMPT_WIDTH), generator=generator) * prompt_mask
    completion_ids = torch.randint(3, vocab, (rows, COMPLETION_WIDTH), generator=generator) * completion_mask
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask}


def test_real_extent_cuts_only_all_padding_columns():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0, 0]])
    assert real_extent(mask, logits_to_keep=4) == (1, 5)
    assert real_extent(torch.zeros(2, 7, dtype=torch.long), logits_to_keep=4) == (0, 7)
    # a prompt that reaches into the completion area is never cut from the left past the first completion column
    assert real_extent(torch.tensor([[0, 0, 0, 0, 1, 1, 0]]), logits_to_keep=4) == (3, 6)


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_trimmed_forward_equals_trls_padded_forward(trainer, chunk):
    batch = padded_batch(rows=7, seed=chunk or 0)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    args = (trainer.model, ids, mask, COMPLETION_WIDTH, chunk, True, False)
    with torch.no_grad():
        trimmed = trainer._get_per_token_logps_and_entropies(*args)
        padded = GRPOTrainer._get_per_token_logps_and_entropies(trainer, *args)
    real = batch["completion_mask"].bool()
    torch.testing.assert_close(trimmed[0][real], padded[0][real], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(trimmed[1][real], padded[1][real], rtol=1e-6, atol=1e-6)
    assert torch.all(trimmed[0][~real] == 0)  # padding positions are padded back with zeros


def loss_inputs(rows: int, seed: int) -> dict:
    """A training micro-batch as TRL's compute_loss takes it: `padded_batch` plus advantages and old log-probs."""
    torch.manual_seed(seed)
    batch = padded_batch(rows=rows, seed=seed)
    return batch | {
        "advantages": torch.randn(rows),
        "old_per_token_logps": -torch.rand(rows, COMPLETION_WIDTH) * 8,
        "num_items_in_batch": batch["completion_mask"].float().sum(),
    }


def loss_and_gradients(trainer, inputs: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The trainer's training loss of `inputs` and the gradients it leaves on the parameters."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]


def test_trimmed_loss_and_gradients_equal_the_padded_path(trainer):
    inputs = loss_inputs(rows=6, seed=5)
    results = {}
    for remove_padding in (True, False):
        trainer.args.remove_padding = remove_padding
        results[remove_padding] = loss_and_gradients(trainer, inputs)
    trainer.args.remove_padding = True
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-6, atol=1e-6)
    for trimmed, padded in zip(results[True][1], results[False][1], strict=True):
        torch.testing.assert_close(trimmed, padded, rtol=1e-5, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in results[True][1])


def test_group_by_length_keeps_each_updates_completions_and_sorts_them():
    torch.manual_seed(0)
    rows, per_update, updates = 3, 2, 2
    batch = padded_batch(rows=rows * per_update * updates, seed=7)
    total = rows * per_update * updates
    batch |= {"row_id": torch.arange(total), "advantages": torch.randn(total), "old_per_token_logps": None,
              "num_items_in_batch": batch["completion_mask"].sum()}
    micro = [{k: (v[i : i + rows] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in batch.items()}
             for i in range(0, total, rows)]
    grouped = group_by_length(micro, per_update)
    assert len(grouped) == len(micro)
    for u in range(updates):
        before = torch.cat([mb["row_id"] for mb in micro[u * per_update : (u + 1) * per_update]])
        after = [mb["row_id"] for mb in grouped[u * per_update : (u + 1) * per_update]]
        assert sorted(torch.cat(after).tolist()) == sorted(before.tolist())  # the same completions per update
        lengths = torch.cat([mb["completion_mask"].sum(1) for mb in grouped[u * per_update : (u + 1) * per_update]])
        assert torch.all(lengths[1:] >= lengths[:-1])  # similar lengths share a micro-batch
    for mb in grouped:  # every field moved with its row
        assert torch.equal(mb["advantages"], batch["advantages"][mb["row_id"]])
        assert torch.equal(mb["completion_ids"], batch["completion_ids"][mb["row_id"]])
        assert mb["num_items_in_batch"] is batch["num_items_in_batch"] and mb["old_per_token_logps"] is None
    assert group_by_length(micro[:1], per_update) == micro[:1]


def test_training_with_and_without_padding_removal_ends_at_the_same_weights(tmp_path, tiny_model_path,
                                                                            tiny_config):
    """Real steps, micro-batches of 2 (so grouping regroups): the same updates, up to float summation order."""
    final = {}
    for remove_padding in (True, False):
        args = tiny_config(tmp_path / str(remove_padding), per_device_train_batch_size=2, max_steps=4,
                           learning_rate=1e-3, remove_padding=remove_padding)
        trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["dapo_strict", "test_length_parity"],
                                args=args, train_dataset=load_training_data("synthetic", synthetic_size=8))
        trainer.train()
        final[remove_padding] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    for key, value in final[True].items():
        torch.testing.assert_close(value, final[False][key], rtol=1e-4, atol=1e-5)


def test_old_log_probs_are_computed_for_every_update_but_the_first(tmp_path, tiny_model_path, tiny_config,
                                                                   monkeypatch):
    """TRL's old-log-prob pass runs per micro-batch after they are formed, skipping the first update (on-policy)."""
    forwards, seen = [], []
    original_fill, original_loss = JustRLTrainer._fill_old_logps, GRPOTrainer.compute_loss

    def count_forward(self, micro_batches):
        missing = [batch for batch in micro_batches if batch.get("old_per_token_logps") is None]
        original_fill(self, micro_batches)
        forwards.extend(batch["completion_ids"].size(0) for batch in missing)

    def record_loss(self, model, inputs, *args, **kwargs):
        seen.append(inputs.get("old_per_token_logps") is not None)
        return original_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(JustRLTrainer, "_fill_old_logps", count_forward)
    monkeypatch.setattr(GRPOTrainer, "compute_loss", record_loss)
    args = tiny_config(tmp_path, per_device_train_batch_size=2)  # 2 updates of 2 micro-batches per generation
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["test_length_parity"], args=args,
                            train_dataset=load_training_data("synthetic", synthetic_size=8))
    trainer.train()
    assert forwards == [2, 2, 2, 2]  # per generation batch: the second update's 2 micro-batches, 2 batches
    assert seen == [False, False, True, True] * 2


def test_trls_old_log_prob_pass_is_the_one_skipped_forward(tmp_path, tiny_model_path, tiny_config, monkeypatch):
    """While TRL scores a generation batch, the one policy forward JustRLTrainer skips is TRL's old-log-prob pass:
    made without gradients over the whole generation batch, and TRL's output then carries no old log-probs."""
    from trl_justrl.policy_update.forwards import PolicyForwardTap

    taps = []

    class RecordingTap(PolicyForwardTap):
        def __exit__(self, *exc):
            taps.append(self)
            return super().__exit__(*exc)

    monkeypatch.setattr("trl_justrl.policy_update.padding_free.PolicyForwardTap", RecordingTap)
    outputs = []
    original = GRPOTrainer._generate_and_score_completions

    def record(self, inputs):
        outputs.append(original(self, inputs))
        return outputs[-1]

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", record)
    args = tiny_config(tmp_path, per_device_train_batch_size=2, max_steps=2)  # one generation batch of 8 rows
    trainer = JustRLTrainer(model=str(tiny_model_path), reward_funcs=["test_length_parity"], args=args,
                            train_dataset=load_training_data("synthetic", synthetic_size=8))
    trainer.train()
    assert len(taps) == 1 and taps[0].skip
    width = outputs[0]["completion_ids"].size(1)
    assert taps[0].calls == [(8, width, False)] and "old_per_token_logps" not in outputs[0]


@pytest.mark.parametrize("forwards", [0, 2])
def test_a_trl_that_calls_differently_fails_loudly(trainer, forwards, monkeypatch):
    """If a TRL release makes no policy forward while scoring (or more than one), the deferral stops with an error
    naming the cause instead of training on wrong old log-probs; the dual-clip metric guards compute_loss alike."""
    batch = padded_batch(rows=4, seed=1)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)

    def changed_trl(self, inputs):
        for _ in range(forwards):
            with torch.no_grad():
                self._get_per_token_logps_and_entropies(self.model, ids, mask, COMPLETION_WIDTH)
        return batch

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", changed_trl)
    trainer.model.train()
    assert trainer._defers_old_logps()
    with pytest.raises(RuntimeError, match="no longer makes exactly one policy forward"):
        trainer._generate_and_score_completions([])

    def loss_without_a_forward(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return torch.zeros((), requires_grad=True)

    monkeypatch.setattr(GRPOTrainer, "compute_loss", loss_without_a_forward)
    with pytest.raises(RuntimeError, match="made 0 policy forwards, not one"):
        trainer.compute_loss(trainer.model, loss_inputs(rows=2, seed=0))
