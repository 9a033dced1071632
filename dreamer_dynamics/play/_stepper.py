"""Incremental rollout, one frame per ``step`` (the loop of ``model.rollout.rollout``, docs/design.md §5)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dreamer_dynamics.model.rollout import TimeKVCache, context_signal_level
from dreamer_dynamics.objective import corrupt, euler_sample


class RolloutStepper:
    """Generate frames after `context` (B, T_ctx, N_b, D_b) in model units, one ``step`` at a time.

    The actions given here cover the context frames; each ``step`` takes the action that leads to the frame
    it returns (actions[t] led from frame t-1 to frame t). The KV cache slides over the last C-1 frames.
    """

    def __init__(
        self,
        model: nn.Module,
        context: torch.Tensor,
        *,
        actions_discrete: Optional[torch.Tensor] = None,
        actions_continuous: Optional[torch.Tensor] = None,
        num_steps: int = 4,
        context_noise: float = 0.1,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        self.model, self.num_steps, self.generator = model, num_steps, generator
        cfg = model.config
        self.batch, self.position = context.shape[0], context.shape[1]
        self.shape = tuple(context.shape[2:])
        self.device, self.dtype = context.device, context.dtype
        self.tau_ctx = context_signal_level(context_noise, cfg.k_max)
        self.cache = TimeKVCache(cfg.context_length)
        with torch.no_grad():
            history = corrupt(context, self._noise(self.position), self._labels(self.position, self.tau_ctx))
            if self.position:
                _, kv = model.forward_frames(
                    history,
                    self._labels(self.position, self.tau_ctx),
                    self._labels(self.position, cfg.d_min),
                    actions_discrete=actions_discrete,
                    actions_continuous=actions_continuous,
                )
                self.cache.append(kv)

    def _labels(self, frames: int, level: float) -> torch.Tensor:
        return torch.full((self.batch, frames), level, dtype=torch.float32, device=self.device)

    def _noise(self, frames: int) -> torch.Tensor:
        size = (self.batch, frames) + self.shape
        return torch.randn(size, generator=self.generator, device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def step(
        self,
        actions_discrete: Optional[torch.Tensor] = None,
        actions_continuous: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The next frame (B, N_b, D_b) given its action: discrete (B, n) long, continuous (B, m)."""
        pos, model = self.position, self.model
        acts = {
            "actions_discrete": None if actions_discrete is None else actions_discrete[:, None],
            "actions_continuous": None if actions_continuous is None else actions_continuous[:, None],
        }

        def denoiser(z, tau, d):
            return model.forward_frames(z, tau, d, past_kv=self.cache.layers, start=pos, **acts)[0]

        frame = euler_sample(denoiser, self._noise(1), self.num_steps)  # (B, 1, N_b, D_b)
        committed = corrupt(frame, self._noise(1), self._labels(1, self.tau_ctx))
        _, kv = model.forward_frames(
            committed,
            self._labels(1, self.tau_ctx),
            self._labels(1, model.config.d_min),
            past_kv=self.cache.layers,
            start=pos,
            **acts,
        )
        self.cache.append(kv)
        self.position += 1
        return frame[:, 0]
