"""Conditioning tokens: the shortcut token (discrete tau and d, paper Sec. 3.2) and action tokens."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import DynamicsConfig

_GRID_TOLERANCE = 1e-4  # fp32 round-trips of i/k_max and 1/K are exact to ~1e-7; anything further is off-grid


def signal_level_index(tau: torch.Tensor, k_max: int) -> torch.Tensor:
    """tau = i/k_max, i in [0, k_max] (tau = 1 included, for inference) -> long index i; ValueError if not."""
    scaled = tau.double() * k_max
    index = scaled.round()
    bad = ~((scaled - index).abs() <= _GRID_TOLERANCE) | (index < 0) | (index > k_max)
    if bool(bad.any()):
        raise ValueError(
            f"DynamicsTransformer: tau must lie on the grid i/k_max (k_max={k_max}, "
            f"i in 0..{k_max}); "
            f"got off-grid values such as {tau[bad].flatten()[:4].tolist()}"
        )
    return index.long()


def step_size_index(d: torch.Tensor, k_max: int) -> torch.Tensor:
    """d = 1/K, K = 2^j <= k_max (K = 1 included) -> long index j = log2(1/d); ValueError if off-grid."""
    j_max = int(math.log2(k_max))
    log_k = -torch.log2(d.double())
    index = log_k.round()
    bad = ~((d.double() * torch.exp2(index) - 1).abs() <= _GRID_TOLERANCE) | (index < 0) | (index > j_max)
    if bool(bad.any()):
        raise ValueError(
            f"DynamicsTransformer: d must be 1/K with K a power of two <= k_max={k_max}; "
            f"got off-grid values such as {d[bad].flatten()[:4].tolist()}"
        )
    return index.long()


class ShortcutEmbedding(nn.Module):
    """One token per frame: Linear(concat(tau_table[i], d_table[j])) (paper Sec. 3.2: discrete tau and d).

    Tables cover tau in {0, 1/k_max, ..., 1} and d in {1, 1/2, ..., 1/k_max}: every level of training
    (tau < 1) and inference (context frames, Euler steps with K = 1 .. k_max) has its own row.
    """

    def __init__(self, config: DynamicsConfig) -> None:
        super().__init__()
        self.k_max = config.k_max
        self.check_inputs = config.check_inputs
        self.signal_table = nn.Embedding(config.k_max + 1, config.dim)
        self.step_table = nn.Embedding(config.num_step_sizes, config.dim)
        self.proj = nn.Linear(2 * config.dim, config.dim)

    def forward(self, tau: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """tau, d: float (B, T) on their grids -> (B, T, 1, D)."""
        if self.check_inputs:
            tau_idx, d_idx = signal_level_index(tau, self.k_max), step_size_index(d, self.k_max)
        else:  # no host sync: trust the caller
            tau_idx = (tau.double() * self.k_max).round().long()
            d_idx = (-torch.log2(d.double())).round().long()
        both = torch.cat((self.signal_table(tau_idx), self.step_table(d_idx)), dim=-1)  # (B, T, 2D)
        return self.proj(both).unsqueeze(2)


class ActionEmbedding(nn.Module):
    """S_a action tokens per frame = learned base embedding + sum of labelled components (docs/design.md §4).

    Categorical components go through embedding tables (one concatenated table with offsets: one lookup),
    continuous components through a bias-free linear projection. A missing label (discrete -1, continuous NaN)
    contributes nothing, so unlabelled frames / datasets use the learned embedding only.
    """

    def __init__(self, config: DynamicsConfig) -> None:
        super().__init__()
        self.tokens, self.dim = config.action_tokens, config.dim
        self.num_discrete = config.num_discrete_actions
        self.num_continuous = config.num_continuous_actions
        self.check_inputs = config.check_inputs
        self.base = nn.Parameter(torch.zeros(config.action_tokens, config.dim))
        # Class counts and table offsets are plain tensors, not buffers: weight averaging (EMAWeightAveraging,
        # use_buffers=True) averages every buffer in float and copies back, which truncates integers (3 -> 2).
        self._id_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.num_discrete:
            self.discrete = nn.Embedding(sum(self.num_discrete), config.action_tokens * config.dim)
        if self.num_continuous:
            self.continuous = nn.Linear(self.num_continuous, config.action_tokens * config.dim, bias=False)

    def forward(
        self,
        batch: int,
        time: int,
        actions_discrete: torch.Tensor | None,
        actions_continuous: torch.Tensor | None,
    ) -> torch.Tensor:
        """-> (B, T, S_a, D)."""
        tokens = self.base.expand(batch, time, self.tokens, self.dim)
        if actions_discrete is not None:
            self._check(actions_discrete, "actions_discrete", batch, time, len(self.num_discrete))
            if self.check_inputs:
                bad = (actions_discrete < -1) | (actions_discrete >= self.sizes(actions_discrete.device))
                if bool(bad.any()):
                    raise ValueError(
                        "DynamicsTransformer: actions_discrete ids must be -1 (missing) or in "
                        f"[0, n) for n in num_discrete_actions={self.num_discrete}"
                    )
            labelled = actions_discrete >= 0  # (B, T, n)
            ids = actions_discrete.clamp(min=0) + self.offsets(actions_discrete.device)  # (B, T, n)
            emb = self.discrete(ids)  # (B, T, n, S_a*D)
            tokens = tokens + (emb * labelled.unsqueeze(-1)).sum(2).view(batch, time, self.tokens, self.dim)
        if actions_continuous is not None:
            self._check(actions_continuous, "actions_continuous", batch, time, self.num_continuous)
            values = torch.nan_to_num(actions_continuous.to(self.continuous.weight.dtype), nan=0.0)
            tokens = tokens + self.continuous(values).view(batch, time, self.tokens, self.dim)
        return tokens

    def sizes(self, device: torch.device) -> torch.Tensor:
        """Class count of each discrete component, (n,) int64 on `device`."""
        return self._tables(device)[0]

    def offsets(self, device: torch.device) -> torch.Tensor:
        """Start row of each component in the concatenated table, (n,) int64 on `device`."""
        return self._tables(device)[1]

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._id_tables:
            sizes = torch.tensor(self.num_discrete, dtype=torch.long)
            offsets = torch.cat((sizes.new_zeros(1), sizes[:-1])).cumsum(0)
            self._id_tables[device] = (sizes.to(device), offsets.to(device))
        return self._id_tables[device]

    def _check(self, actions: torch.Tensor, name: str, batch: int, time: int, width: int) -> None:
        if width == 0:
            raise ValueError(
                f"DynamicsTransformer: got {name} but the config declares no such actions "
                "(num_discrete_actions / num_continuous_actions)"
            )
        if tuple(actions.shape) != (batch, time, width):
            raise ValueError(
                f"DynamicsTransformer: {name} must have shape (B, T, {width}) = "
                f"{(batch, time, width)}, got {tuple(actions.shape)}"
            )
