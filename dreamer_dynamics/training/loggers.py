"""TensorBoard logging under the run directory: ``save_dir`` defaults to ``trainer.default_root_dir``.

Lightning's ``TensorBoardLogger`` requires ``save_dir``, so a config that names one pins its logs there,
whatever ``--trainer.default_root_dir`` says. This subclass leaves it unset (None); the
``dreamer-dynamics`` CLI fills in ``default_root_dir`` before building it (outside the CLI, None means the
working directory), so one setting moves logs, checkpoints (the logger's version folder) and predictions.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger


class RunDirTensorBoardLogger(TensorBoardLogger):
    """``TensorBoardLogger`` with ``save_dir`` optional (None = ``default_root_dir`` via the CLI, else ".").

    Args:
        save_dir: root of the logs; None = the run directory (``trainer.default_root_dir``).
        name: experiment folder below ``save_dir``.
        version: version number or folder name; None = the next free ``version_N``.
        default_hp_metric: log a placeholder ``hp_metric`` (off: it clutters TensorBoard's HParams tab).
        kwargs: the other ``TensorBoardLogger`` arguments.
    """

    def __init__(
        self,
        save_dir: str | None = None,
        name: str | None = "tensorboard",
        version: int | str | None = None,
        default_hp_metric: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            save_dir if save_dir is not None else ".",
            name=name,
            version=version,
            default_hp_metric=default_hp_metric,
            **kwargs,
        )


__all__ = ["RunDirTensorBoardLogger"]
