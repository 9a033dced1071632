"""A progress bar that counts what a step-based run means: the global step against ``max_steps``.

Lightning's bar restarts every epoch, and our epochs are arbitrary (``steps_per_epoch`` of an endless
alternating-length sampler). This bar shows ``step 120/400`` across epochs and resumes at the checkpoint's
step; the loss shown is the one the module logs with ``prog_bar=True`` (``DynamicsModule`` logs the
unnormalised loss there: the normalised one is ~1 by design). The CLI adds it unless the config has its own
progress bar or ``enable_progress_bar: false``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """TQDM bar over optimiser steps: ``global_step / max_steps`` (no total when ``max_steps`` is -1)."""

    @property
    def train_description(self) -> str:
        return "step"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        self.train_progress_bar.n = trainer.global_step  # resumed runs start at their step
        self.train_progress_bar.refresh()

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        pass  # one bar for the whole run

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and self.refresh_rate and (step % self.refresh_rate == 0 or step == bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the log version is in the log path, not a training signal
        return metrics


__all__ = ["StepProgressBar"]
