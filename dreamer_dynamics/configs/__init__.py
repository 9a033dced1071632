"""The packaged LightningCLI configs: the one source of every preset.

``dreamer-dynamics fit --config quickstart`` resolves the bare name to
``dreamer_dynamics/configs/quickstart.yaml`` (installed with the package); the repository's
``lightning_configs/*.yaml`` are symlinks to these files, so ``--config lightning_configs/quickstart.yaml``
reads the same bytes. ``DynamicsConfig.preset(name)`` builds the model of a config from its ``model.model``
section on top of the dataclass defaults, which are the quickstart sizes: change a preset in its YAML (or
the quickstart sizes in ``DynamicsConfig``) and both paths follow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from dreamer_dynamics.errors import ConfigError, did_you_mean

CONFIG_DIR = Path(__file__).resolve().parent


def available_configs() -> list[str]:
    """Names accepted by ``--config NAME`` (file stems of the packaged YAMLs)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name: str) -> Path:
    """Path of the packaged config ``name`` (``quickstart`` or ``quickstart.yaml``)."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = CONFIG_DIR / f"{stem}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no packaged config {name!r}; available: {', '.join(available_configs())}")
    return path


def resolve_config_arg(value: str) -> str:
    """``--config`` value -> a path: an existing file is kept, a bare packaged name becomes its path; a bare
    name that is neither is a ConfigError listing the packaged configs."""
    if os.path.exists(value) or any(c in value for c in (os.sep, "/", ":", "{", "\n")):
        return value  # a path (a missing one is reported by the parser) or an inline YAML/JSON config
    try:
        return str(config_path(value))
    except FileNotFoundError:
        names = available_configs()
        stem = value[: -len(".yaml")] if value.endswith(".yaml") else value
        raise ConfigError(
            f"--config {value}: no such file or packaged config{did_you_mean(stem, names)} "
            f"(packaged: {', '.join(names)})"
        ) from None


def resolve_config_args(args: list[str]) -> list[str]:
    """Rewrite every ``--config NAME`` / ``-c NAME`` / ``--config=NAME`` of a command line (module doc)."""
    out: list[str] = []
    expect = False
    for arg in args:
        if expect:
            out.append(resolve_config_arg(arg))
            expect = False
        elif arg in ("--config", "-c"):
            out.append(arg)
            expect = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config_arg(arg[len("--config=") :]))
        else:
            out.append(arg)
    return out


def load_config(name: str) -> dict[str, Any]:
    """The packaged config ``name`` as a dict."""
    return yaml.safe_load(config_path(name).read_text()) or {}


def preset_model_fields(name: str) -> dict[str, Any]:
    """The ``model.model`` section of config ``name`` (DynamicsConfig fields), {} if it has none."""
    model: dict | None = (load_config(name).get("model") or {}).get("model")
    fields = dict(model or {})
    if "num_discrete_actions" in fields:
        fields["num_discrete_actions"] = tuple(fields["num_discrete_actions"])
    return fields


__all__ = [
    "CONFIG_DIR",
    "available_configs",
    "config_path",
    "load_config",
    "preset_model_fields",
    "resolve_config_args",
]
