"""Stopping a run at any moment without losing it: SIGTERM and Ctrl-C checkpoint, every file is atomic.

* ``StopOnSignal``: SIGTERM (what ``kill``, Docker and schedulers send) and Ctrl-C (SIGINT) stop ``fit`` at
  the end of the current training step, after writing ``last.ckpt`` (the run's ``ModelCheckpoint`` folder),
  which ``--ckpt_path last`` resumes exactly. A second Ctrl-C stops at once. It exits with 128 + signal
  number (143 for SIGTERM, 130 for Ctrl-C), the shell's code for a signalled process. The signal handler only
  records the signal; the checkpoint is written where every rank is at the same point (after an all-reduce of
  the flag when there are several ranks, as ``slurm.SLURMRequeueAtStepEnd`` does for SIGUSR1). Under SLURM
  with auto-requeue, SIGTERM stays with Lightning (the requeue path, docs/scale_out.md).
* ``AtomicCheckpointIO``: every checkpoint file is written to a temporary name in its own folder, fsynced and
  renamed over the target, so a SIGKILL or a power cut leaves the previous complete file, never a half-written
  one (``atomic.py``). The CLI installs both.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dreamer_dynamics.atomic import TEMP_PREFIX, atomic_write
from dreamer_dynamics.compat import cluster_environment


class StoppedBySignal(SIGTERMException):
    """Raised after the checkpoint of a signalled stop; exits the process with 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class StopOnSignal(pl.Callback):
    """SIGTERM / Ctrl-C: ``last.ckpt`` at the end of the current training step, then stop (module doc)."""

    def __init__(self) -> None:
        self._requested: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning registered its own SIGTERM handler (Trainer._run), which this one replaces
        if threading.current_thread() is not threading.main_thread():
            return
        self._requested = None
        environment = cluster_environment(trainer)
        slurm = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        for signum in (signal.SIGINT,) if slurm else (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        if self._requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        self._requested = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        again = " (Ctrl-C again: stop at once)" if signum == signal.SIGINT else ""
        print(f"\n{name}: stopping after this step with a checkpoint{again}", file=sys.stderr, flush=True)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        signum = self._requested or 0
        if trainer.world_size > 1:  # every rank stops at the same step, whichever got the signal
            flag = torch.tensor(float(signum), device=pl_module.device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max"))
        if not signum:
            return
        path = last_checkpoint_path(trainer)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and Path(callback.dirpath or "") == path.parent:
                callback.last_model_path = str(path)  # its own last.ckpt: overwritten on resume, not "-v1"
        trainer.save_checkpoint(path, weights_only=False)  # resumable: optimiser and loop states too
        rank_zero_info(f"stopped at step {trainer.global_step}: {path} (resume: --ckpt_path last)")
        self.restore_handlers()
        raise StoppedBySignal(signum)

    def restore_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore_handlers()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.restore_handlers()


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """``last.ckpt`` in the folder of the run's first ``ModelCheckpoint``, else ``<root>/checkpoints``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            name = f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
            return Path(callback.dirpath) / name
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files appear complete or not at all (temporary file, fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO: storage_options are not supported, got {storage_options}")
        if "://" in str(path):  # remote storage: Lightning's own writer
            return super().save_checkpoint(checkpoint, path)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for leftover in path.parent.glob(f"{TEMP_PREFIX}*.ckpt-*"):  # of a writer killed mid-write
            if not leftover.name.endswith(f"-{os.getpid()}"):
                leftover.unlink(missing_ok=True)
        with atomic_write(path) as handle:
            torch.save(checkpoint, handle)


__all__ = ["AtomicCheckpointIO", "StopOnSignal", "StoppedBySignal", "last_checkpoint_path"]
