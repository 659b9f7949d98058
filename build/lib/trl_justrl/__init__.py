"""trl-justrl: the JustRL recipe (simple single-stage GRPO for small reasoning models) on TRL."""

from .config import GRPORunConfig, JustRLConfig, RunConfig
from .geometry import BatchGeometry, BatchGeometryError, compute_batch_geometry
from .loss import per_token_policy_loss
from .rewards import OpenRSAccuracy, OpenRSCosineAsRun, dapo_score, get_reward_funcs, register_reward
from .trainer import GRPORunTrainer, JustRLTrainer

__version__ = "0.1.0"

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
