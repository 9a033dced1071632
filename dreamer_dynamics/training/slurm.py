"""SLURM auto-requeue that is safe under multi-process training.

Lightning's ``SLURMEnvironment(auto_requeue=True)`` saves ``hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue``
*inside* the SIGUSR1 handler. That save ends with a barrier, and a Python signal handler runs wherever the
main thread happens to be: one rank can enter the barrier while another still waits in a different collective
(the DDP gradient all-reduce, the loss normaliser's all-reduce). With gloo this deadlocked 2 of 3 runs of
tests/test_slurm.py until the collective timeout; with NCCL collectives can mismatch.

``SLURMRequeueAtStepEnd`` keeps Lightning's behaviour and files (the same handler, the same
``hpc_ckpt_<n>.ckpt`` that Lightning restores from, the same ``scontrol requeue``) but runs it at a point
every rank reaches together: the signal handler only records the signal, and at the end of a training step the
ranks agree with one all-reduce of a flag (MAX) and then all call Lightning's handler.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from dreamer_dynamics.compat import cluster_environment, slurm_requeue_handler


class SLURMRequeueAtStepEnd(pl.Callback):
    """Runs Lightning's SLURM auto-requeue (checkpoint + ``scontrol requeue``) at a step end on all ranks.

    A no-op unless Lightning runs under SLURM with ``auto_requeue`` (the default there), so it can stay in any
    config. It installs its handler before the Trainer registers its own, which makes Lightning leave the
    signal to it.

    Args:
        check_every_n_steps: steps between the cross-rank checks (one tiny all-reduce each); the signal's lead
            time (``#SBATCH --signal=SIGUSR1@90``) must cover this many steps plus saving the checkpoint.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if check_every_n_steps < 1:
            raise ValueError(
                f"SLURMRequeueAtStepEnd: check_every_n_steps must be >= 1, got {check_every_n_steps}"
            )
        self.check_every_n_steps = check_every_n_steps
        self._signum: int | None = None  # the requeue signal while our handler is installed
        self._previous_handler: Any = None
        self._received = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        environment = cluster_environment(trainer)  # the one Lightning's signal connector consults
        if stage != "fit" or not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        if threading.current_thread() is not threading.main_thread() or environment.requeue_signal is None:
            return  # signal handlers can only be installed from the main thread
        if slurm_requeue_handler(trainer) is None:  # a Lightning without it
            rank_zero_warn(
                "SLURMRequeueAtStepEnd: this Lightning version has no SLURM requeue handler to defer; "
                "leaving the signal to Lightning"
            )
            return
        self._signum = environment.requeue_signal
        self._received = False
        self._previous_handler = signal.signal(self._signum, self._record_signal)

    def _record_signal(self, signum: int, frame: Any) -> None:
        self._received = True  # nothing else here: no I/O, no collectives (see the module docstring)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._signum is None or trainer.global_step % self.check_every_n_steps:
            return
        flag = torch.tensor(float(self._received), device=pl_module.device)
        if float(trainer.strategy.reduce(flag, reduce_op="max")) > 0:  # some rank got it: all act now
            self._received = False
            rank_zero_info(f"SLURM requeue signal received: checkpointing at step {trainer.global_step}")
            slurm_requeue_handler(trainer)(self._signum, None)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._signum is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self._signum, self._previous_handler or signal.SIG_DFL)
        self._signum = None


__all__ = ["SLURMRequeueAtStepEnd"]
