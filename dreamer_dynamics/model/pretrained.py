"""Exported models: config JSON + safetensors weights, usable without Lightning (docs/model.md).

Layout of an export directory (format ``dreamer-dynamics-pretrained/1``)::

    DIR/config.json          # {"format", "model": DynamicsConfig fields, "latent_units", "codec", "rollout"}
    DIR/model.safetensors    # DynamicsTransformer.state_dict(), float tensors as trained

``latent_units`` (``LatentUnits.to_dict()``: the per-channel ``mean`` and ``std`` the model was trained with)
let :meth:`DynamicsTransformer.rollout` take and return the dataset's own units: the model was trained on
standardised latents (docs/design.md §6). ``codec`` is the dataset's ``{"class_path", "init_args"}`` so
rollouts can be decoded into pictures. Both files are written to temporary names and renamed, config last.

This module imports only torch, safetensors, the model package, ``dreamer_dynamics.units`` and
``dreamer_dynamics.field_docs``:
``from_pretrained`` + ``rollout`` is the inference path for users without Lightning.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dreamer_dynamics.field_docs import config_from
from dreamer_dynamics.units import LatentUnits, latent_units_or_identity

from .config import DynamicsConfig
from .rollout import RolloutConfig

PRETRAINED_FORMAT = "dreamer-dynamics-pretrained/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _umask_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the process umask (read by setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    latent_units: LatentUnits | None = None,
    codec: dict[str, Any] | None = None,
    rollout: RolloutConfig | dict | None = None,
) -> Path:
    """Write `model` to `directory` (created); latent_units / codec / rollout default to the model's own
    ``latent_units`` / ``codec_spec`` / ``rollout_defaults``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    units = latent_units_or_identity(
        latent_units if latent_units is not None else getattr(model, "latent_units", None),
        model.config.latent_dim,
        "save_pretrained: latent_units",
    )
    codec = codec if codec is not None else getattr(model, "codec_spec", None)
    rollout = config_from(RolloutConfig, rollout or getattr(model, "rollout_defaults", None), "rollout")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": PRETRAINED_FORMAT,
        "model": dataclasses.asdict(model.config),
        "latent_units": units.to_dict(),
        "codec": codec,
        "rollout": dataclasses.asdict(rollout),
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
    ``attention_backend="flex"``). The model comes back in eval mode with ``latent_units``, ``codec_spec``
    and ``rollout_defaults`` attached."""
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
    model.latent_units = latent_units_or_identity(
        config.get("latent_units"), model.config.latent_dim, f"{path}: latent_units"
    )
    model.codec_spec = config.get("codec")
    model.rollout_defaults = config_from(RolloutConfig, config.get("rollout"), f"{path}: rollout")
    return model
