"""Each private TRL / transformers name the project uses exists in the installed versions, and a missing one is
refused with an error naming it (trl_justrl/trl_internals.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from trl import GRPOTrainer

from trl_justrl.trl_internals import (
    INTERNALS,
    Internal,
    TRLInternalsChanged,
    check_internals,
    checkpoints_kept,
    name_local_base_model,
    position_in_buffer,
)


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda i: i.name)
def test_each_private_name_is_in_the_installed_version(internal):
    internal.check()


@pytest.mark.parametrize("kind", ["method", "attribute", "module name", "template text"])
def test_a_renamed_private_name_is_refused_naming_it(kind):
    owner = {"method": "trl.trainer.grpo_trainer:GRPOTrainer", "attribute": "trl.trainer.grpo_trainer:GRPOTrainer",
             "module name": "trl.trainer.grpo_trainer", "template text": "trl"}[kind]
    gone = Internal(owner, "_renamed_in_a_newer_trl", kind, "a test")
    with pytest.raises(TRLInternalsChanged, match=rf"no {kind} '_renamed_in_a_newer_trl'.*\(a test\)"):
        gone.check()


def test_building_a_trainer_checks_them_all(monkeypatch):
    check_internals()
    monkeypatch.delattr(GRPOTrainer, "_prepare_inputs")
    with pytest.raises(TRLInternalsChanged, match="GRPOTrainer has no method '_prepare_inputs'"):
        check_internals()


def test_a_micro_batch_missing_from_the_buffer_is_named_not_a_bare_stop_iteration():
    first, second = {"a": 1}, {"a": 1}
    trainer = SimpleNamespace(_buffered_inputs=[first, second])
    assert position_in_buffer(trainer, second) == 1  # by identity, not equality
    with pytest.raises(TRLInternalsChanged, match="not an item of _buffered_inputs"):
        position_in_buffer(trainer, {"a": 1})


def test_checkpoints_are_kept_during_the_save_and_the_limit_restored_after_a_failure():
    args = SimpleNamespace(save_total_limit=2)
    with pytest.raises(OSError), checkpoints_kept(args):
        assert args.save_total_limit is None
        raise OSError("disk full")
    assert args.save_total_limit == 2


def test_trl_card_of_a_local_model_gets_its_name(tmp_path):
    """TRL's own card renders a local base model as a link to None: the adapter's replacement matches it."""
    from trl.trainer.utils import generate_model_card

    card = generate_model_card(base_model=None, model_name="m", hub_model_id="m", dataset_name=None, tags=[],
                               wandb_url=None, trainer_name="GRPO", trainer_citation=None, paper_title=None,
                               paper_id=None, comet_url=None, trackio_url=None)
    assert "[None](https://huggingface.co/None)" not in name_local_base_model(str(card), "/models/tiny")
    assert "`/models/tiny`" in name_local_base_model(str(card), "/models/tiny")
