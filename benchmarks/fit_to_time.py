"""Fit a run's step-tied schedule to a wall-clock budget (the quickstart of benchmarks/device_run.py).

A config's ``max_steps`` fixes the schedule: the cosine's length, the bootstrap warm-up and the validation
interval. When the step rate of a machine is not known yet, ``--trainer.max_time`` alone would stop such a run
part-way through its schedule. ``FitToTime`` measures the rate over the first ``probe_steps`` steps (after
compilation and warm-up) and rescales the schedule, at the config's shares of ``max_steps``, to the steps that
fit into ``seconds``: the run ends at the end of its schedule, near its time.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl


def fitted_steps(
    step: int, seconds_per_step: float, seconds_left: float, bootstrap_share: float, cost: float
) -> int:
    """Total steps N such that the steps after ``step`` fill ``seconds_left``: flow-only steps until the
    bootstrap phase (the last ``bootstrap_share`` of N) and steps ``cost`` times as long in it."""
    n = (seconds_left / seconds_per_step + step) / ((1 - bootstrap_share) + bootstrap_share * cost)
    if (1 - bootstrap_share) * n < step:  # already inside the bootstrap phase: every step left costs `cost`
        n = step + seconds_left / (seconds_per_step * cost)
    return max(step + 1, int(n))


class FitToTime(pl.Callback):
    """Rescale max_steps, the scheduler's length, ``bootstrap_warmup_steps`` and the validation interval to
    the steps that fit into ``seconds`` of training (from the start of fit), as measured after
    ``probe_steps``."""

    def __init__(
        self, seconds: float, probe_steps: int = 100, bootstrap_cost: float = 1.7, reserve: float = 0.1
    ):
        self.seconds = seconds  # wall-clock budget of the training, validations included
        self.probe_steps = probe_steps  # the rate is measured over the second half of these steps
        self.bootstrap_cost = (
            bootstrap_cost  # a bootstrap step's time over a flow step's (docs/benchmarks.md)
        )
        self.reserve = reserve  # share of the time left kept for validations, recompiles, the last checkpoint
        self.fitted: dict | None = None  # what was set, for the report

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._half = time.monotonic(), None
        steps = trainer.max_steps
        self._shares = {
            "bootstrap": 1 - pl_module.objective.bootstrap_warmup_steps / steps,
            "validation": trainer.val_check_batch / steps,
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.fitted is not None or step < self.probe_steps // 2:
            return
        if self._half is None:
            self._half = (step, time.monotonic())
            return
        if step < self.probe_steps:
            return
        now = time.monotonic()
        rate = (now - self._half[1]) / max(1, step - self._half[0])
        left = (self.seconds - (now - self._start)) * (1 - self.reserve)
        total = fitted_steps(step, rate, left, self._shares["bootstrap"], self.bootstrap_cost)
        self.apply(trainer, pl_module, total)
        self.fitted.update(step=step, seconds_per_step=rate, seconds_left=left)

    def apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, total: int) -> None:
        """Set the schedule to ``total`` steps at the config's shares."""
        trainer.fit_loop.epoch_loop.max_steps = total
        trainer.val_check_batch = max(1, round(self._shares["validation"] * total))
        pl_module.objective.bootstrap_warmup_steps = round((1 - self._shares["bootstrap"]) * total)
        for config in trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "total_steps"):
                config.scheduler.total_steps = total
        self.fitted = {
            "max_steps": total,
            "bootstrap_warmup_steps": pl_module.objective.bootstrap_warmup_steps,
            "val_check_interval": trainer.val_check_batch,
        }
        print(f"FitToTime: schedule set to {self.fitted}", flush=True)
