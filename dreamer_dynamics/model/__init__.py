"""Dynamics transformer (paper Sec. 3.2, 3.4) and KV-cached rollouts (docs/design.md §4, §5).

Convention: signal level tau = 0 is pure noise, tau = 1 is clean data.
"""

from dreamer_dynamics.model.config import DynamicsConfig
from dreamer_dynamics.model.rollout import (
    DEFAULT_CONTEXT_NOISE,
    DEFAULT_ROLLOUT_STEPS,
    RolloutConfig,
    RolloutStepper,
    TimeKVCache,
    context_signal_level,
    rollout,
)
from dreamer_dynamics.model.transformer import DynamicsTransformer

__all__ = [
    "DynamicsConfig",
    "DynamicsTransformer",
    "rollout",
    "RolloutConfig",
    "RolloutStepper",
    "TimeKVCache",
    "context_signal_level",
    "DEFAULT_ROLLOUT_STEPS",
    "DEFAULT_CONTEXT_NOISE",
]
