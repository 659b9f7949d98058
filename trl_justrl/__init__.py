"""trl-justrl: the JustRL recipe (simple single-stage GRPO for small reasoning models) on TRL.

The public names load on first use, so a process that needs only a light part of the package (a grading worker, the
command line's help) does not import torch and TRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {  # public name -> the module that defines it
    "BatchGeometry": ".geometry",
    "BatchGeometryError": ".geometry",
    "compute_batch_geometry": ".geometry",
    "GRPORunConfig": ".config",
    "JustRLConfig": ".config",
    "RunConfig": ".config",
    "per_token_policy_loss": ".loss",
    "OpenRSAccuracy": ".rewards",
    "OpenRSCosineAsRun": ".rewards",
    "dapo_score": ".rewards",
    "get_reward_funcs": ".rewards",
    "register_reward": ".rewards",
    "GRPORunTrainer": ".trainer",
    "JustRLTrainer": ".trainer",
}
__all__ = [
    "BatchGeometry",
    "BatchGeometryError",
    "GRPORunConfig",
    "GRPORunTrainer",
    "JustRLConfig",
    "JustRLTrainer",
    "OpenRSAccuracy",
    "OpenRSCosineAsRun",
    "RunConfig",
    "compute_batch_geometry",
    "dapo_score",
    "get_reward_funcs",
    "per_token_policy_loss",
    "register_reward",
]

if TYPE_CHECKING:
    from .config import GRPORunConfig, JustRLConfig, RunConfig
    from .geometry import BatchGeometry, BatchGeometryError, compute_batch_geometry
    from .loss import per_token_policy_loss
    from .rewards import OpenRSAccuracy, OpenRSCosineAsRun, dapo_score, get_reward_funcs, register_reward
    from .trainer import GRPORunTrainer, JustRLTrainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
