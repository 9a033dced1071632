"""Factorised space / time attention with GQA, QK-norm, RoPE and logit soft-capping (SPEC §4).

Kernel paths (all agree with a plain softmax attention, tests/test_attention.py):

- ``sdpa``: `F.scaled_dot_product_attention` (fused flash / memory-efficient kernels). SDPA has no hook for
  logit soft-capping, so it is only taken when ``attention_softcap is None``.
- ``flex``: FlexAttention with the soft-cap as a ``score_mod`` and the causal window / image rows as a
  ``BlockMask``; compiled on CUDA (that is where it generates a fused kernel), eager elsewhere (tests only).
- ``math``: explicit matmuls with GQA done by grouping query heads (no ``repeat_interleave`` copies); soft-cap,
  mask and softmax in fp32. On CPU this is as fast as SDPA's math fallback and is the ``auto`` choice with a
  soft-cap, because eager FlexAttention on CPU materialises the scores anyway and is much slower.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.torch_version import TorchVersion

from .config import DynamicsConfig
from .layers import RMSNorm, apply_rope

try:  # FlexAttention: torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    HAS_FLEX = True
except ImportError:  # pragma: no cover - old torch
    create_block_mask = flex_attention = None
    HAS_FLEX = False

SDPA_HAS_GQA = TorchVersion(torch.__version__) >= (2, 5)


@dataclass
class AttentionMask:
    """Boolean mask shared by all layers of one axis in one forward (True = may attend).

    dense: (M, Lq, Lk) with M == 1 (same for every sequence) or M == N / rows_per_mask, where sequence n of the
    attention batch uses dense[n // rows_per_mask] (time attention runs B*S sequences: S token positions per row).
    """

    dense: torch.Tensor
    rows_per_mask: int = 1
    _block_masks: dict = field(default_factory=dict, repr=False)

    def for_sequences(self, n: int) -> torch.Tensor:
        """(n or 1, 1, Lq, Lk) dense mask for SDPA."""
        if self.dense.shape[0] == 1:
            return self.dense[:, None]
        return self.dense.repeat_interleave(self.rows_per_mask, dim=0)[:, None]

    def block_mask(self, n: int):
        """FlexAttention BlockMask, built once and shared by every layer that uses this mask."""
        if n not in self._block_masks:
            dense, rows = self.dense, self.rows_per_mask
            if dense.shape[0] == 1:
                def mask_mod(b, h, q_idx, kv_idx):
                    return dense[0, q_idx, kv_idx]
                batch = None
            else:
                def mask_mod(b, h, q_idx, kv_idx):
                    return dense[b // rows, q_idx, kv_idx]
                batch = n
            self._block_masks[n] = create_block_mask(
                mask_mod, batch, None, dense.shape[1], dense.shape[2], device=dense.device)
        return self._block_masks[n]


def resolve_backend(requested: str, softcap: Optional[float], device: torch.device) -> str:
    """Pick the kernel path; see the module docstring for why."""
    if requested == "auto":
        if softcap is None:
            return "sdpa"
        return "flex" if (HAS_FLEX and device.type == "cuda") else "math"
    if requested == "sdpa" and softcap is not None:
        raise ValueError("DynamicsConfig.attention_backend='sdpa' cannot apply attention_softcap "
                         f"({softcap}); use 'flex', 'math' or set attention_softcap=None")
    if requested == "flex" and not HAS_FLEX:
        raise ValueError("DynamicsConfig.attention_backend='flex' needs torch >= 2.5 (FlexAttention)")
    return requested


@functools.lru_cache(maxsize=None)
def _softcap_score_mod(softcap: float):
    def score_mod(score, b, h, q_idx, kv_idx):
        return softcap * torch.tanh(score / softcap)
    return score_mod


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: Optional[AttentionMask],
           softcap: Optional[float], backend: str) -> torch.Tensor:
    """Multi-head attention. q: (N, Hq, Lq, E); k, v: (N, Hkv, Lk, E), Hq % Hkv == 0 -> (N, Hq, Lq, E)."""
    backend = resolve_backend(backend, softcap, q.device)
    n, hq, lq, e = q.shape
    hkv = k.shape[1]
    if backend == "sdpa":
        attn_mask = None if mask is None else mask.for_sequences(n)
        if hq != hkv and not SDPA_HAS_GQA:  # pragma: no cover - torch < 2.5
            k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=hq != hkv)
    if backend == "flex":
        fn = _compiled_flex() if q.is_cuda else flex_attention
        return fn(q, k, v, score_mod=None if softcap is None else _softcap_score_mod(float(softcap)),
                  block_mask=None if mask is None else mask.block_mask(n), enable_gqa=hq != hkv)
    # math: group query heads onto their kv head by a view, so k/v broadcast instead of being copied.
    groups = hq // hkv
    qg = q.view(n, hkv, groups, lq, e)  # (N, Hkv, G, Lq, E)
    logits = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)).float() * e ** -0.5  # (N, Hkv, G, Lq, Lk)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if mask is not None:
        dense = mask.dense
        if dense.shape[0] != 1:  # (M, Lq, Lk) -> (M, rows, Hkv, G, Lq, Lk) view of the logits
            logits = logits.view(dense.shape[0], mask.rows_per_mask, hkv, groups, lq, -1)
            dense = dense[:, None, None, None]
        logits = logits.masked_fill(~dense, float("-inf"))
    probs = torch.softmax(logits, dim=-1).to(v.dtype).view(n, hkv, groups, lq, -1)
    return torch.matmul(probs, v.unsqueeze(2)).view(n, hq, lq, e)


class FactorizedAttention(nn.Module):
    """Attention along one axis of (B, T, S, D) tokens: 'space' (the S tokens of a frame, non-causal) or
    'time' (each token position over frames, causal window; paper Sec. 3.4)."""

    def __init__(self, config: DynamicsConfig, axis: str) -> None:
        super().__init__()
        if axis not in ("space", "time"):
            raise ValueError(f"axis must be 'space' or 'time', got {axis!r}")
        self.axis = axis
        self.heads, self.kv_heads, self.head_dim = config.heads, config.kv_heads, config.head_dim
        self.softcap = config.attention_softcap
        self.backend = config.attention_backend
        # Fused Q/K/V projection: one GEMM (GQA: fewer K/V heads than query heads).
        self.qkv = nn.Linear(config.dim, (config.heads + 2 * config.kv_heads) * config.head_dim, bias=False)
        # QK-norm (per head, shared over heads) keeps logits bounded at scale (Dehghani et al. 2023).
        self.q_norm = RMSNorm(config.head_dim, eps=config.norm_eps)
        self.k_norm = RMSNorm(config.head_dim, eps=config.norm_eps)
        self.out = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: Optional[AttentionMask] = None,
                past_kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
        """x: (B, T, S, D); cos/sin: RoPE tables for this axis' new positions.

        Time axis only: past_kv = cached (keys, values) of earlier frames, each (B*S, Hkv, L_past, E), already
        normalised and rotated. Returns (output (B, T, S, D), this call's (keys, values) for the cache or None).
        """
        b, t, s, dim = x.shape
        h, hkv, e = self.heads, self.kv_heads, self.head_dim
        qkv = self.qkv(x).view(b, t, s, h + 2 * hkv, e)  # (B, T, S, H + 2Hkv, E)
        if self.axis == "space":
            qkv = qkv.view(b * t, s, h + 2 * hkv, e).transpose(1, 2)  # (B*T, H+2Hkv, S, E), a view
        else:
            qkv = qkv.permute(0, 2, 3, 1, 4).reshape(b * s, h + 2 * hkv, t, e)  # (B*S, H+2Hkv, T, E)
        q, k, v = qkv.split((h, hkv, hkv), dim=1)
        q = apply_rope(self.q_norm(q), cos, sin, seq_dim=2)
        k = apply_rope(self.k_norm(k), cos, sin, seq_dim=2)
        new_kv = (k, v) if self.axis == "time" else None
        if past_kv is not None:
            k = torch.cat((past_kv[0], k), dim=2)
            v = torch.cat((past_kv[1], v), dim=2)
        o = attend(q, k, v, mask=mask, softcap=self.softcap, backend=self.backend)  # (N, H, L, E)
        if self.axis == "space":
            o = o.view(b, t, h, s, e).transpose(2, 3).reshape(b, t, s, dim)
        else:
            o = o.view(b, s, h, t, e).permute(0, 3, 1, 2, 4).reshape(b, t, s, dim)
        return self.out(o), new_kv
