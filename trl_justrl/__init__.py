"""trl-justrl: the JustRL recipe (simple single-stage GRPO for small reasoning models) on TRL.

The public names load on first use, so a process that needs only a light part of the package (a grading worker, the
command line's help) does not import torch and TRL.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {  # the module that defines each group of public names
    ".config": ("GRPORunConfig", "JustRLConfig", "RunConfig"),
    ".trainer": ("GRPORunTrainer", "JustRLTrainer"),
    ".policy_update.geometry": ("BatchGeometry", "BatchGeometryError", "compute_batch_geometry"),
    ".policy_update.loss": ("per_token_policy_loss",),
    ".rewards": ("get_reward_funcs", "register_reward"),
    ".rewards.dapo": ("dapo_score",),
    ".rewards.open_rs": ("OpenRSAccuracy", "OpenRSCosineAsRun"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
