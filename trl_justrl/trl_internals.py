"""Every private name of TRL and transformers this project touches, in one place, each checked.

TRL offers no public hook for these (the policy forward, the micro-batch buffer, the metrics it averages, the step
whose weights vLLM holds, the backend its constructor builds, ...). Code elsewhere reaches them only through the
helpers below. `check_internals()` runs when a trainer is built: an installed TRL or transformers that renamed one
fails there with `TRLInternalsChanged` naming it, not mid-run with a bare AttributeError or StopIteration.
`tests/test_trl_internals.py` checks each entry. Verified against trl 1.16 and transformers 5.25.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TRLInternalsChanged(RuntimeError):
    """The installed TRL or transformers no longer has a private name this project relies on."""


@dataclass(frozen=True)
class Internal:
    owner: str  # module, or module:Class
    name: str
    kind: str  # method | class attribute | attribute (set in the owner's code as self.<name>) | module name |
    # template text
    used_by: str

    def present(self) -> bool:
        module_name, _, class_name = self.owner.partition(":")
        module = importlib.import_module(module_name)
        if self.kind == "template text":
            template = Path(module.__file__).parent / "templates" / "lm_model_card.md"
            return template.is_file() and self.name in template.read_text()
        if not class_name:
            return hasattr(module, self.name)
        package = module_name.split(".")[0]  # defined by the owner's own package, not inherited from elsewhere
        classes = [cls for cls in inspect.getmro(getattr(module, class_name)) if cls.__module__.startswith(package)]
        if self.kind in ("method", "class attribute"):
            return any(self.name in vars(cls) for cls in classes)
        return any(f"self.{self.name} =" in _class_source(inspect.getsourcefile(cls), cls.__name__) for cls in classes)

    def check(self) -> None:
        if not self.present():
            raise TRLInternalsChanged(
                f"{self.owner} has no {self.kind} {self.name!r} in the installed version; trl_justrl relies on it "
                f"({self.used_by}). Install the TRL / transformers versions setup.cfg names, or update "
                "trl_justrl/trl_internals.py.")


@functools.cache
def _class_source(path: str, class_name: str) -> str:
    """The source of a top-level class, parsed once per process: `inspect.getsource(cls)` tokenizes a 3,000-line
    class again on every trainer built (1.3 s each)."""
    text = Path(path).read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return "\n".join(text.splitlines()[node.lineno - 1:node.end_lineno])
    return ""


GRPO = "trl.trainer.grpo_trainer:GRPOTrainer"
VLLM_GENERATION = "trl.generation.vllm_generation:VLLMGeneration"
TRAINER = "transformers.trainer:Trainer"
MODEL_CARD_BASE_MODEL = "[{{ base_model }}](https://huggingface.co/{{ base_model }})"

INTERNALS: tuple[Internal, ...] = (
    Internal(GRPO, "_get_per_token_logps_and_entropies", "method",
             "policy_update/: the policy forward, trimmed, packed and tapped"),
    Internal(GRPO, "_generate_and_score_completions", "method",
             "trainer.py: the token budget; policy_update/padding_free.py: old log-probs computed padding-free"),
    Internal(GRPO, "_prepare_inputs", "method", "padding_free.py: an update's micro-batches grouped by length"),
    Internal(GRPO, "_buffered_inputs", "attribute", "padding_free.py: the micro-batches of a generation batch"),
    Internal(GRPO, "_current_train_step_time", "attribute", "padding_free.py: the step time of packed updates"),
    Internal(GRPO, "_is_vlm", "attribute", "padding_free.py: vision-language models keep TRL's padded path"),
    Internal(GRPO, "_metrics", "attribute", "trainer.py, validation.py: metrics TRL averages into its next log"),
    Internal(GRPO, "_last_loaded_step", "attribute", "validation.py: the step whose weights vLLM holds"),
    Internal(GRPO, "_tag_names", "class attribute", "trainer.py: the model card's tags"),
    Internal("trl.trainer.grpo_trainer", "VLLMGeneration", "module name",
             "generation/client.py: the backend GRPOTrainer's constructor builds (the disk weight transport)"),
    Internal(VLLM_GENERATION, "_init_vllm", "method",
             "generation/client.py: the disk transport's client is built where TRL builds its own"),
    Internal(VLLM_GENERATION, "_iter_named_params", "method",
             "generation/client.py: the weights to send, gathered and merged as TRL does"),
    Internal(VLLM_GENERATION, "_llm_weights_sleeping", "attribute",
             "validation.py: colocated vLLM put back to sleep after validating"),
    Internal(TRAINER, "_save_checkpoint", "method", "trainer.py: completion markers before old checkpoints go"),
    Internal(TRAINER, "_get_output_dir", "method", "trainer.py: the folder of the checkpoint being saved"),
    Internal(TRAINER, "push_in_progress", "attribute",
             "run_services/hub_push.py: the background pushes transformers starts, to report the failed ones"),
    Internal("huggingface_hub.utils._http", "default_client_factory", "module name",
             "run_services/hub_push.py: huggingface_hub's own HTTP client, given a time limit"),
    Internal("trl", MODEL_CARD_BASE_MODEL, "template text",
             "trainer.py: a local base model named in the card instead of a broken Hub link"),
)


def check_internals() -> None:
    """Raise TRLInternalsChanged for the first private name the installed TRL or transformers lacks."""
    for internal in INTERNALS:
        internal.check()


def trl_metrics(trainer: Any, mode: str) -> dict[str, list[float]]:
    """GRPOTrainer's per-mode metric lists: values appended here are averaged into its next log."""
    return trainer._metrics[mode]


