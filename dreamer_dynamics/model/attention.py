"""Factorised space / time attention with GQA, QK-norm, RoPE and logit soft-capping (docs/design.md §4).

Kernel paths (all agree with a plain softmax attention, tests/test_attention.py):

- ``sdpa``: `F.scaled_dot_product_attention` (fused flash / memory-efficient kernels). SDPA has no hook for
  logit soft-capping, so it is only taken when ``attention_softcap is None``.
- ``flex``: FlexAttention with the soft-cap as a ``score_mod`` and the causal window / image rows as a
  ``BlockMask``; compiled on CUDA (that is where it generates a fused kernel), eager elsewhere (tests only).
- ``math``: explicit matmuls with GQA done by stacking each kv head's query heads along the query axis (no
  ``repeat_interleave`` or broadcast copies of k/v); soft-cap, mask and softmax in fp32. On CPU this is as
  fast as SDPA's math fallback and is the ``auto`` choice with a soft-cap, because eager FlexAttention on CPU
  materialises the scores anyway and is much slower (and has no backward on CPU).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.torch_version import TorchVersion

from .config import DynamicsConfig, softcap_problem
from .layers import RMSNorm, apply_rope

KV = tuple[torch.Tensor, torch.Tensor]  # keys and values of one time layer, each (B, S*Hkv, L, E)

try:  # FlexAttention: torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    HAS_FLEX = True
except ImportError:  # pragma: no cover - old torch
    create_block_mask = flex_attention = None
    HAS_FLEX = False

SDPA_HAS_GQA = TorchVersion(torch.__version__) >= (2, 5)
# The compiled (Triton) FlexAttention kernel refuses heads narrower than this ("NYI: embedding dimension of
# the query, key, and value must be at least 16"); eager FlexAttention on CPU has no such limit.
FLEX_MIN_HEAD_DIM = 16


@dataclass
class AttentionMask:
    """Boolean mask shared by all layers of one axis in one forward (True = may attend).

    dense: (M, Lq, Lk) with M == 1 (the same for every sequence) or M == N, the attention batch; it broadcasts
    over heads. Time attention folds the S token positions into the head axis ((B, S*H, T, E), see
    FactorizedAttention), so its batch is B and a per-row mask (image rows) needs only B masks.
    """

    dense: torch.Tensor
    _block_mask: object = field(default=None, repr=False)

    def block_mask(self):
        """FlexAttention BlockMask, built once and shared by every layer that uses this mask."""
        if self._block_mask is None:
            dense = self.dense

            def mask_mod(b, h, q_idx, kv_idx):
                return dense[b, q_idx, kv_idx]

            def shared_mask_mod(b, h, q_idx, kv_idx):
                return dense[0, q_idx, kv_idx]

            per_row = dense.shape[0] > 1
            self._block_mask = create_block_mask(
                mask_mod if per_row else shared_mask_mod,
                dense.shape[0] if per_row else None,
                None,
                dense.shape[1],
                dense.shape[2],
                device=dense.device,
            )
        return self._block_mask


def resolve_backend(
    requested: str,
    softcap: float | None,
    device: torch.device,
    query_len: int = 2,
    head_dim: int = FLEX_MIN_HEAD_DIM,
) -> str:
    """Pick the kernel path; see the module docstring for why.

    With ``auto``, single-query calls (a rollout frame reading the KV cache) take the math path: they are
    memory-bound anyway, and a compiled FlexAttention would recompile for every cache length up to C. Heads
    narrower than ``FLEX_MIN_HEAD_DIM`` take the math path on CUDA too (the compiled kernel refuses them).
    """
    flex_compiles = device.type == "cuda"
    if requested == "auto":
        if softcap is None:
            return "sdpa"
        flex_fits = not flex_compiles or head_dim >= FLEX_MIN_HEAD_DIM
        return "flex" if (HAS_FLEX and flex_compiles and flex_fits and query_len > 1) else "math"
    if softcap_problem(requested, softcap):
        raise ValueError("DynamicsConfig: " + softcap_problem(requested, softcap))
    if requested == "flex" and not HAS_FLEX:
        raise ValueError("DynamicsConfig.attention_backend='flex' needs torch >= 2.5 (FlexAttention)")
    if requested == "flex" and flex_compiles and head_dim < FLEX_MIN_HEAD_DIM:
        raise ValueError(
            f"DynamicsConfig.attention_backend='flex': the compiled FlexAttention kernel on CUDA needs "
            f"head_dim = dim / heads >= {FLEX_MIN_HEAD_DIM}, got {head_dim}; "
            "use 'auto' or 'math', or wider heads"
        )
    return requested


@functools.cache
def _softcap_score_mod(softcap: float):
    """``score_mod`` of FlexAttention: c * tanh(score / c), with c written into the function's code.

    Not a closure over a float: when a batch shape changes and torch.compile recompiles with dynamic shapes,
    dynamo turns a captured Python float into a CPU scalar input, which the CUDA FlexAttention lowering of
    torch 2.11 fails to read ("LoweringException: unbacked_bindings"); a literal in the code stays a constant.
    Training changes shapes all the time (alternating lengths, teacher passes on a subset of rows).
    """
    c = repr(float(softcap))
    return eval(f"lambda score, b, h, q_idx, kv_idx: {c} * torch.tanh(score / {c})", {"torch": torch})


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention)  # default dynamic: one recompile, then shape-generic


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: AttentionMask | None,
    softcap: float | None,
    backend: str,
) -> torch.Tensor:
    """Multi-head attention. q: (N, Hq, Lq, E); k, v: (N, Hkv, Lk, E), Hq % Hkv == 0 -> (N, Hq, Lq, E).

    GQA convention (as in SDPA / FlexAttention ``enable_gqa``): query head i reads kv head i // (Hq / Hkv).
    """
    n, hq, lq, e = q.shape
    backend = resolve_backend(backend, softcap, q.device, lq, e)
    hkv = k.shape[1]
    if backend == "sdpa":
        attn_mask = None if mask is None else mask.dense[:, None]  # (M, 1, Lq, Lk)
        if hq != hkv and not SDPA_HAS_GQA:  # pragma: no cover - torch < 2.5
            k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=hq != hkv)
    if backend == "flex":
        fn = _compiled_flex() if q.is_cuda else flex_attention
        return fn(
            q,
            k,
            v,
            score_mod=None if softcap is None else _softcap_score_mod(float(softcap)),
            block_mask=None if mask is None else mask.block_mask(),
            enable_gqa=hq != hkv,
        )
    # math: the G = Hq/Hkv query heads of one kv head are stacked along the query axis ((N, Hkv, G*Lq, E)), so
    # every product is one plain batched GEMM against the Hkv keys/values: no (N, Hkv, G, Lk, E) broadcast
    # copy of k and v (a broadcast matmul materialises it), and the output comes back in (N, Hq, Lq, E) order.
    groups = hq // hkv
    qg = q.reshape(n, hkv, groups * lq, e)  # (N, Hkv, G*Lq, E)
    logits = torch.matmul(qg, k.transpose(-1, -2)).float()  # (N, Hkv, G*Lq, Lk)
    if softcap is not None:  # c * tanh(s / (c sqrt(E))): the 1/sqrt(E) scale folded into the cap's 1/c
        logits = torch.tanh(logits * (e**-0.5 / softcap)) * softcap
    else:
        logits = logits * e**-0.5
    logits = logits.view(n, hkv, groups, lq, -1)  # (N, Hkv, G, Lq, Lk)
    if mask is not None:
        logits = logits.masked_fill(~mask.dense[:, None, None], float("-inf"))  # (M, 1, 1, Lq, Lk) broadcast
    probs = torch.softmax(logits, dim=-1).to(v.dtype).view(n, hkv, groups * lq, -1)
    return torch.matmul(probs, v).view(n, hq, lq, e)


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

    def forward(
        self,
        x: torch.Tensor,
        freqs: torch.Tensor,
        mask: AttentionMask | None = None,
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """x: (B, T, S, D); freqs: rope_tables() of this axis' new positions ((S or T, E/2, 2)).

        Time axis only: past_kv = cached (keys, values) of earlier frames, each (B, S*Hkv, L_past, E), already
        normalised and rotated. Returns (output (B, T, S, D), this call's (keys, values) for the cache or
        None).
        """
        b, t, s, dim = x.shape
        h, hkv, e = self.heads, self.kv_heads, self.head_dim
        qkv = self.qkv(x).view(b, t, s, h + 2 * hkv, e)  # (B, T, S, H + 2Hkv, E)
        q, k, v = qkv.split((h, hkv, hkv), dim=3)
        # Norm + RoPE in the token-major layout, where the last dims are dense (elementwise ops on CPU are
        # several times slower on transposed views); both return fresh contiguous tensors.
        seq_dim = 2 if self.axis == "space" else 1
        q = apply_rope(self.q_norm(q), freqs, seq_dim)  # (B, T, S, H, E)
        k = apply_rope(self.k_norm(k), freqs, seq_dim)  # (B, T, S, Hkv, E)
        if self.axis == "space":  # sequences = frames: (B*T, heads, S, E)
            q, k, v = (y.reshape(b * t, s, -1, e).transpose(1, 2) for y in (q, k, v))
        else:  # sequences = rows, token positions folded into heads: (B, S*heads, T, E)
            q, k, v = (y.reshape(b, t, -1, e).transpose(1, 2) for y in (q, k, v))
        new_kv = (k, v) if self.axis == "time" else None
        if past_kv is not None:
            k = torch.cat((past_kv[0], k), dim=2)
            v = torch.cat((past_kv[1], v), dim=2)
        o = attend(q, k, v, mask=mask, softcap=self.softcap, backend=self.backend)  # (N, heads, L, E)
        # Both axes: (N, L, heads, E) is (B, T, S, D) in memory order.
        o = o.transpose(1, 2).reshape(b, t, s, dim)
        return self.out(o), new_kv
