"""Checkpoints and data, reconciled before anything is built (used by the ``dreamer-dynamics`` CLI).

* ``--ckpt_path last`` -> the newest ``*.ckpt`` under the run directory (``trainer.default_root_dir``).
* * A checkpoint records its dataset's fingerprint (``DynamicsDataModule.state_dict``,
  data/reading/fingerprint.py) and the network's data spec (``hyper_parameters.model``). Given only
  ``--ckpt_path`` (no ``--data.root``), a run uses the recorded dataset; a dataset whose latent shape or
  action spec differs from the network's is refused with one line naming both sides, before any weight is
  loaded or any log folder exists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from dreamer_dynamics.data.reading.fingerprint import spec_mismatch, spec_of
from dreamer_dynamics.errors import ConfigError


def find_last_checkpoint(root: str | os.PathLike) -> Path:
    """The most recently written ``*.ckpt`` below ``root`` (``last.ckpt``, step checkpoints, SLURM's
    ``hpc_ckpt_*``); ties go to ``last.ckpt``. ConfigError when there is none."""
    root = Path(root)
    found = [p for p in root.rglob("*.ckpt") if p.is_file()] if root.is_dir() else []
    if not found:
        raise ConfigError(f"--ckpt_path last: no *.ckpt under {root} (trainer.default_root_dir); pass a path")
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))


def log_version_of(checkpoint: Path, save_dir: str | os.PathLike, name: str) -> int | None:
    """N when ``checkpoint`` lies in ``<save_dir>/<name>/version_N/`` (the default ModelCheckpoint place)."""
    try:
        relative = checkpoint.resolve().relative_to((Path(save_dir) / (name or "")).resolve())
    except ValueError:
        return None
    match = re.fullmatch(r"version_(\d+)", relative.parts[0]) if len(relative.parts) > 1 else None
    return int(match.group(1)) if match else None


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """The run directory of a checkpoint: ``<run>`` for ``<run>/<logger>/version_N/checkpoints/x.ckpt``
    and ``<run>/checkpoints/x.ckpt`` (Lightning's places), else the checkpoint's own folder."""
    folder = Path(checkpoint).resolve().parent
    if folder.name == "checkpoints":
        folder = folder.parent
    if re.fullmatch(r"version_\d+", folder.name):
        folder = folder.parent.parent
    return folder


def read_checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """{"model": DynamicsConfig dict or None, "fingerprint": dataset fingerprint or None, "data": the
    DataModule's hyper-parameters or None}, read with weights-only unpickling (memory-mapped: no weights are
    read into RAM)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one clear line
        raise ConfigError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    fingerprint = None
    for value in checkpoint.values():  # DataModule state is stored under its class name
        if isinstance(value, dict) and isinstance(value.get("dataset_fingerprint"), dict):
            fingerprint = value["dataset_fingerprint"]
            break
    model = (checkpoint.get("hyper_parameters") or {}).get("model")
    return {
        "model": model if isinstance(model, dict) else None,
        "fingerprint": fingerprint,
        "data": checkpoint.get("datamodule_hyper_parameters"),
    }


def check_spec(
    checkpoint: str | os.PathLike,
    model: dict | None,
    data_root: str | os.PathLike,
    data_spec: dict[str, Any],
) -> None:
    """ConfigError naming both sides when the network in ``checkpoint`` was built for other data."""
    if model is None:
        return
    problem = spec_mismatch(spec_of(model), data_spec, what=f"checkpoint {checkpoint}", where=str(data_root))
    if problem:
        raise ConfigError(problem + " (pass the --data.root the checkpoint was trained on)")


__all__ = ["check_spec", "find_last_checkpoint", "log_version_of", "read_checkpoint_info", "run_dir_of"]
