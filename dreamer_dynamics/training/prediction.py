"""``predict`` subcommand output: rollouts written to disk, one file per batch and rank, atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class RolloutWriter(BasePredictionWriter):
    """Writes each ``predict_step`` output (a dict of tensors) to ``output_dir``.

    File names: ``rollouts_rank{R}_batch{I:06d}.pt`` (a dict of CPU tensors, ``torch.load(weights_only=True)``
    safe) or, with ``format: npz``, ``.npz`` with the same keys. Each file is written to a temporary name and
    renamed, so a crashed or concurrent run never leaves a half-written file under the final name.
    Keys written by ``DynamicsModule.predict_step``: ``rollout`` [B, H, N_b, D_b] (generated clean latents),
    ``context`` [B, T_ctx, N_b, D_b], ``ground_truth`` [B, H', N_b, D_b] (the window's real future, H' <= H).
    With ``images: true`` and a dataset codec (``datamodule.decoder``), the generated frames are also decoded
    to ``images/{name}/seq{B:03d}/frame{H:03d}.png``.
    """

    def __init__(self, output_dir: str = "predictions", format: Literal["pt", "npz"] = "pt",
                 images: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.images = images
        if format not in ("pt", "npz"):
            raise ValueError(f"RolloutWriter: format must be 'pt' or 'npz', got {format!r}")
        self.output_dir = Path(output_dir)
        self.format = format

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(prediction, dict):
            raise TypeError(f"RolloutWriter: predict_step must return a dict, got {type(prediction)}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu() for k, v in prediction.items() if isinstance(v, torch.Tensor)}
        name = f"rollouts_rank{trainer.global_rank}_batch{batch_idx:06d}"
        if dataloader_idx:
            name = f"rollouts_rank{trainer.global_rank}_dl{dataloader_idx}_batch{batch_idx:06d}"
        final = self.output_dir / f"{name}.{self.format}"
        tmp = self.output_dir / f".{name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as handle:
            if self.format == "pt":
                torch.save(tensors, handle)
            else:
                np.savez(handle, **{k: v.float().numpy() for k, v in tensors.items()})
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        decoder = getattr(trainer.datamodule, "decoder", None) if trainer.datamodule is not None else None
        if self.images and decoder is not None and "rollout" in tensors:
            write_pngs(self.output_dir / "images" / name, decoder(tensors["rollout"].float()))


def write_pngs(directory: Path, images: torch.Tensor) -> None:
    """images [B, H, height, width, C] in [0, 1] -> directory/seq{b}/frame{t}.png (8-bit, atomic renames)."""
    from PIL import Image

    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for b, sequence in enumerate(pixels):
        folder = directory / f"seq{b:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(sequence):
            final = folder / f"frame{t:03d}.png"
            tmp = folder / f".frame{t:03d}.{os.getpid()}.tmp"
            Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(tmp, format="PNG")
            os.replace(tmp, final)
