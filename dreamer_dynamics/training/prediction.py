"""``predict`` subcommand output: rollouts written to disk, one file per batch and rank, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from dreamer_dynamics.atomic import atomic_write


class RolloutWriter(BasePredictionWriter):
    """Writes each ``predict_step`` output (a dict of tensors) to ``output_dir``.

    File names: ``rollouts_rank{R}_batch{I:06d}.pt`` (a dict of CPU tensors, ``torch.load(weights_only=True)``
    safe) or, with ``format: npz``, ``.npz`` with the same keys. Each file is written to a temporary name and
    renamed, so a crashed or concurrent run never leaves a half-written file under the final name.
    Keys written by ``DynamicsModule.predict_step``: ``rollout`` [B, H, N_b, D_b] (generated clean latents),
    ``context`` [B, T_ctx, N_b, D_b], ``ground_truth`` [B, H', N_b, D_b] (the window's real future, H' <= H).
    """

    def __init__(self, output_dir: str = "predictions", format: Literal["pt", "npz"] = "pt") -> None:
        super().__init__(write_interval="batch")
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
        with atomic_write(final) as handle:
            if self.format == "pt":
                torch.save(tensors, handle)
            else:
                np.savez(handle, **{k: v.float().numpy() for k, v in tensors.items()})
