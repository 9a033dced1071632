"""``EMA``: Lightning's ``EMAWeightAveraging`` whose checkpoints always resume from the trained (live)
weights.

Lightning's callback copies the averaged weights into the model at the end of ``fit`` and saves whatever the
model then holds as the state to resume from. Two consequences (docs/training.md, "EMA and checkpoints"):

- a run that stops before ``update_starting_at_step`` replaces its trained weights with the *initial* ones
  (the average has never been updated) and saves those;
- a finished run saves the averaged weights as its resume state, so extending it (a larger ``max_steps`` and
  ``--ckpt_path``) does not continue the run that was trained.

This subclass keeps Lightning's checkpoint layout (``state_dict`` = the weights to evaluate or export,
``current_model_state`` = the live weights to resume from, ``averaging_state``) and Lightning's behaviour
after ``fit`` (the module holds the weights to evaluate), with these rules:

- before the first update ("not started") the weights to evaluate/export ARE the live weights: validation does
  not swap, ``state_dict`` holds the live weights, and the module keeps its trained weights at the end of
  ``fit``;
- ``current_model_state`` is always the live weights, also for the checkpoint that ``ModelCheckpoint`` writes
  after ``fit`` ended (the live weights are kept aside while the module holds the average);
- the first update copies the live weights (``AveragedModel``), so whether or not the average was kept in sync
  before it cannot change any later value: a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import itertools
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.weight_averaging import EMAWeightAveraging, WeightAveraging
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from dreamer_dynamics import compat


def averaging_started(callback: WeightAveraging) -> bool:
    """True once the average has been updated at least once (before that it holds the initial weights)."""
    model = compat.averaged_model(callback)
    return model is not None and int(model.n_averaged) > 0


def _tensors(module: torch.nn.Module) -> list[Tensor]:
    return list(itertools.chain(module.parameters(), module.buffers()))


class EMA(EMAWeightAveraging):
    """Exponential moving average of the weights (Lightning's ``EMAWeightAveraging``), safe at every stop.

    Arguments as ``lightning.pytorch.callbacks.EMAWeightAveraging``:

    Args:
        device: where the averaged copy lives; None = the training device (needed by ``ema_teacher``).
        use_buffers: also average the buffers (Lightning's default).
        decay: EMA decay per update.
        update_every_n_steps: update after every n-th optimiser step.
        update_starting_at_step: first zero-based step index that updates the average; before it, evaluation,
            export and the EMA teacher use the live weights.
        update_starting_at_epoch: also update at the end of every epoch from this one on.
    """

    def __init__(
        self,
        device: torch.device | str | int | None = None,
        use_buffers: bool = True,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            use_buffers=use_buffers,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
            update_starting_at_epoch=update_starting_at_epoch,
            **kwargs,
        )
        self._live_state: dict[str, Tensor] | None = None  # live weights while the module holds the EMA
        self._swapped = False  # the module holds the average for a validation epoch

    @property
    def averaged_model(self) -> AveragedModel | None:
        return compat.averaged_model(self)

    @property
    def started(self) -> bool:
        return averaging_started(self)

    def _sync_average_to_live(self, pl_module: pl.LightningModule) -> None:
        """Before the first update the average stands for the live weights (the first update overwrites
        it)."""
        model = self.averaged_model
        if model is None or self.started:
            return
        with torch.no_grad():
            for average, live in zip(_tensors(model.module), _tensors(pl_module)):
                average.copy_(live.detach().to(average.device))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._live_state is not None:
            # A second fit() on the same module continues from the live weights, not from the average.
            pl_module.load_state_dict(self._live_state)
            self._live_state = None
        super().setup(trainer, pl_module, stage)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swapped = self.started and self._live_state is None  # after fit the module holds the average
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.started:  # keep the trained weights; the average stands for them
            self._sync_average_to_live(pl_module)
            return
        self._live_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self._copy_average_to_current(pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._sync_average_to_live(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self.averaged_model is not None and self._live_state is not None:
            checkpoint["current_model_state"] = dict(self._live_state)  # the module holds the average now

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._live_state = None
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


__all__ = ["EMA", "averaging_started"]
