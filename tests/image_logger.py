"""A Lightning logger with a wandb-style ``log_image(key, images, step)``, for the any-logger picture test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger


class ImageListLogger(Logger):
    """Saves every image it is given as ``SAVE_DIR/{key}_{step}_{i}.npy``; ignores metrics."""

    def __init__(self, save_dir: str):
        super().__init__()
        self.directory = Path(save_dir)

    @property
    def name(self) -> str:
        return "images"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_image(self, key, images, step=None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            np.save(self.directory / f"{key.replace('/', '_')}_{step}_{i}.npy", np.asarray(image))
