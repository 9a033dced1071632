"""``dreamer_dynamics.compat``: every private Lightning attribute the package reads exists in the installed
Lightning (so an upgrade that moves one fails here, by name), and a missing one gives a clear error."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import EMAWeightAveraging

from dreamer_dynamics import compat


def test_the_installed_lightning_is_a_tested_version():
    major_minor = ".".join(compat.LIGHTNING_VERSION.split(".")[:2])
    assert major_minor in compat.TESTED_LIGHTNING, (
        f"lightning {compat.LIGHTNING_VERSION}: check dreamer_dynamics/compat.py, "
        "then add it to TESTED_LIGHTNING"
    )


def test_every_accessor_finds_its_attribute():
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert compat.cluster_environment(trainer) is not None
    assert callable(compat.slurm_requeue_handler(trainer))
    progress = compat.training_batch_progress(trainer)
    assert progress.total.processed == 0 and progress.current.processed == 0
    assert compat.averaged_model(EMAWeightAveraging()) is None  # built in setup
    assert compat.logging_step(trainer) == 0


def test_a_missing_attribute_names_itself_and_the_version():
    with pytest.raises(compat.LightningCompatError, match="_accelerator_connector.*lightning=="):
        compat.cluster_environment(object())
    with pytest.raises(compat.LightningCompatError, match="batch_progress"):
        compat.training_batch_progress(object())
    with pytest.raises(compat.LightningCompatError, match="_batches_that_stepped"):
        compat.logging_step(object())
    with pytest.raises(compat.LightningCompatError, match="_average_model"):
        compat.averaged_model(object())
    assert compat.slurm_requeue_handler(object()) is None  # optional: callers fall back to Lightning's own
