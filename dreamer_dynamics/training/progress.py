"""A progress bar that counts what a step-based run means: the global step against ``max_steps``.

Lightning's bar restarts every epoch, and our epochs are arbitrary (``steps_per_epoch`` of an endless
alternating-length sampler). This bar shows ``step 120/400`` across epochs and resumes at the checkpoint's
step; the loss shown is the one the module logs with ``prog_bar=True`` (``DynamicsModule`` logs the
unnormalised loss there: the normalised one is ~1 by design), beside the latest ``val/rollout_es_ratio_k4``.
The CLI adds it unless the config has its own progress bar or ``enable_progress_bar: false``. ``FitSummary``
prints the final validation figures, the checkpoint and the TensorBoard command after ``fit``;
``OneLineModelSummary`` replaces Lightning's summary table by one line.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

PROGRESS_RATIO = "val/rollout_es_ratio_k4"  # shown in the bar as es_ratio_k4
SUMMARY_PREFIXES = ("val/rollout_es_ratio_k", "val/object_accuracy_k")  # and val/loss


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
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)  # one line per update
            bar.refresh()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The loss and the latest validation energy-score ratio to copy-last at K = 4 (below 1 beats
        copying the last frame)."""
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the log version is in the log path, not a training signal
        ratio = trainer.callback_metrics.get(PROGRESS_RATIO)
        if ratio is not None:
            metrics["es_ratio_k4"] = f"{float(ratio):.3f}"
        return metrics


class OneLineModelSummary(ModelSummary):
    """The model summary as one line: trainable parameters and size (Lightning's table lists a FLOPs column
    that is 0 for this model and the metric containers)."""

    @staticmethod
    def summarize(
        summary_data: Any,
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: Any,
        total_flops: int,
        **kwargs: Any,
    ) -> None:
        rank_zero_info(f"model: {trainable_parameters:,} trainable parameters ({model_size:.1f} MB)")


class FitSummary(pl.Callback):
    """At the end of ``fit``: the final validation figures, the checkpoint and the TensorBoard command."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = [k for k in metrics if k == "val/loss" or k.startswith(SUMMARY_PREFIXES)]
        lines = [f"done: step {trainer.global_step}"]
        if shown:
            lines.append(
                "validation: " + ", ".join(f"{k[4:]} {float(metrics[k]):.4g}" for k in sorted(shown))
            )
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or getattr(
            trainer.checkpoint_callback, "best_model_path", ""
        )
        if checkpoint:
            lines.append(f"checkpoint: {checkpoint}")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                lines.append(f"TensorBoard: tensorboard --logdir {logger.save_dir}")
                break
        print("\n".join(lines), flush=True)


__all__ = ["FitSummary", "OneLineModelSummary", "StepProgressBar"]
