"""Lightning callbacks: latent-token throughput and decoded rollout images for every image-capable logger.

Gradient-norm logging lives in ``DynamicsModule.on_before_optimizer_step`` (``parallelize.total_grad_norm``
needs the strategy to reduce sharded FSDP gradients); EMA is ``training.ema.EMA`` (Lightning's
``EMAWeightAveraging``, safe at every stop);
progress bars are Lightning's ``TQDMProgressBar``.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
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
            pl_module.log(
                "train/latent_tokens_per_s", rate, on_step=True, on_epoch=False, rank_zero_only=True
            )
            self._last_time, self._tokens = now, 0


class RolloutImageLogger(pl.Callback):
    """Writes decoded rollout frames beside the ground truth to every logger that takes images (``log_image``:
    TensorBoard, Weights & Biases, MLflow, or any logger with a wandb-style ``log_image(key, images, step)``).

    Uses ``trainer.datamodule.decoder`` (latents [..., N_b, D_b] -> images [..., H, W, 3] in [0, 1], from the
    dataset's codec); does nothing for datasets without a codec. The module's ``validation_step``
    returns ``{"rollout_images": {"context": ..., "target": ..., "k4": ...}}`` for its first batch, in model
    units like the batches; they are mapped back to the dataset's units (``pl_module.destandardize``)
    before decoding, since the decoder reads what the encoder wrote.
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
        loggers = [lg for lg in trainer.loggers if takes_images(lg)]
        if decoder is None or not loggers:
            return
        destandardize = getattr(pl_module, "destandardize", None)
        rollouts = outputs["rollout_images"]
        if destandardize is not None:
            rollouts = {key: destandardize(value) for key, value in rollouts.items()}
        for index, image in enumerate(self.make_grids(rollouts, decoder)):
            for logger in loggers:
                log_image(logger, f"val/rollout_{index}", image, trainer.global_step)

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


def takes_images(logger: Logger) -> bool:
    if isinstance(logger, (TensorBoardLogger, MLFlowLogger)):
        return True
    return callable(getattr(logger, "log_image", None))


def log_image(logger: Logger, tag: str, image: torch.Tensor, step: int) -> None:
    """One image [H, W, C] in [0, 1] through `logger`'s own image API."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
        return
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # (H, W, C)
    if isinstance(logger, MLFlowLogger):  # an artifact per step: MLflow has no image time series
        logger.experiment.log_image(logger.run_id, pixels, f"{tag}/step_{step:07d}.png")
    else:  # WandbLogger and any logger with the same signature
        logger.log_image(key=tag, images=[pixels], step=step)
