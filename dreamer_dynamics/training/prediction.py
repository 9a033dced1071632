"""``predict`` subcommand output: rollouts written to disk, one set of files per batch and rank, atomically.

With a decoder (``trainer.datamodule.decoder``: latents [..., N_b, D_b] -> images [..., H, W, 3] in [0, 1],
e.g. the built-in patch codec) every sequence is also written as pictures: a PNG grid (rows: the rollout, and
the ground truth where the window has one; columns: context frames then generated frames) and an animated GIF.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from dreamer_dynamics.atomic import atomic_write


class RolloutWriter(BasePredictionWriter):
    """Writes each ``predict_step`` output (a dict of tensors) under ``output_dir``.

    Formats (``format``): ``npy`` (default) -- one ``{name}.{key}.npy`` per key; ``npz`` -- one ``{name}.npz``
    with every key; ``pt`` -- one ``{name}.pt`` dict of CPU tensors (``torch.load(weights_only=True)`` safe).
    ``name`` is ``rollouts_rank{R}_batch{I:06d}``. Keys written by ``DynamicsModule.predict_step``:
    ``rollout`` [B, H, N_b, D_b] (generated clean latents), ``context`` [B, T_ctx, N_b, D_b],
    ``ground_truth`` [B, H', N_b, D_b] (the window's real future, when it has one) and the actions used. Every
    file is written to a temporary name and renamed, so a crashed or concurrent run never leaves a
    half-written file.

    Args:
        output_dir: where to write; None = ``<trainer.default_root_dir>/predictions/version_N``, a new N for
            every ``predict``.
        format: ``npy``, ``npz`` or ``pt``.
        pictures: also write ``{name}.seq{b}.png`` and ``.gif`` where the data has a decoder.
        max_pictures: most sequences per batch written as pictures.
        gif_ms_per_frame: GIF frame duration in milliseconds.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        format: Literal["npy", "npz", "pt"] = "npy",
        pictures: bool = True,
        max_pictures: int = 4,
        gif_ms_per_frame: int = 150,
    ) -> None:
        super().__init__(write_interval="batch")
        if format not in ("npy", "npz", "pt"):
            raise ValueError(f"RolloutWriter: format must be 'npy', 'npz' or 'pt', got {format!r}")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.format = format
        self.pictures = pictures
        self.max_pictures = max_pictures
        self.gif_ms_per_frame = gif_ms_per_frame
        self._run_dir: Path | None = None
        self._written = {"windows": 0, "pictures": 0}  # this rank's, for the closing line

    def resolved_dir(self, trainer: pl.Trainer) -> Path:
        """``output_dir``, else this run's own ``<default_root_dir>/predictions/version_N`` (the first free N,
        chosen on rank 0 when ``predict`` starts: a second ``predict`` never overwrites the first)."""
        if self.output_dir is not None:
            return self.output_dir
        if self._run_dir is None:
            base = Path(trainer.default_root_dir) / "predictions"
            taken = [int(p.name[8:]) for p in base.glob("version_*") if p.name[8:].isdigit()]
            version = trainer.strategy.broadcast(max(taken, default=-1) + 1)
            self._run_dir = base / f"version_{version}"
        return self._run_dir

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_dir, self._written = None, {"windows": 0, "pictures": 0}
        self.resolved_dir(trainer)  # every rank together (a broadcast)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        written, out = self._written, self.resolved_dir(trainer)
        pictures = f", {written['pictures']} PNG + GIF pictures" if written["pictures"] else ""
        rank_zero_info(f"predict: {written['windows']} rollouts ({self.format}{pictures}) in {out}")

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
        out = self.resolved_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu() for k, v in prediction.items() if isinstance(v, torch.Tensor)}
        name = f"rollouts_rank{trainer.global_rank}_batch{batch_idx:06d}"
        if dataloader_idx:
            name = f"rollouts_rank{trainer.global_rank}_dl{dataloader_idx}_batch{batch_idx:06d}"
        if self.format == "pt":
            _atomic_write(out / f"{name}.pt", lambda f: torch.save(tensors, f))
        elif self.format == "npz":
            arrays = {k: _numpy(v) for k, v in tensors.items()}
            _atomic_write(out / f"{name}.npz", lambda f: np.savez(f, **arrays))
        else:
            for key, value in tensors.items():
                _atomic_write(out / f"{name}.{key}.npy", lambda f, v=value: np.save(f, _numpy(v)))
        self._written["windows"] += len(next(iter(tensors.values()))) if tensors else 0
        decoder = getattr(trainer.datamodule, "decoder", None) if trainer.datamodule is not None else None
        if self.pictures and decoder is not None and "rollout" in tensors:
            self.write_pictures(out, name, tensors, decoder)
            self._written["pictures"] += min(self.max_pictures, tensors["rollout"].shape[0])

    def write_pictures(
        self, out: Path, name: str, tensors: dict[str, torch.Tensor], decoder: Callable
    ) -> None:
        """PNG grid and GIF per sequence: context frames then the rollout (beside the ground truth if any)."""
        from PIL import Image  # only needed for pictures

        rollout = tensors["rollout"].float()  # (B, H, N_b, D_b)
        context = tensors.get("context", rollout[:, :0]).float()  # (B, T_ctx, N_b, D_b)
        truth = tensors.get("ground_truth")
        for b in range(min(self.max_pictures, rollout.shape[0])):
            generated = _to_uint8(decoder(torch.cat([context[b], rollout[b]], 0)))  # (T, H, W, 3)
            rows = [generated]
            if truth is not None and truth.shape[1] > 0:
                real = _to_uint8(decoder(torch.cat([context[b], truth[b].float()], 0)))
                frames = min(len(real), len(generated))
                rows = [generated[:frames], real[:frames]]
            strips = [np.concatenate(list(row), axis=1) for row in rows]  # each (H, T*W, 3)
            grid = np.concatenate(strips, axis=0)  # (R*H, T*W, 3)
            png = out / f"{name}.seq{b}.png"
            _atomic_write(png, lambda f, g=grid: Image.fromarray(g).save(f, format="PNG"))
            # GIF: each frame shows rollout (left) beside ground truth (right) where there is one
            side = np.concatenate(rows, axis=2)  # (T, H, R*W, 3)
            images = [Image.fromarray(np.repeat(np.repeat(f, 4, 0), 4, 1)) for f in side]  # 4x: visible sizes
            _atomic_write(
                out / f"{name}.seq{b}.gif",
                lambda f, im=images: im[0].save(
                    f,
                    format="GIF",
                    save_all=True,
                    append_images=im[1:],
                    duration=self.gif_ms_per_frame,
                    loop=0,
                ),
            )


def _numpy(value: torch.Tensor) -> np.ndarray:
    return value.numpy() if value.dtype in (torch.int64, torch.int32, torch.bool) else value.float().numpy()


def _to_uint8(images: Any) -> np.ndarray:
    array = torch.as_tensor(images).float().clamp(0, 1).numpy()
    return (array * 255 + 0.5).astype(np.uint8)


def _atomic_write(final: Path, write: Callable[[Any], None]) -> None:
    """``write(handle)`` into ``final`` through ``atomic_write`` (complete or absent, never half-written)."""
    with atomic_write(final) as handle:
        write(handle)
