"""``LatentUnits``: the dataset's units <-> the model's units of the latents (docs/training.md).

Encoders emit latents at any scale, while the flow mixes the data with unit Gaussian noise (paper Eq. 1), so
the network works on standardised latents, z_model = (z_data - mean) / std per channel. One ``LatentUnits`` is
built from the dataset's statistics (``from_stats``) and travels DataModule -> CLI link -> module
hyper-parameters -> checkpoint -> export -> ``from_pretrained`` in its plain-dict form (``to_dict`` /
``from_dict``); every conversion goes through its ``standardize`` / ``destandardize``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dreamer_dynamics.errors import ConfigError

SCALES = ("pooled", "channel")  # how latents are scaled: one pooled std, or each channel by its own std
STD_FLOOR = 1e-6  # "channel": std = max(std, STD_FLOOR * largest std); constant channels stay finite


@dataclass(frozen=True)
class LatentUnits:
    """z_model = (z_data - mean) / std per channel, computed in float32 (equal objects convert equally)."""

    mean: tuple[float, ...]  # (D_b,) each channel's mean in the dataset's units
    std: tuple[float, ...]  # (D_b,) divisor of each channel as applied: the pooled std or the channel's own
    _tensors: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # device -> (m, s)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))

    @classmethod
    def identity(cls, dim: int) -> LatentUnits:
        """Latents used as stored (mean 0, std 1): data without standardisation."""
        return cls((0.0,) * dim, (1.0,) * dim)

    @classmethod
    def from_stats(cls, record: dict[str, Any], scale: str = "pooled") -> LatentUnits:
        """From a ``latent_stats`` record of ``metadata.json`` (per-channel "mean", "std"; docs/data.md).

        * "pooled": every channel is divided by the RMS of the channel stds, sqrt(mean_c std_c^2), after its
          own mean is removed. The data land at the scale of the unit noise the flow mixes them with, and the
          channels keep their relative spread (a tokenizer's quiet channels stay quiet, so the noise still
          drowns fine detail before coarse structure). On the built-in world this learned faster than
          per-channel scaling (docs/benchmarks.md).
        * "channel": each channel by its own std, floored at STD_FLOOR x the largest (relative, so scaling
          the data scales the floor too).

        All-constant data get std 1.
        """
        if scale not in SCALES:
            raise ConfigError(f"latent units: scale must be one of {SCALES}, got {scale!r}")
        mean = np.asarray(record["mean"], np.float64)
        std = np.asarray(record["std"], np.float64)
        largest = float(std.max()) if std.size else 0.0
        if largest <= 0.0:
            std = np.ones_like(std)
        elif scale == "pooled":
            std = np.full_like(std, float(np.sqrt(np.mean(std**2))))
        else:
            std = np.maximum(std, STD_FLOOR * largest)
        return cls(tuple(mean.tolist()), tuple(std.tolist()))

    @classmethod
    def from_dict(cls, data: Any, where: str = "latent_units") -> LatentUnits:
        """Inverse of ``to_dict``; one clear line (naming `where`) for anything else."""
        if isinstance(data, LatentUnits):
            return data
        if not isinstance(data, dict) or set(data) != {"mean", "std"}:
            raise ConfigError(f'{where}: must be an object with exactly the keys "mean" and "std"')
        mean, std = data["mean"], data["std"]
        for name, values in (("mean", mean), ("std", std)):
            ok = isinstance(values, (list, tuple)) and len(values) > 0
            if not ok or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in values):
                raise ConfigError(f"{where}.{name}: must be a non-empty list of finite numbers")
        if len(mean) != len(std):
            raise ConfigError(f"{where}: mean has {len(mean)} channels, std has {len(std)}")
        if min(std) <= 0:
            raise ConfigError(f"{where}.std: must be > 0, got {min(std)}")
        return cls(tuple(mean), tuple(std))

    def to_dict(self) -> dict[str, list[float]]:
        """Plain form for hyper-parameters and JSON (floats round-trip exactly)."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @property
    def dim(self) -> int:
        return len(self.mean)

    @property
    def is_identity(self) -> bool:
        return all(m == 0.0 for m in self.mean) and all(s == 1.0 for s in self.std)

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        """Dataset units -> model units, (z - mean) / std over the last axis (D_b); keeps z's dtype."""
        if self.is_identity:
            return z
        mean, std = self._on(z)
        return ((z.float() - mean) / std).to(z.dtype)

    def destandardize(self, z: torch.Tensor) -> torch.Tensor:
        """Model units -> dataset units, z * std + mean (e.g. before decoding to pictures)."""
        if self.is_identity:
            return z
        mean, std = self._on(z)
        return (z.float() * std + mean).to(z.dtype)

    def _on(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.shape[-1] != self.dim:
            raise ValueError(f"latent units: latents have {z.shape[-1]} channels, the units {self.dim}")
        if z.device not in self._tensors:
            self._tensors[z.device] = tuple(
                torch.tensor(v, dtype=torch.float32, device=z.device) for v in (self.mean, self.std)
            )
        return self._tensors[z.device]


def latent_units_or_identity(units: LatentUnits | dict | None, dim: int, where: str) -> LatentUnits:
    """`units` as a LatentUnits (a dict through ``from_dict``), identity for None; D_b must be `dim`."""
    units = LatentUnits.identity(dim) if units is None else LatentUnits.from_dict(units, where)
    if units.dim != dim:
        raise ConfigError(f"{where}: {units.dim} channels, the model's latent_dim is {dim}")
    return units


__all__ = ["LatentUnits", "SCALES", "STD_FLOOR", "latent_units_or_identity"]
