"""Test-only helpers loaded into CLI subprocesses by class path (``--trainer.callbacks+=...``).

``RankRecorder`` writes what one rank saw to ``<out_dir>/rank<r>-run<n>.json`` (n = ``$SLURM_RESTART_COUNT``,
0 outside SLURM) so that a test can compare ranks after a real multi-process run: per step the batch shape and
a fingerprint of every sequence, the rank-local training loss terms, the validation metrics as logged, the
loss normaliser's running RMS and a checksum of the weights. Rank 0 also appends the global step after every
optimiser step to ``<out_dir>/progress-run<n>.txt``, which a test polls to act in the middle of training.

"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import lightning.pytorch as pl
import torch

from dreamer_dynamics.parallelize import total_grad_norm


def sequence_fingerprints(latents: torch.Tensor) -> list[str]:
    """One short hash per sequence of a [B, T, N, D] batch (equal windows give equal hashes)."""
    rows = latents.detach().float().cpu().contiguous()
    return [hashlib.sha1(row.numpy().tobytes()).hexdigest()[:16] for row in rows]


def weights_checksum(module: torch.nn.Module) -> float:
    """Sum of |w| over all parameters (FSDP2 shards are gathered: a collective, so call it on every rank)."""
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in module.parameters()]
    return float(sum(p.detach().float().abs().sum() for p in full))


class RankRecorder(pl.Callback):
    """Records per-rank observations to ``out_dir/rank<global_rank>.json`` at the end of fit."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.run = int(os.environ.get("SLURM_RESTART_COUNT", "0"))  # how often SLURM requeued this job
        self.steps: list[dict[str, Any]] = []
        self.validations: list[dict[str, float]] = []
        self.validation_windows: list[str] = []  # fingerprints of every validation sequence this rank saw
        self.live_checksum: float | None = None  # live weights after the last optimiser step
        self.start_step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = trainer.global_step
        self.clipped_grad_norms: list[float] = []

        # A step *post* hook: Lightning clips inside the closure that optimizer.step runs, and the step leaves
        # the (clipped) gradients in place until the next zero_grad.
        def after_step(optimizer, args, kwargs):
            self.clipped_grad_norms.append(float(total_grad_norm(pl_module, trainer.strategy)))

        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(after_step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        latents = batch["latents"]  # (B, T, N_b, D_b)
        metrics = trainer.callback_metrics
        self.steps.append(
            {
                "global_step": trainer.global_step,  # after the optimiser step
                "batch_size": int(latents.shape[0]),
                "length": int(latents.shape[1]),
                "sequences": sequence_fingerprints(latents),
                "flow": float(metrics["train/flow"]) if "train/flow" in metrics else None,
                # logged by DynamicsModule before clipping
                "grad_norm": float(metrics["train/grad_norm"]) if "train/grad_norm" in metrics else None,
            }
        )
        self.live_checksum = weights_checksum(pl_module)
        if trainer.global_rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(os.path.join(self.out_dir, f"progress-run{self.run}.txt"), "a") as f:
                f.write(f"{trainer.global_step}\n")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self.validation_windows.extend(sequence_fingerprints(batch["latents"]))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.validations.append({"global_step": trainer.global_step, **logged})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        normalizer = pl_module.loss_normalizer
        record = {
            "rank": trainer.global_rank,
            "run": self.run,
            "world_size": trainer.world_size,
            "start_step": self.start_step,
            "final_step": trainer.global_step,
            "steps": self.steps,
            "validations": self.validations,
            "loss_rms": {name: float(normalizer.rms(name)) for name in normalizer.names()},
            "clipped_grad_norms": self.clipped_grad_norms,
            "weights_checksum": weights_checksum(pl_module),  # after fit: the weights to evaluate (EMA)
            "live_checksum": self.live_checksum,
            "validation_windows": self.validation_windows,
            "strategy": type(trainer.strategy).__name__,
        }
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, f"rank{trainer.global_rank}-run{self.run}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)


def rollout_from_checkpoint(path) -> pl.LightningModule:
    """Load a checkpoint weights-only, roll 2 frames out of random context and check shape and finiteness."""
    from dreamer_dynamics.module import DynamicsModule

    module = DynamicsModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    config = module.config
    context = torch.randn(2, 3, config.latent_tokens, config.latent_dim)
    actions = {}
    if config.num_discrete_actions:
        actions["actions_discrete"] = torch.zeros(2, 5, len(config.num_discrete_actions), dtype=torch.long)
    if config.num_continuous_actions:
        actions["actions_continuous"] = torch.zeros(2, 5, config.num_continuous_actions)
    frames = module.model.rollout(context, 2, num_steps=2, **actions)
    assert frames.shape == (2, 2, config.latent_tokens, config.latent_dim) and frames.isfinite().all()
    return module