def vllm_holds_step(trainer: Any) -> bool:
    """Whether vLLM holds the weights of the current step (GRPOTrainer syncs once per step)."""
    return trainer.state.global_step == trainer._last_loaded_step


def mark_vllm_synced(trainer: Any) -> None:
    """Record that vLLM now holds this step's weights, so GRPOTrainer does not send them again."""
    trainer._last_loaded_step = trainer.state.global_step


def mark_vllm_sleeping(generation: Any) -> None:
    """Tell TRL's colocated backend its engine's weights are asleep (it wakes them before the next rollout)."""
    generation._llm_weights_sleeping = True


def buffered_micro_batches(trainer: Any) -> list[dict[str, Any]] | None:
    """The micro-batches GRPOTrainer buffered from the current generation batch."""
    return trainer._buffered_inputs


def set_buffered_micro_batches(trainer: Any, batches: list[dict[str, Any]]) -> None:
    trainer._buffered_inputs = batches


def position_in_buffer(trainer: Any, micro_batch: dict[str, Any]) -> int:
    """Where `micro_batch` (the object `_prepare_inputs` returned) sits in the buffer."""
    for i, batch in enumerate(buffered_micro_batches(trainer) or ()):
        if batch is micro_batch:
            return i
    raise TRLInternalsChanged("GRPOTrainer._prepare_inputs returned a micro-batch that is not an item of "
                              "_buffered_inputs; this trl version buffers differently (trl_internals.py).")


def add_step_time(trainer: Any, seconds: float) -> None:
    """Add to GRPOTrainer's timer of the current training step (logged as step_time)."""
    trainer._current_train_step_time += seconds


def is_vision_language(trainer: Any) -> bool:
    return trainer._is_vlm


@contextmanager
def checkpoints_kept(args: Any) -> Iterator[None]:
    """Within this block transformers' `_save_checkpoint` deletes no old checkpoint (`save_total_limit` off), so the
    caller rotates them only once the new one is whole."""
    limit = args.save_total_limit
    args.save_total_limit = None
    try:
        yield
    finally:
        args.save_total_limit = limit


def hub_push_jobs(trainer: Any) -> list[Any]:
    """The futures of the Hub push transformers has in flight or finished last (none before the first)."""
    pushing = getattr(trainer, "push_in_progress", None)
    return list(pushing.jobs) if pushing is not None else []


def hub_client_factory() -> Any:
    """huggingface_hub's default HTTP client factory (its event hooks: offline mode, request ids)."""
    from huggingface_hub.utils import _http

    return _http.default_client_factory


def name_local_base_model(card: str, name: str) -> str:
    """TRL's card links the base model on the Hub; for a local one it renders a link to `None`: name it instead."""
    return card.replace("[None](https://huggingface.co/None)", f"`{name}`")
