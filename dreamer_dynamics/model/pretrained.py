"""Exported models: config JSON + safetensors weights, usable without Lightning (docs/model.md).

Layout of an export directory (format ``dreamer-dynamics-pretrained/1``)::

    DIR/config.json          # {"format", "model": DynamicsConfig fields, "latent_stats", "codec", "rollout"}
    DIR/model.safetensors    # DynamicsTransformer.state_dict(), float tensors as trained

``latent_stats`` (per-channel ``mean`` / ``std`` of the data, or null) let :meth:`DynamicsTransformer.rollout`
take and return the dataset's own units: the model was trained on standardised latents (docs/design.md §6).
``codec`` is the dataset's ``{"class_path", "init_args"}`` so rollouts can be decoded into pictures. Both
files are written to temporary names and renamed, config last.

This module imports only torch, safetensors and the model package: ``from_pretrained`` + ``rollout`` is the
inference path for users without Lightning.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .config import DynamicsConfig
from .rollout import check_context_shape
from .rollout import rollout as _rollout

PRETRAINED_FORMAT = "dreamer-dynamics-pretrained/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_ROLLOUT = {"num_steps": 4, "context_noise": 0.1}  # paper: K = 4, context noise 0.1 (design.md §5)


def _stats_to_json(stats: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    if stats is None:
        return None
    out = {k: torch.as_tensor(stats[k], dtype=torch.float64).reshape(-1).tolist() for k in ("mean", "std")}
    if "count" in stats:
        out["count"] = int(stats["count"])
    return out


def _umask_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the process umask (read by setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    latent_stats: Optional[dict[str, Any]] = None,
    codec: Optional[dict[str, Any]] = None,
    rollout: Optional[dict[str, Any]] = None,
) -> Path:
    """Write `model` to `directory` (created); latent_stats / codec default to the model's own attributes."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    latent_stats = latent_stats if latent_stats is not None else getattr(model, "latent_stats", None)
    codec = codec if codec is not None else getattr(model, "codec_spec", None)
    rollout = {**DEFAULT_ROLLOUT, **(getattr(model, "rollout_defaults", None) or {}), **(rollout or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": PRETRAINED_FORMAT,
        "model": dataclasses.asdict(model.config),
        "latent_stats": _stats_to_json(latent_stats),
        "codec": codec,
        "rollout": rollout,
    }
    tmp = directory / f".tmp-{WEIGHTS_FILE}-{os.getpid()}"
    save_file(state, str(tmp), metadata={"format": PRETRAINED_FORMAT})
    os.chmod(tmp, _umask_mode())  # safetensors creates 0600; every other output follows the umask
    os.replace(tmp, directory / WEIGHTS_FILE)
    tmp = directory / f".tmp-{CONFIG_FILE}-{os.getpid()}"
    tmp.write_text(json.dumps(config, indent=1))
    os.replace(tmp, directory / CONFIG_FILE)
    return directory


def load_pretrained(
    cls: type, directory: str | os.PathLike, *, device: str | torch.device = "cpu", **overrides: Any
) -> nn.Module:
    """Build `cls` from an export directory; `overrides` change DynamicsConfig fields (e.g.
    ``attention_backend="flex"``). The model comes back in eval mode with ``latent_stats``, ``codec_spec`` and
    ``rollout_defaults`` attached."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported model here (missing {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != PRETRAINED_FORMAT:
        raise ValueError(
            f"{path}: unsupported format {config.get('format') if isinstance(config, dict) else None!r}"
            f"; this reader knows {PRETRAINED_FORMAT!r}"
        )
    model = cls(DynamicsConfig(**{**config["model"], **overrides}))
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights file is missing")
    model.load_state_dict(load_file(str(weights), device=str(device)), strict=True)
    model.to(device).eval()
    stats = config.get("latent_stats")
    model.latent_stats = (
        None
        if stats is None
        else {k: torch.tensor(stats[k], dtype=torch.float32, device=device) for k in ("mean", "std")}
    )
    model.codec_spec = config.get("codec")
    model.rollout_defaults = {**DEFAULT_ROLLOUT, **(config.get("rollout") or {})}
    return model


@torch.no_grad()
def rollout_in_data_units(
    model: nn.Module,
    context: torch.Tensor,
    horizon: int,
    *,
    actions_discrete: Optional[torch.Tensor] = None,
    actions_continuous: Optional[torch.Tensor] = None,
    num_steps: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """``rollout`` in the dataset's units: context [B, T_ctx, N_b, D_b] is standardised with the model's
    ``latent_stats`` (if any), the generated frames [B, horizon, N_b, D_b] are mapped back."""
    defaults = {**DEFAULT_ROLLOUT, **(getattr(model, "rollout_defaults", None) or {})}
    stats = getattr(model, "latent_stats", None)
    check_context_shape(context, model.config)  # before standardising: the shapes, not a broadcast error
    if stats is not None:
        mean, std = (stats[k].to(context.device, context.dtype) for k in ("mean", "std"))  # (D_b,)
        context = (context - mean) / std
    out = _rollout(
        model,
        context,
        horizon,
        actions_discrete=actions_discrete,
        actions_continuous=actions_continuous,
        num_steps=num_steps or defaults["num_steps"],
        context_noise=defaults["context_noise"],
        generator=generator,
    )
    return out * std + mean if stats is not None else out
