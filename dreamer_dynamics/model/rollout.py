"""Action-conditioned rollouts with a KV cache of the time layers (paper Sec. 3.2, docs/design.md §5)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from dreamer_dynamics.objective import corrupt, euler_sample, is_power_of_two

from .attention import KV


class TimeKVCache:
    """Keys/values of the last committed frames, one (keys, values) pair per time layer.

    A frame at position t attends to t-C+1..t, so C-1 past frames are all a new frame can ever see: the cache
    is trimmed to them, which keeps the cost per generated frame flat however long the rollout gets. Keys are
    stored after QK-norm and RoPE at their absolute positions, so they never need recomputing.
    """

    def __init__(self, context_length: int) -> None:
        self.max_frames = context_length - 1
        self.layers: Optional[list[KV]] = None

    @property
    def num_frames(self) -> int:
        return 0 if self.layers is None else self.layers[0][0].shape[2]

    def append(self, new_kv: list[KV]) -> None:
        """Add the keys/values of newly committed frames (each (B, S*Hkv, T_new, E)) and drop the oldest."""
        if self.max_frames == 0 or not new_kv:
            return
        if self.layers is not None:
            new_kv = [
                (torch.cat((k0, k1), dim=2), torch.cat((v0, v1), dim=2))
                for (k0, v0), (k1, v1) in zip(self.layers, new_kv)
            ]
        self.layers = [(k[:, :, -self.max_frames :], v[:, :, -self.max_frames :]) for k, v in new_kv]


def context_signal_level(context_noise: float, k_max: int) -> float:
    """tau_ctx = 1 - context_noise snapped to the d_min grid (0.1 -> round(0.9 * 64) / 64 for k_max = 64).

    The paper's "tau_ctx = 0.1" is a noise amount: a signal level of 0.1 would be almost pure noise
    (docs/design.md §5).
    """
    if not 0.0 <= context_noise <= 1.0:
        raise ValueError(f"rollout: context_noise must be in [0, 1], got {context_noise}")
    return round((1.0 - context_noise) * k_max) / k_max


@torch.no_grad()
def check_context_shape(context: torch.Tensor, config: Any) -> None:
    """A ValueError naming the expected and the given shape unless context is (B, T_ctx, N_b, D_b) of the
    model's ``config``; called before anything is computed with it (also before standardising)."""
    expected = (config.latent_tokens, config.latent_dim)
    if context.dim() != 4 or tuple(context.shape[2:]) != expected:
        raise ValueError(
            f"rollout: context must have shape (B, T_ctx, {expected[0]}, {expected[1]}), "
            f"got {tuple(context.shape)}"
        )


def rollout(
    model: nn.Module,
    context: torch.Tensor,
    horizon: int,
    *,
    actions_discrete: Optional[torch.Tensor] = None,
    actions_continuous: Optional[torch.Tensor] = None,
    num_steps: int = 4,
    context_noise: float = 0.1,
    use_cache: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Generate `horizon` frames after `context` (B, T_ctx, N_b, D_b) -> clean latents (B, horizon, N_b, D_b).

    actions_* cover T_ctx + horizon frames (actions[t] led from frame t-1 to frame t). Context frames are
    corrupted to tau_ctx (fresh noise) and labelled (tau_ctx, d = 1/k_max): context frames are near-clean flow
    frames, the finest step size is what such frames carry in training. Each new frame starts from noise at
    tau = 0 and takes `num_steps` Euler steps of d = 1/num_steps; the result is re-corrupted to tau_ctx and
    committed as context. Noise is drawn in the same order with and without the cache, so both give the same
    frames (`use_cache=False` recomputes the whole sequence for every step: the reference, O(horizon^2)).
    """
    cfg = model.config
    check_context_shape(context, cfg)
    if horizon < 0:
        raise ValueError(f"rollout: horizon must be >= 0, got {horizon}")
    if not is_power_of_two(num_steps) or num_steps > cfg.k_max:
        raise ValueError(
            f"rollout: num_steps must be a power of two in [1, k_max={cfg.k_max}], got {num_steps}"
        )
    b, t_ctx = context.shape[:2]
    total = t_ctx + horizon
    for name, acts in (("actions_discrete", actions_discrete), ("actions_continuous", actions_continuous)):
        if acts is not None and tuple(acts.shape[:2]) != (b, total):
            raise ValueError(
                f"rollout: {name} must cover T_ctx + horizon = {total} frames: "
                f"shape (B, {total}, n), "
                f"got {tuple(acts.shape)}"
            )

    tau_ctx = context_signal_level(context_noise, cfg.k_max)
    d_min = cfg.d_min

    def labels(frames: int, level: float) -> torch.Tensor:
        return torch.full((b, frames), level, dtype=torch.float32, device=context.device)

    def noise() -> torch.Tensor:
        return torch.randn(
            (b, 1) + tuple(context.shape[2:]), generator=generator, device=context.device, dtype=context.dtype
        )

    def actions_for(lo: int, hi: int) -> dict:
        return {
            "actions_discrete": None if actions_discrete is None else actions_discrete[:, lo:hi],
            "actions_continuous": None if actions_continuous is None else actions_continuous[:, lo:hi],
        }

    ctx_noise = torch.randn(context.shape, generator=generator, device=context.device, dtype=context.dtype)
    history = corrupt(context, ctx_noise, labels(t_ctx, tau_ctx))  # (B, T_ctx, N_b, D_b)
    cache = TimeKVCache(cfg.context_length)
    if use_cache and t_ctx:
        _, kv = model.forward_frames(
            history, labels(t_ctx, tau_ctx), labels(t_ctx, d_min), **actions_for(0, t_ctx)
        )
        cache.append(kv)

    frames = []
    for step in range(horizon):
        pos = t_ctx + step
        if use_cache:

            def denoiser(z, tau, d, _pos=pos):  # one frame; earlier frames come from the cache
                return model.forward_frames(
                    z, tau, d, past_kv=cache.layers, start=_pos, **actions_for(_pos, _pos + 1)
                )[0]
        else:

            def denoiser(z, tau, d, _pos=pos):  # recompute everything: the reference path
                x1_hat = model(
                    torch.cat((history, z), 1),
                    torch.cat((labels(_pos, tau_ctx), tau), 1),
                    torch.cat((labels(_pos, d_min), d), 1),
                    **actions_for(0, _pos + 1),
                )
                return x1_hat[:, -1:]

        frame = euler_sample(denoiser, noise(), num_steps)  # (B, 1, N_b, D_b), at tau = 1
        frames.append(frame)
        committed = corrupt(frame, noise(), labels(1, tau_ctx))
        if use_cache:
            _, kv = model.forward_frames(
                committed,
                labels(1, tau_ctx),
                labels(1, d_min),
                past_kv=cache.layers,
                start=pos,
                **actions_for(pos, pos + 1),
            )
            cache.append(kv)
        else:
            history = torch.cat((history, committed), 1)
    if not frames:
        return context.new_zeros((b, 0) + tuple(context.shape[2:]))
    return torch.cat(frames, 1)
