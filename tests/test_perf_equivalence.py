"""Equality tests of the performance rewrites: each fast path equals the plain formulation it replaced,
values AND gradients, so an optimisation can never silently change training.

- attention `math` path: GQA by stacking each kv head's query heads along the query axis, and the 1/sqrt(E)
  scale folded into the soft-cap's 1/c, against the textbook broadcast formulation in float64.
- no-autograd forwards (teacher passes, rollouts) accumulate the residuals and the SwiGLU product in place:
  bitwise equal to the autograd forward.
"""

from __future__ import annotations

import math

import pytest
import torch

from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer
from dreamer_dynamics.model.attention import AttentionMask, attend


def plain_attention(q, k, v, allowed, softcap):
    """The formulation before the rewrite: broadcast k/v over each group, scale, then c * tanh(s / c)."""
    n, hq, lq, e = q.shape
    groups = hq // k.shape[1]
    qg = q.view(n, k.shape[1], groups, lq, e)
    logits = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)) / math.sqrt(e)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if allowed is not None:
        logits = logits.masked_fill(~allowed[:, None, None], float("-inf"))
    return torch.matmul(torch.softmax(logits, -1), v.unsqueeze(2)).view(n, hq, lq, e)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("hkv", [4, 2, 1])
@pytest.mark.parametrize("masked", [False, True])
def test_math_attention_values_and_gradients_equal_plain_formulation(softcap, hkv, masked):
    g = torch.Generator().manual_seed(hkv)
    n, hq, lq, lk, e = 3, 4, 5, 7, 8
    q = (3 * torch.randn(n, hq, lq, e, generator=g)).requires_grad_()
    k = (3 * torch.randn(n, hkv, lk, e, generator=g)).requires_grad_()
    v = torch.randn(n, hkv, lk, e, generator=g).requires_grad_()
    allowed = None
    if masked:  # causal-window-like mask with per-sequence rows, every query sees at least one key
        delta = torch.arange(lq)[:, None] + (lk - lq) - torch.arange(lk)[None]
        allowed = ((delta >= 0) & (delta < 3))[None].repeat(n, 1, 1)
        allowed[1] = delta == 0
    grad_out = torch.randn(n, hq, lq, e, generator=g)

    fast = attend(
        q, k, v, mask=None if allowed is None else AttentionMask(allowed), softcap=softcap, backend="math"
    )
    fast_grads = torch.autograd.grad(fast, (q, k, v), grad_out)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    plain = plain_attention(q64, k64, v64, allowed, softcap)
    plain_grads = torch.autograd.grad(plain, (q64, k64, v64), grad_out.double())

    torch.testing.assert_close(fast.double(), plain, atol=1e-5, rtol=1e-5)
    for got, want in zip(fast_grads, plain_grads):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_no_grad_forward_is_bitwise_equal_to_the_autograd_forward(autocast):
    torch.manual_seed(0)
    cfg = DynamicsConfig.debug()
    model = DynamicsTransformer(cfg)
    g = torch.Generator().manual_seed(1)
    b, t = 3, 5
    z = torch.randn(b, t, cfg.latent_tokens, cfg.latent_dim, generator=g)
    tau = torch.randint(0, cfg.k_max, (b, t), generator=g) / cfg.k_max
    d = torch.full((b, t), 1 / cfg.k_max)
    cond = {
        "actions_discrete": torch.stack(
            [torch.randint(0, n, (b, t), generator=g) for n in cfg.num_discrete_actions], -1
        ),
        "actions_continuous": torch.randn(b, t, cfg.num_continuous_actions, generator=g),
        "image_rows": torch.tensor([False, True, False]),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # bf16 branches, fp32 residual stream
        with_grad = model(z, tau, d, **cond)
        with torch.no_grad():
            without = model(z, tau, d, **cond)
    assert with_grad.requires_grad
    assert torch.equal(with_grad.detach(), without)
