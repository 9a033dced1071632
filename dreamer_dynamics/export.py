"""``dreamer-dynamics export CKPT DIR``: a training checkpoint -> an inference export (model/pretrained.py).

    dreamer-dynamics export runs/quickstart/checkpoints/last.ckpt exported/ [--weights ema|online]

The export holds the EMA weights by default (the averaged weights ``EMAWeightAveraging`` stores as the
checkpoint's ``state_dict``; the online weights are kept under ``current_model_state``), the latent units
the model was trained with (``hyper_parameters.latent_units``), its rollout defaults, and the dataset's
codec, read from the dataset the checkpoint was trained on (``--data-root`` points elsewhere if it moved).
The checkpoint is read with weights-only unpickling; Lightning is not imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from dreamer_dynamics.model import (
    DEFAULT_CONTEXT_NOISE,
    DEFAULT_ROLLOUT_STEPS,
    DynamicsConfig,
    DynamicsTransformer,
)
from dreamer_dynamics.units import latent_units_or_identity


def training_dataset_root(checkpoint: dict[str, Any], data_root: Optional[str] = None) -> Optional[Path]:
    """The dataset the checkpoint was trained on (`data_root` if given), None where it is not on disk; the
    built-in dataset is looked up in its cache, never generated."""
    from dreamer_dynamics.data.format import METADATA_FILE

    data = checkpoint.get("datamodule_hyper_parameters") or {}
    root = data_root or data.get("root")
    if root is None and "toy" in data:  # the built-in dataset: its cache path
        from dreamer_dynamics.data.default import ToyDatasetConfig, default_cache_dir, toy_dataset_key

        cache = Path(data["cache_dir"]) if data.get("cache_dir") else default_cache_dir()
        root = cache / toy_dataset_key(ToyDatasetConfig(**(data.get("toy") or {})))
    if root is None or not (Path(root) / METADATA_FILE).is_file():
        return None
    return Path(root)


def _dataset_codec(checkpoint: dict[str, Any], data_root: Optional[str]) -> Optional[dict[str, Any]]:
    """The codec spec of the training dataset, if that dataset can be found."""
    from dreamer_dynamics.data.codec import metadata_codec_spec
    from dreamer_dynamics.data.format import read_metadata

    root = training_dataset_root(checkpoint, data_root)
    if root is None:
        where = data_root or (checkpoint.get("datamodule_hyper_parameters") or {}).get("root")
        warnings.warn(
            f"export: training dataset {where} not found, so no codec is exported (pass --data-root)",
            stacklevel=2,
        )
        return None
    return metadata_codec_spec(read_metadata(root))


def load_checkpoint_model(
    checkpoint_path: str | os.PathLike, *, weights: str = "ema"
) -> tuple[DynamicsTransformer, dict[str, Any]]:
    """The network of a ``DynamicsModule`` checkpoint in eval mode with its ``latent_units`` and
    ``rollout_defaults`` attached (as ``DynamicsModule.__init__`` attaches them), and the checkpoint."""
    if weights not in ("ema", "online"):
        raise ValueError(f"export: weights must be 'ema' or 'online', got {weights!r}")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "model" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"{checkpoint_path}: not a DynamicsModule checkpoint (no hyper_parameters.model)")
    state = checkpoint["state_dict"]  # the EMA weights when EMAWeightAveraging ran
    if "current_model_state" not in checkpoint and weights == "ema":
        warnings.warn(
            f"{checkpoint_path}: no EMA weights (trained without EMAWeightAveraging); exporting the "
            "online weights",
            stacklevel=2,
        )
    if weights == "online":
        state = checkpoint.get("current_model_state", state)
    config = hparams["model"]
    config = DynamicsConfig(**config) if isinstance(config, dict) else config
    model = DynamicsTransformer(config)
    model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    # what DynamicsModule.__init__ attaches to its network from the same hyper-parameters
    where = f"{checkpoint_path}: hyper_parameters.latent_units"
    model.latent_units = latent_units_or_identity(hparams.get("latent_units"), config.latent_dim, where)
    model.rollout_defaults = {
        "num_steps": int(hparams.get("rollout_steps", DEFAULT_ROLLOUT_STEPS)),
        "context_noise": float(hparams.get("context_noise", DEFAULT_CONTEXT_NOISE)),
    }
    return model.eval(), checkpoint


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    directory: str | os.PathLike,
    *,
    weights: str = "ema",
    data_root: Optional[str] = None,
) -> Path:
    """Write the model of a ``DynamicsModule`` checkpoint as config JSON + safetensors to `directory`."""
    model, checkpoint = load_checkpoint_model(checkpoint_path, weights=weights)
    model.codec_spec = _dataset_codec(checkpoint, data_root)
    return model.save_pretrained(directory)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dreamer-dynamics export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", metavar="CKPT")
    parser.add_argument("directory", metavar="DIR")
    parser.add_argument("--weights", choices=("ema", "online"), default="ema")
    parser.add_argument("--data-root", help="dataset whose codec to export (default: the checkpoint's)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(
            args.checkpoint, args.directory, weights=args.weights, data_root=args.data_root
        )
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported {args.checkpoint} ({args.weights} weights) to {out}")
    return 0
