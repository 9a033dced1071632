"""Training utilities around ``DynamicsModule``: optimiser/scheduler defaults, callbacks, metrics, writers."""

from dreamer_dynamics.parallelize import total_grad_norm  # lives with the scale plumbing; importable here too
from dreamer_dynamics.training.callbacks import LatentThroughputMonitor, RolloutImageLogger
from dreamer_dynamics.training.ema import EMA
from dreamer_dynamics.training.interrupt import AtomicCheckpointIO, StopOnSignal
from dreamer_dynamics.training.loggers import RunDirTensorBoardLogger
from dreamer_dynamics.training.metrics import ValidationMetrics
from dreamer_dynamics.training.muon import MuonAdamW
from dreamer_dynamics.training.optim import WarmupCosineLR, default_optimizer, parameter_groups
from dreamer_dynamics.training.prediction import RolloutWriter
from dreamer_dynamics.training.progress import StepProgressBar
from dreamer_dynamics.training.slurm import SLURMRequeueAtStepEnd

__all__ = [
    "AtomicCheckpointIO",
    "StopOnSignal",
    "EMA",
    "LatentThroughputMonitor",
    "MuonAdamW",
    "RolloutImageLogger",
    "RolloutWriter",
    "RunDirTensorBoardLogger",
    "SLURMRequeueAtStepEnd",
    "StepProgressBar",
    "ValidationMetrics",
    "WarmupCosineLR",
    "default_optimizer",
    "parameter_groups",
    "total_grad_norm",
]
