"""Building blocks: fp32 RMSNorm, fused SwiGLU, rotary position embedding (docs/design.md §4)."""

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
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (..., hidden) each
        if torch.is_grad_enabled():
            return self.down(F.silu(gate) * up)
        # No autograd (teacher passes, rollouts): multiply into silu's fresh output instead of allocating
        # another (..., hidden) tensor; the same op on the same values, so bitwise equal
        # (tests/test_perf_equivalence.py).
        return self.down(F.silu(gate).mul_(up))


def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """Rotary embedding (Su et al. 2021) angles as (cos, sin) pairs: (len(positions), head_dim / 2, 2) fp32.

    Positions are absolute integers; attention only sees their differences, which is what lets a rollout
    continue past the training length while the window C bounds the distances.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = base ** (-exponents)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


def grid_rope_tables(
    grid: tuple[int, int], extra: int, head_dim: int, base: float, device: torch.device
) -> torch.Tensor:
    """Axial 2-D rotary angles for a row-major (rows, cols) token grid followed by `extra` non-grid tokens:
    (rows * cols + extra, head_dim / 2, 2). The first half of the rotary pairs turns with the row, the second
    with the column, so attention sees the (row, col) offset between two tokens, not a distance along a
    flattened index that puts vertical neighbours `cols` apart. Extra tokens (registers, shortcut, actions)
    sit off the grid at (rows + j, cols + j)."""
    rows, cols = grid
    row = torch.cat(
        (torch.arange(rows, device=device).repeat_interleave(cols), rows + torch.arange(extra, device=device))
    )
    col = torch.cat(
        (torch.arange(cols, device=device).repeat(rows), cols + torch.arange(extra, device=device))
    )
    return torch.cat((rope_tables(row, head_dim // 2, base), rope_tables(col, head_dim // 2, base)), dim=1)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of the last dim by the angles of their position along `seq_dim`.

    freqs: rope_tables(...) of length x.shape[seq_dim]. Computed in fp32, cast back to x's dtype. Eager mode
    uses one complex multiply (several times faster on CPU than the real formulation's chain of small
    kernels); under torch.compile the real formulation is used, which inductor fuses (it has no complex
    codegen).
    """
    shape = [1] * x.dim() + [2]
    shape[seq_dim] = freqs.shape[0]
    shape[-2] = freqs.shape[1]
    freqs = freqs.view(shape)  # broadcastable to (..., E/2, 2)
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (..., E/2, 2)
    if _is_compiling():
        cos, sin = freqs[..., 0], freqs[..., 1]
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
    else:
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(freqs))
    return rotated.flatten(-2).to(x.dtype)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())
