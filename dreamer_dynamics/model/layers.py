"""Building blocks: fp32 RMSNorm, fused SwiGLU, rotary position embedding (SPEC §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.RMSNorm):
    """`torch.nn.RMSNorm` computed in fp32 and cast back, so bf16 autocast never normalises in low precision.

    In fp32 the casts are no-ops (no copies).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        return F.rms_norm(x.float(), self.normalized_shape, weight, self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    """SwiGLU MLP (Shazeer 2020): down(silu(gate(x)) * up(x)) with gate and up fused in one Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)  # one GEMM instead of two
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (len(positions), head_dim / 2) in fp32 for rotary embeddings (Su et al. 2021).

    Positions are absolute integers; attention only sees their differences, which is what lets a rollout
    continue past the training length while the window C bounds the distances.
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """Rotate the two halves of the last dim of `x` by the angle of its position along `seq_dim`.

    cos/sin: (L, head_dim/2) with L == x.shape[seq_dim]; computed in fp32 and cast back.
    """
    shape = [1] * x.dim()
    shape[seq_dim] = cos.shape[0]
    shape[-1] = cos.shape[1]
    cos, sin = cos.view(shape), sin.view(shape)
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return rotated.to(x.dtype)
