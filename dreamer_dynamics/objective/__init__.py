"""The shortcut-forcing objective (docs/design.md §2-3): standalone and model-agnostic.

Paper convention throughout: signal level tau = 0 is pure noise, tau = 1 is clean data.
"""

from dreamer_dynamics.objective.flow import (
    LOSS_WEIGHTINGS,
    corrupt,
    euler_sample,
    ramp_weight,
    uniform_weight,
    velocity,
)
from dreamer_dynamics.objective.normalizer import LossNormalizer
from dreamer_dynamics.objective.sampling import (
    is_power_of_two,
    sample_signal_and_step,
    step_level_probs,
    with_context_prefix,
)
from dreamer_dynamics.objective.shortcut import (
    ShortcutForcingLoss,
    bootstrap_velocity_target,
    shortcut_forcing_loss,
)

__all__ = [
    "corrupt",
    "velocity",
    "ramp_weight",
    "uniform_weight",
    "LOSS_WEIGHTINGS",
    "sample_signal_and_step",
    "step_level_probs",
    "with_context_prefix",
    "is_power_of_two",
    "shortcut_forcing_loss",
    "ShortcutForcingLoss",
    "bootstrap_velocity_target",
    "euler_sample",
    "LossNormalizer",
]
