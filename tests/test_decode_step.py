"""The per-frame decode step of a KV-cached rollout (docs/design.md §5): one new frame against the cache
builds no time mask (a mask would cost a host sync, which a CUDA graph cannot hold) and equals the full
forward."""

from __future__ import annotations

import pytest
import torch

from dreamer_dynamics.model import transformer
from tests.conftest import make_debug_model


@pytest.mark.parametrize("past", [1, 3, 5])  # up to C - 1 = 5 cached frames: what the cache ever holds
def test_one_frame_against_the_cache_equals_the_full_forward_without_a_mask(monkeypatch, past):
    model = make_debug_model(context_length=6, check_inputs=False)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    t = past + 1
    z = torch.randn(2, t, cfg.latent_tokens, cfg.latent_dim, generator=g)
    tau = torch.randint(0, cfg.k_max + 1, (2, t), generator=g) / cfg.k_max
    d = torch.full((2, t), cfg.d_min)
    acts = torch.stack([torch.randint(0, n, (2, t), generator=g) for n in cfg.num_discrete_actions], -1)
    cont = torch.randn(2, t, cfg.num_continuous_actions, generator=g)
    with torch.no_grad():
        full = model(z, tau, d, actions_discrete=acts, actions_continuous=cont)
        _, cache = model.forward_frames(
            z[:, :past],
            tau[:, :past],
            d[:, :past],
            actions_discrete=acts[:, :past],
            actions_continuous=cont[:, :past],
        )

        def no_mask(*args):
            raise AssertionError("a single cached frame built a time mask")

        monkeypatch.setattr(transformer, "time_attention_mask", no_mask)
        last, _ = model.forward_frames(
            z[:, past:],
            tau[:, past:],
            d[:, past:],
            actions_discrete=acts[:, past:],
            actions_continuous=cont[:, past:],
            past_kv=cache,
            start=past,
        )
    torch.testing.assert_close(last, full[:, past:], atol=1e-5, rtol=1e-5)


def test_a_frame_beyond_the_window_still_gets_its_mask(monkeypatch):
    """With C or more cached frames the oldest lies outside the window: the mask is needed and built."""
    model = make_debug_model(context_length=3, check_inputs=False)
    cfg = model.config
    z = torch.randn(1, 4, cfg.latent_tokens, cfg.latent_dim)
    tau, d = torch.ones(1, 4) * 0.5, torch.full((1, 4), cfg.d_min)
    calls = []
    real = transformer.time_attention_mask
    monkeypatch.setattr(transformer, "time_attention_mask", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        full = model(z, tau, d)
        _, cache = model.forward_frames(z[:, :3], tau[:, :3], d[:, :3])  # 3 = C cached frames
        calls.clear()
        last, _ = model.forward_frames(z[:, 3:], tau[:, 3:], d[:, 3:], past_kv=cache, start=3)
    assert calls == [1]
    torch.testing.assert_close(last, full[:, 3:], atol=1e-5, rtol=1e-5)
