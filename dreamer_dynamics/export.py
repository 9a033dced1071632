"""``dreamer-dynamics export CKPT DIR``: a training checkpoint -> an inference export (model/pretrained.py).

    dreamer-dynamics export runs/quickstart/checkpoints/last.ckpt exported/ [--weights ema|online]

The export holds the EMA weights by default (the averaged weights ``EMAWeightAveraging`` stores as the
checkpoint's ``state_dict``; the online weights are kept under ``current_model_state``) once the EMA has
averaged at least once, else the online weights; the command says which it wrote. With them: the latent
units the model was trained with (``hyper_parameters.latent_units``), its rollout defaults, and the dataset's
codec, read from the dataset the checkpoint was trained on (``--data-root`` points elsewhere if it moved).
The checkpoint is read with weights-only unpickling; Lightning is not imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from dreamer_dynamics.field_docs import config_from
from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer, RolloutConfig
from dreamer_dynamics.units import latent_units_or_identity


def training_dataset_root(checkpoint: dict[str, Any], data_root: str | None = None) -> Path | None:
    """The dataset the checkpoint was trained on (`data_root` if given), None where it is not on disk; the
    built-in dataset is looked up in its cache, never generated."""
    from dreamer_dynamics.data.reading.format import METADATA_FILE

    data = checkpoint.get("datamodule_hyper_parameters") or {}
    root = data_root or data.get("root")
    if root is None and "toy" in data:  # the built-in dataset: its cache path
        from dreamer_dynamics.data.building.worlds import default_cache_dir, toy_config, toy_dataset_key

        cache = Path(data["cache_dir"]) if data.get("cache_dir") else default_cache_dir()
        root = cache / toy_dataset_key(toy_config(data.get("world") or "deterministic", data.get("toy")))
    if root is None or not (Path(root) / METADATA_FILE).is_file():
        return None
    return Path(root)


def _dataset_codec(checkpoint: dict[str, Any], data_root: str | None) -> dict[str, Any] | None:
    """The codec spec of the training dataset, if that dataset can be found."""
    from dreamer_dynamics.data.reading.format import read_metadata

    root = training_dataset_root(checkpoint, data_root)
    if root is None:
        where = data_root or (checkpoint.get("datamodule_hyper_parameters") or {}).get("root")
        warnings.warn(
            f"export: training dataset {where} not found, so no codec is exported (pass --data-root)",
            stacklevel=2,
        )
        return None
    return read_metadata(root).codec


def select_weights(
    checkpoint: dict[str, Any], weights: str, where: Any
) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, "EMA" or "online"): which weights ``--weights`` gets from this checkpoint. The EMA's
    only once it averaged at least once (``averaging_state.n_averaged`` > 0); before that ``state_dict``
    holds the online weights (training/ema.py), and a run without EMA has only those."""
    state = checkpoint["state_dict"]
    live = checkpoint.get("current_model_state")
    averaged = (checkpoint.get("averaging_state") or {}).get("n_averaged")
    started = live is not None and averaged is not None and int(averaged) > 0
    if weights == "online":
        return (live if live is not None else state), "online"
    if live is None:
        warnings.warn(
            f"{where}: no EMA weights (trained without EMAWeightAveraging); exporting the online weights",
            stacklevel=3,
        )
    return state, "EMA" if started else "online"


def load_checkpoint_model(
    checkpoint_path: str | os.PathLike, *, weights: str = "ema"
) -> tuple[DynamicsTransformer, dict[str, Any], str]:
    """The network of a ``DynamicsModule`` checkpoint in eval mode with its ``latent_units`` and
    ``rollout_defaults`` attached (as ``DynamicsModule.__init__`` attaches them), the checkpoint, and which
    weights it holds ("EMA" or "online", ``select_weights``)."""
    if weights not in ("ema", "online"):
        raise ValueError(f"export: weights must be 'ema' or 'online', got {weights!r}")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "model" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"{checkpoint_path}: not a DynamicsModule checkpoint (no hyper_parameters.model)")
    state, written = select_weights(checkpoint, weights, checkpoint_path)
    config = config_from(DynamicsConfig, hparams["model"], f"{checkpoint_path}: hyper_parameters.model")
    model = DynamicsTransformer(config)
    model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    # what DynamicsModule.__init__ attaches to its network from the same hyper-parameters
    where = f"{checkpoint_path}: hyper_parameters.latent_units"
    model.latent_units = latent_units_or_identity(hparams.get("latent_units"), config.latent_dim, where)
    model.rollout_defaults = config_from(RolloutConfig, hparams.get("rollout"), f"{checkpoint_path}: rollout")
    return model.eval(), checkpoint, written


def export(
    checkpoint_path: str | os.PathLike,
    directory: str | os.PathLike,
    *,
    weights: str = "ema",
    data_root: str | None = None,
) -> tuple[Path, str]:
    """``export_checkpoint``, also returning which weights were written ("EMA" or "online")."""
    model, checkpoint, written = load_checkpoint_model(checkpoint_path, weights=weights)
    model.codec_spec = _dataset_codec(checkpoint, data_root)
    return model.save_pretrained(directory), written


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    directory: str | os.PathLike,
    *,
    weights: str = "ema",
    data_root: str | None = None,
) -> Path:
    """Write the model of a ``DynamicsModule`` checkpoint as config JSON + safetensors to `directory`."""
    return export(checkpoint_path, directory, weights=weights, data_root=data_root)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dreamer-dynamics export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", metavar="CKPT")
    parser.add_argument("directory", metavar="DIR")
    parser.add_argument("--weights", choices=("ema", "online"), default="ema")
    parser.add_argument("--data-root", help="dataset whose codec to export (default: the checkpoint's)")
    args = parser.parse_args(argv)
    try:
        out, written = export(args.checkpoint, args.directory, weights=args.weights, data_root=args.data_root)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    why = " (the EMA had not started averaging)" if args.weights == "ema" and written == "online" else ""
    print(f"exported {args.checkpoint} ({written} weights{why}) to {out}")
    return 0
