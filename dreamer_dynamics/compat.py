"""Every use of a private or undocumented Lightning attribute, in one place, with a clear error when it moves.

The package otherwise uses Lightning's public API only (``LightningModule.device_mesh``, ``LightningCLI``'s
``parser_class``, ...). Each accessor below names what it reads; checked against the Lightning versions in
``TESTED_LIGHTNING`` (``tests/test_compat.py`` runs every accessor). On another version an accessor that
finds nothing raises ``LightningCompatError`` naming the attribute and the installed version, instead of an
``AttributeError`` deep inside a training run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning

TESTED_LIGHTNING = ("2.5", "2.6")  # major.minor versions these accessors were checked against
LIGHTNING_VERSION = lightning.__version__


class LightningCompatError(RuntimeError):
    """A private Lightning attribute this package relies on is missing in the installed Lightning."""


def _missing(what: str) -> LightningCompatError:
    tested = ", ".join(TESTED_LIGHTNING)
    return LightningCompatError(
        f"dreamer_dynamics needs {what}, which lightning=={LIGHTNING_VERSION} does not "
        f"have (tested with lightning {tested}.x); see dreamer_dynamics/compat.py"
    )


def cluster_environment(trainer: Any) -> Any:
    """The Trainer's cluster environment (``SLURMEnvironment`` under SLURM); no public accessor exists.

    Private: ``trainer._accelerator_connector.cluster_environment``."""
    connector = getattr(trainer, "_accelerator_connector", None)
    if connector is None or not hasattr(connector, "cluster_environment"):
        raise _missing("Trainer._accelerator_connector.cluster_environment")
    return connector.cluster_environment


def slurm_requeue_handler(trainer: Any) -> Callable[[int, Any], None] | None:
    """Lightning's own SLURM requeue signal handler (saves ``hpc_ckpt_<n>.ckpt``, runs ``scontrol requeue``),
    or None on a Lightning without one (callers then leave the signal to Lightning).

    Private: ``trainer._signal_connector._slurm_sigusr_handler_fn``."""
    connector = getattr(trainer, "_signal_connector", None)
    return getattr(connector, "_slurm_sigusr_handler_fn", None)


def logging_step(trainer: Any) -> int:
    """The step Lightning's logger connector gives metrics logged now (validation scalars included), so that
    pictures logged beside them share their step.

    Private: ``trainer.fit_loop.epoch_loop._batches_that_stepped``."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if loop is None or not hasattr(loop, "_batches_that_stepped"):
        raise _missing("Trainer.fit_loop.epoch_loop._batches_that_stepped")
    return int(loop._batches_that_stepped)


def averaged_model(callback: Any) -> Any | None:
    """The ``AveragedModel`` of a ``WeightAveraging`` callback (e.g. ``EMAWeightAveraging``), None before the
    callback has built it (it does so in ``setup``).

    Private: ``WeightAveraging._average_model``."""
    if not hasattr(callback, "_average_model"):
        raise _missing("WeightAveraging._average_model")
    return callback._average_model


def training_batch_progress(trainer: Any) -> Any:
    """The fit loop's batch progress counters (``.total.processed``, ``.current.processed``): the training
    batches actually consumed, unlike a sampler's position, which DataLoader prefetching runs ahead of.

    Undocumented: ``trainer.fit_loop.epoch_loop.batch_progress``."""
    try:
        return trainer.fit_loop.epoch_loop.batch_progress
    except AttributeError:
        raise _missing("Trainer.fit_loop.epoch_loop.batch_progress") from None


__all__ = [
    "LIGHTNING_VERSION",
    "LightningCompatError",
    "TESTED_LIGHTNING",
    "averaged_model",
    "cluster_environment",
    "slurm_requeue_handler",
    "training_batch_progress",
]
