"""``dreamer-dynamics export CKPT DIR``: a training checkpoint -> an inference export (model/pretrained.py).

    dreamer-dynamics export runs/quickstart/checkpoints/last.ckpt exported/ [--weights ema|online]

The export holds the EMA weights by default (the averaged weights ``EMAWeightAveraging`` stores as the
checkpoint's ``state_dict``; the online weights are kept under ``current_model_state``) once the EMA has
averaged at least once, else the online weights; the command says which it wrote, the latent
statistics the model was trained with, and the dataset's codec, read from the dataset the checkpoint was
trained on (``--data-root`` points elsewhere if it moved). The checkpoint is read with weights-only
unpickling; Lightning is not imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer


def _latent_stats(hparams: dict[str, Any], state: dict[str, torch.Tensor]) -> Optional[dict[str, Any]]:
    """The (mean, std) the module standardised with, exactly what the checkpoint's own rollout uses: its
    ``latent_mean`` / ``latent_std`` buffers where the state holds them, else ``standardization`` of its
    ``latent_stats`` hyperparameter (which applies the record's pooled or per-channel scale)."""
    from dreamer_dynamics.data.stats import standardization

    stats = hparams.get("latent_stats")
    count = {"count": stats["count"]} if isinstance(stats, dict) and "count" in stats else {}
    if "latent_mean" in state and "latent_std" in state:
        return {"mean": state["latent_mean"], "std": state["latent_std"], **count}
    if stats is None:
        return None
    mean, std = standardization(stats)
    return {"mean": mean.tolist(), "std": std.tolist(), **count}


def _dataset_codec(checkpoint: dict[str, Any], data_root: Optional[str]) -> Optional[dict[str, Any]]:
    """The codec spec of the training dataset, if that dataset can be found."""
    from dreamer_dynamics.data.codec import metadata_codec_spec
    from dreamer_dynamics.data.format import METADATA_FILE, read_metadata

    data = checkpoint.get("datamodule_hyper_parameters") or {}
    root = data_root or data.get("root")
    if root is None and "toy" in data:  # the built-in dataset: its cache path, without generating it
        from dreamer_dynamics.data.default import default_cache_dir, toy_config, toy_dataset_key

        cache = Path(data["cache_dir"]) if data.get("cache_dir") else default_cache_dir()
        root = cache / toy_dataset_key(toy_config(data.get("world") or "deterministic", data.get("toy")))
    if root is None or not (Path(root) / METADATA_FILE).is_file():
        warnings.warn(
            f"export: training dataset {root} not found, so no codec is exported (pass --data-root)",
            stacklevel=2,
        )
        return None
    return metadata_codec_spec(read_metadata(root))


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


def export(
    checkpoint_path: str | os.PathLike,
    directory: str | os.PathLike,
    *,
    weights: str = "ema",
    data_root: Optional[str] = None,
) -> tuple[Path, str]:
    """``export_checkpoint``, also returning which weights were written ("EMA" or "online")."""
    if weights not in ("ema", "online"):
        raise ValueError(f"export: weights must be 'ema' or 'online', got {weights!r}")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "model" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"{checkpoint_path}: not a DynamicsModule checkpoint (no hyper_parameters.model)")
    state, written = select_weights(checkpoint, weights, checkpoint_path)
    config = hparams["model"]
    config = DynamicsConfig(**config) if isinstance(config, dict) else config
    model = DynamicsTransformer(config)
    model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    rollout = {
        "num_steps": int(hparams.get("rollout_steps", 4)),
        "context_noise": float(hparams.get("context_noise", 0.1)),
    }
    out = model.save_pretrained(
        directory,
        latent_stats=_latent_stats(hparams, state),
        codec=_dataset_codec(checkpoint, data_root),
        rollout=rollout,
    )
    return out, written


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    directory: str | os.PathLike,
    *,
    weights: str = "ema",
    data_root: Optional[str] = None,
) -> Path:
    """Write the model of a ``DynamicsModule`` checkpoint as config JSON + safetensors to `directory`."""
    return export(checkpoint_path, directory, weights=weights, data_root=data_root)[0]


def main(argv: Optional[list[str]] = None) -> int:
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
