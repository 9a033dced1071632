"""Lightning callbacks: latent-token throughput and decoded rollout images for TensorBoard.

Gradient-norm logging lives in ``DynamicsModule.on_before_optimizer_step`` (it needs the strategy to reduce
sharded FSDP gradients); EMA is ``training.ema.EMA`` (Lightning's ``EMAWeightAveraging``, safe at every stop);
progress bars are Lightning's ``TQDMProgressBar``.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


class LatentThroughputMonitor(pl.Callback):
    """Logs ``train/latent_tokens_per_s``: latent tokens (B x T x N_b, all ranks) per wall-clock second.

    Measured between consecutive training-batch ends, so it includes data loading and the optimiser step: the
    number a user planning a run needs. The first batch (compilation, warm-up) is skipped.
    """

    def __init__(self, log_every_n_steps: int = 1) -> None:
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self._last_time: float | None = None
        self._tokens = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_time, self._tokens = None, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        latents = batch["latents"]  # (B, T, N_b, D_b)
        self._tokens += latents.shape[0] * latents.shape[1] * latents.shape[2] * trainer.world_size
        if latents.is_cuda:
            torch.cuda.synchronize(latents.device)  # time the work, not the kernel launches
        now = time.perf_counter()
        if self._last_time is None:
            self._last_time, self._tokens = now, 0
            return
        if (batch_idx + 1) % self.log_every_n_steps == 0:
            rate = self._tokens / max(now - self._last_time, 1e-9)
            pl_module.log("train/latent_tokens_per_s", rate, on_step=True, on_epoch=False,
                          rank_zero_only=True)
            self._last_time, self._tokens = now, 0


class RolloutImageLogger(pl.Callback):
    """Writes decoded rollout frames beside the ground truth to TensorBoard after each validation.

    Uses ``trainer.datamodule.decoder`` (latents [..., N_b, D_b] -> images [..., H, W, 3] in [0, 1]); does
    nothing for datasets without a decoder or without a TensorBoard logger. The module's ``validation_step``
    returns ``{"rollout_images": {"context": ..., "target": ..., "k4": ...}}`` for its first batch.
    For each of the first ``max_sequences`` sequences one image is logged: rows = ground truth, then one row
    per rollout step count K; columns = the last context frame followed by the generated horizon.
    """

    def __init__(self, max_sequences: int = 4, max_frames: int = 8) -> None:
        self.max_sequences = max_sequences
        self.max_frames = max_frames

    @rank_zero_only
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not isinstance(outputs, dict) or "rollout_images" not in outputs:
            return
        decoder = getattr(trainer.datamodule, "decoder", None) if trainer.datamodule is not None else None
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if decoder is None or not loggers:
            return
        for index, image in enumerate(self.make_grids(outputs["rollout_images"], decoder)):
            for logger in loggers:
                logger.experiment.add_image(
                    f"val/rollout_{index}", image, global_step=trainer.global_step, dataformats="HWC"
                )

    @torch.no_grad()
    def make_grids(self, rollouts: dict[str, torch.Tensor], decoder) -> list[torch.Tensor]:
        """Decoded image grids [rows*H, cols*W, 3] in [0, 1], one per sequence."""
        context, target = rollouts["context"], rollouts["target"]  # (B, T_ctx, N, D), (B, H, N, D)
        keys = sorted((k for k in rollouts if k.startswith("k")), key=lambda k: int(k[1:]))
        horizon = min(target.shape[1], self.max_frames)
        last = context[:, -1:]
        rows = [torch.cat([last, target[:, :horizon]], 1)]
        rows += [torch.cat([last, rollouts[k][:, :horizon]], 1) for k in keys]
        grids = []
        for b in range(min(self.max_sequences, context.shape[0])):
            frames = torch.stack([row[b] for row in rows])  # (rows, cols, N, D)
            images = torch.as_tensor(decoder(frames.float().cpu())).float().clamp(0, 1)  # (R, cols, H, W, C)
            grid = images.permute(0, 2, 1, 3, 4).flatten(2, 3).flatten(0, 1)  # (rows*H, cols*W, 3)
            grids.append(grid)
        return grids
