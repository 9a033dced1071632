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
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from dreamer_dynamics.compat import logging_step


class LatentThroughputMonitor(pl.Callback):
    """Logs ``train/latent_tokens_per_s``: latent tokens (B x T x N_b, all ranks) per wall-clock second.

    Measured between consecutive training-batch ends, across epoch boundaries, so it includes data loading and
    the optimiser step: the number a user planning a run needs. Validation time is left out, and the first
    batch of a run (compilation, warm-up) is skipped.
    """

    def __init__(self, log_every_n_steps: int = 1) -> None:
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self._last_time: float | None = None
        self._tokens = 0
        self._validation_start: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_time, self._tokens = None, 0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_time is not None and self._validation_start is not None:
            self._last_time += time.perf_counter() - self._validation_start  # not training time
        self._validation_start = None

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
        if trainer.global_step % self.log_every_n_steps == 0:
            rate = self._tokens / max(now - self._last_time, 1e-9)
            pl_module.log(
                "train/latent_tokens_per_s", rate, on_step=True, on_epoch=False, rank_zero_only=True
            )
            self._last_time, self._tokens = now, 0


class RolloutImageLogger(pl.Callback):
    """Writes decoded rollouts beside the ground truth, once per validation, to every logger that takes images
    (``log_image``: TensorBoard, Weights & Biases, MLflow, or any logger with a wandb-style
    ``log_image(key, images, step)``), at the step of that validation's scalars.

    Uses ``trainer.datamodule.decoder`` (latents [..., N_b, D_b] -> images [..., H, W, 3] in [0, 1], from the
    dataset's codec); does nothing for datasets without a codec. The module's ``validation_step`` returns
    ``{"rollout_images": {"context": ..., "target": ..., "k4": ...}}`` for its rollout batches, in the
    dataset's own units: what the decoder reads. For each of the first ``max_sequences``
    contexts one labelled grid ``val/rollout_{i}`` is logged: rows = the context frames, the truth, then the
    rollouts with K = 1, 4 and k_max (those scored); columns = frames (at most ``max_frames``).
    """

    ROW_KEYS = (1, 4)  # and the largest K scored (k_max by default)

    def __init__(self, max_sequences: int = 4, max_frames: int = 8) -> None:
        self.max_sequences = max_sequences
        self.max_frames = max_frames
        self._pending: dict[str, torch.Tensor] | None = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending = None

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
        if self._pending is not None or not isinstance(outputs, dict) or "rollout_images" not in outputs:
            return
        rollouts = outputs["rollout_images"]
        self._pending = {key: value[: self.max_sequences].detach().cpu() for key, value in rollouts.items()}

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rollouts, self._pending = self._pending, None
        if trainer.sanity_checking or rollouts is None:
            return
        decoder = getattr(trainer.datamodule, "decoder", None) if trainer.datamodule is not None else None
        loggers = [lg for lg in trainer.loggers if takes_images(lg)]
        if decoder is None or not loggers:
            return
        step = logging_step(trainer)
        for index, image in enumerate(self.make_grids(rollouts, decoder)):
            for logger in loggers:
                log_image(logger, f"val/rollout_{index}", image, step)

    @torch.no_grad()
    def make_grids(self, rollouts: dict[str, torch.Tensor], decoder) -> list[torch.Tensor]:
        """Decoded, labelled image grids [rows*H, label + cols*W, 3] in [0, 1], one per sequence."""
        context, target = rollouts["context"], rollouts["target"]  # (B, T_ctx, N, D), (B, H, N, D)
        steps = sorted(int(k[1:]) for k in rollouts if k.startswith("k"))
        shown = [k for k in steps if k in self.ROW_KEYS or k == steps[-1]]
        rows = [("context", context), ("truth", target)] + [(f"K={k}", rollouts[f"k{k}"]) for k in shown]
        width = min(max(r.shape[1] for _, r in rows), self.max_frames)
        grids = []
        for b in range(min(self.max_sequences, context.shape[0])):
            strips = []
            for label, frames in rows:
                images = (
                    torch.as_tensor(decoder(frames[b, :width].float())).float().clamp(0, 1)
                )  # (T, H, W, C)
                strip = images.permute(1, 0, 2, 3).flatten(1, 2)  # (H, T*W, C)
                blank = strip.new_zeros(strip.shape[0], (width - images.shape[0]) * images.shape[2], 3)
                strips.append(labelled(torch.cat([strip, blank], 1), label))
            grids.append(torch.cat(strips, 0))  # (rows*H', label + cols*W, 3)
        return grids


def labelled(strip: torch.Tensor, label: str, scale: int = 1) -> torch.Tensor:
    """A row of frames [H, W, 3] in [0, 1], enlarged ``scale`` times, with ``label`` written to its left."""
    from PIL import Image, ImageDraw

    strip = strip.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    height = max(strip.shape[0], 12)
    canvas = Image.new("RGB", (56, height), (255, 255, 255))
    ImageDraw.Draw(canvas).text((2, (height - 10) // 2), label, fill=(0, 0, 0))
    text = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)  # (height, 56, 3)
    if strip.shape[0] < height:
        strip = torch.cat([strip, strip.new_ones(height - strip.shape[0], *strip.shape[1:])], 0)
    return torch.cat([text, strip], 1)


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
