"""The grouped settings of ``DynamicsModule``: the objective and its schedule, and evaluation.

Each group is a CLI section (``--model.objective.loss_weighting uniform``,
``--model.evaluation.rollout_samples 8``) whose help text comes from the field comments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.field_docs import document_fields
from dreamer_dynamics.objective import LOSS_WEIGHTINGS


def _check_share(group: str, name: str, value: float | None, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if value is None or not 0.0 <= value <= 1.0:
        allowed = "[0, 1] or null" if nullable else "[0, 1]"
        raise ConfigError(f"{group}.{name} must be in {allowed}, got {value}")


@document_fields  # the field comments below become the --help text
@dataclass
class ObjectiveConfig:
    """The shortcut-forcing objective and its schedule (paper Sec. 3, docs/design.md §3)."""

    # --- what each step draws (docs/design.md §3.1-3.2, §3.7-3.8) ---
    image_row_share: float = 0.3  # share of batch rows trained as independent images (paper: 30 %, §3.8)
    d_min_share: float | None = None  # share of frames at the finest step d_min; null = uniform over K
    bootstrap_row_share: float | None = None  # share of rows whose frames draw K; the rest hold d_min (§3.7)
    bootstrap_warmup_steps: int = 0  # first steps train the flow term only: a random teacher says nothing
    context_prefix_frames: int = 0  # first n frames of every row at a rollout context's (tau_ctx, d_min)
    # --- how the terms are weighted and summed (paper Eq. 8, Sec. 3) ---
    loss_weighting: Literal["ramp", "uniform"] = "ramp"  # w(tau): ramp 0.9 tau + 0.1 (Eq. 8) or uniform 1
    normalize_losses: bool = True  # divide each loss term by its running RMS (paper Sec. 3)
    normalize_shortcut_terms_separately: bool = False  # flow and bootstrap by their own RMS, not their sum
    loss_norm_decay: float = 0.99  # EMA decay of the running mean square of each term
    ema_teacher: bool = False  # bootstrap targets from the EMA weights (paper: the online weights, §3.10)

    def __post_init__(self) -> None:
        _check_share("objective", "image_row_share", self.image_row_share)
        _check_share("objective", "d_min_share", self.d_min_share, nullable=True)
        _check_share("objective", "bootstrap_row_share", self.bootstrap_row_share, nullable=True)
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ConfigError(
                f"objective.loss_weighting must be one of {sorted(LOSS_WEIGHTINGS)}, "
                f"got {self.loss_weighting!r}"
            )
        for name in ("bootstrap_warmup_steps", "context_prefix_frames"):
            if getattr(self, name) < 0:
                raise ConfigError(f"objective.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.loss_norm_decay < 1.0:
            raise ConfigError(f"objective.loss_norm_decay must be in [0, 1), got {self.loss_norm_decay}")


@document_fields  # the field comments below become the --help text
@dataclass
class EvaluationConfig:
    """Validation, test and prediction: what is scored and how (training/evaluation.py, scores.py)."""

    rollout_steps: list[int] | None = None  # K values whose rollouts are scored; null = [1, 2, 4, k_max]
    rollout_samples: int = 4  # rollout samples per context for the energy score (>= 2)
    context_frames: int = 4  # context frames of validation and prediction rollouts; the rest is the target
    rollout_horizon: int = 8  # most frames generated per validation rollout
    rollout_batches: int = 1  # validation batches (per rank) that also run rollouts
    rollout_rows: int = 8  # most rows per batch that run rollouts
    tau_buckets: int = 4  # equal-width tau buckets of the validation flow loss
    predict_horizon: int | None = None  # frames generated per predict window; null = the rest of the window

    def __post_init__(self) -> None:
        if self.rollout_samples < 2:
            raise ConfigError(
                f"evaluation.rollout_samples must be >= 2 (energy score), got {self.rollout_samples}"
            )
        for name in ("context_frames", "rollout_horizon", "rollout_rows", "tau_buckets"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluation.{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_batches < 0:
            raise ConfigError(f"evaluation.rollout_batches must be >= 0, got {self.rollout_batches}")
        if self.predict_horizon is not None and self.predict_horizon < 1:
            raise ConfigError(f"evaluation.predict_horizon must be >= 1 or null, got {self.predict_horizon}")

    def scored_steps(self, k_max: int) -> list[int]:
        """The K values scored by validation: ``rollout_steps`` (default [1, 2, 4, k_max]) up to k_max."""
        steps = self.rollout_steps if self.rollout_steps is not None else [1, 2, 4, k_max]
        return sorted({k for k in steps if k <= k_max})


__all__ = ["EvaluationConfig", "ObjectiveConfig"]
