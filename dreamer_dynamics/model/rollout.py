"""Action-conditioned rollouts with a KV cache of the time layers (paper Sec. 3.2, docs/design.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.field_docs import document_fields
from dreamer_dynamics.objective import corrupt, euler_sample, is_power_of_two

from .attention import KV

DEFAULT_ROLLOUT_STEPS = 4  # K: Euler steps per generated frame (paper Sec. 3.2: K = 4)
DEFAULT_CONTEXT_NOISE = 0.1  # noise amount of context frames: tau_ctx = 1 - 0.1 on the grid (design §5)


@document_fields  # the field comments below become the --help text
@dataclass
class RolloutConfig:
    """Defaults of a rollout: ``model.rollout``, ``predict``, validation rollouts and an export use them."""

    num_steps: int = DEFAULT_ROLLOUT_STEPS  # K: Euler steps per generated frame (paper Sec. 3.2: 4)
    context_noise: float = DEFAULT_CONTEXT_NOISE  # noise amount of context frames (docs/design.md §5)

    def __post_init__(self) -> None:
        if not is_power_of_two(self.num_steps):
            raise ConfigError(f"rollout.num_steps must be a power of two, got {self.num_steps}")
        if not 0.0 <= self.context_noise <= 1.0:
            raise ConfigError(f"rollout.context_noise must be in [0, 1], got {self.context_noise}")


class TimeKVCache:
    """Keys/values of the last committed frames, one (keys, values) pair per time layer.

    A frame at position t attends to t-C+1..t, so C-1 past frames are all a new frame can ever see: the cache
    is trimmed to them, which keeps the cost per generated frame flat however long the rollout gets. Keys are
    stored after QK-norm and RoPE at their absolute positions, so they never need recomputing.
    """

    def __init__(self, context_length: int) -> None:
        self.max_frames = context_length - 1
        self.layers: list[KV] | None = None

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
    """tau_ctx = 1 - context_noise snapped to the d_min grid (0.1 -> round(0.9 * 64) / 64 for k_max = 64),
    at most 1 - 1/k_max.

    The paper's "tau_ctx = 0.1" is a noise amount: a signal level of 0.1 would be almost pure noise
    (docs/design.md §5). Where it rounds to 1 (k_max * context_noise < 0.5) it becomes 1 - d_min, the cleanest
    level training draws: tau = 1 is never trained (§3.2). Rollouts and the training context prefix both
    take their level from here.
    """
    if not 0.0 <= context_noise <= 1.0:
        raise ValueError(f"rollout: context_noise must be in [0, 1], got {context_noise}")
    return min(round((1.0 - context_noise) * k_max), k_max - 1) / k_max


Actions = dict[
    str, "torch.Tensor | None"
]  # {"actions_discrete": (B, T, n) | None, "actions_continuous": ...}


def _join_actions(past: torch.Tensor | None, new: torch.Tensor | None, past_frames: int, new_frames: int):
    """Concatenate two action chunks along time; a None chunk becomes missing labels (discrete -1, continuous
    NaN), which the action embedding treats exactly like no actions at all."""
    if past is None and new is None:
        return None
    ref = past if past is not None else new
    fill = float("nan") if ref.is_floating_point() else -1

    def filled(x: torch.Tensor | None, frames: int) -> torch.Tensor:
        if x is not None:
            return x
        return torch.full((ref.shape[0], frames, ref.shape[2]), fill, dtype=ref.dtype, device=ref.device)

    return torch.cat((filled(past, past_frames), filled(new, new_frames)), 1)


class RolloutStepper:
    """Incremental KV-cached rollout: holds the cache, takes one frame's actions, returns the next frame.

    Context frames (B, T_ctx, N_b, D_b), in model units, are corrupted to tau_ctx (fresh noise) and labelled
    (tau_ctx, d = 1/k_max): near-clean flow frames, carrying the finest step size as in training. Each `step`
    starts the next frame from noise at tau = 0, takes `num_steps` Euler steps of d = 1/num_steps, re-corrupts
    the result to tau_ctx and commits it as context. The cache keeps the last C-1 frames (TimeKVCache), so a
    stepper runs indefinitely at a flat cost per frame. `use_cache=False` recomputes the whole history for
    every network call instead: the reference, O(n^2), drawing noise in the same order, so both give the same
    frames. actions[t] led from frame t-1 to frame t (docs/design.md §6): `step` takes the new frame's own.
    """

    @torch.no_grad()
    def __init__(
        self,
        model: nn.Module,
        context: torch.Tensor,
        *,
        actions_discrete: torch.Tensor | None = None,
        actions_continuous: torch.Tensor | None = None,
        num_steps: int = DEFAULT_ROLLOUT_STEPS,
        context_noise: float = DEFAULT_CONTEXT_NOISE,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> None:
        cfg = model.config
        check_context_shape(context, cfg)
        b, t_ctx = context.shape[:2]
        actions = {"actions_discrete": actions_discrete, "actions_continuous": actions_continuous}
        for name, acts in actions.items():
            if acts is not None and (acts.dim() != 3 or tuple(acts.shape[:2]) != (b, t_ctx)):
                raise ValueError(
                    f"RolloutStepper: {name} must cover the T_ctx = {t_ctx} context frames: "
                    f"shape (B, {t_ctx}, n), got {tuple(acts.shape)}"
                )
        self.model, self.generator, self.use_cache = model, generator, use_cache
        self.num_steps = num_steps
        self._check_num_steps()
        self.tau_ctx = context_signal_level(context_noise, cfg.k_max)
        self.position = t_ctx  # absolute index of the next frame
        self._committed = 0  # frames run into the cache (or the history) so far
        self._frame_shape = (b, 1) + tuple(context.shape[2:])
        self._like = context.new_empty(())  # dtype / device of every frame and its noise
        self._cache = TimeKVCache(cfg.context_length)
        self._history: torch.Tensor | None = None  # uncached path: every committed frame (B, T, N_b, D_b)
        self._history_actions: Actions = dict.fromkeys(actions)
        self._pending: tuple[torch.Tensor, Actions] | None = None  # the last frame, corrupted, not yet run
        noise = torch.randn(context.shape, generator=generator, device=context.device, dtype=context.dtype)
        self._commit(corrupt(context, noise, self._labels(t_ctx, self.tau_ctx)), actions)

    @torch.no_grad()
    def step(
        self, actions_discrete: torch.Tensor | None = None, actions_continuous: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Actions of the next frame only ((B, n_discrete) long, (B, n_continuous) float) -> (B, N_b, D_b)."""
        self._check_num_steps()
        actions = {}
        for name, acts in (
            ("actions_discrete", actions_discrete),
            ("actions_continuous", actions_continuous),
        ):
            if acts is not None and (acts.dim() != 2 or acts.shape[0] != self._frame_shape[0]):
                raise ValueError(
                    f"RolloutStepper.step: {name} must be one frame's actions of shape "
                    f"(B={self._frame_shape[0]}, n), got {tuple(acts.shape)}"
                )
            actions[name] = None if acts is None else acts[:, None]  # (B, 1, n)
        if self._pending is not None:  # commit the previous frame now: its keys are needed from here on
            self._commit(*self._pending)
            self._pending = None
        frame = euler_sample(self._denoiser(actions), self._noise(), self.num_steps)  # (B, 1, N_b, D_b)
        self._pending = (corrupt(frame, self._noise(), self._labels(1, self.tau_ctx)), actions)
        self.position += 1
        return frame[:, 0]

    def _denoiser(self, actions: Actions):
        """f(z, tau, d) of the new frame at `position`; earlier frames come from the cache or the history."""
        model, pos = self.model, self.position
        if self.use_cache:

            def cached(z, tau, d):
                return model.forward_frames(z, tau, d, past_kv=self._cache.layers, start=pos, **actions)[0]

            return cached
        tau_ctx, d_min = self.tau_ctx, model.config.d_min
        joined = {k: _join_actions(self._history_actions[k], a, pos, 1) for k, a in actions.items()}

        def recompute(z, tau, d):
            tau_all = torch.cat((self._labels(pos, tau_ctx), tau), 1)
            d_all = torch.cat((self._labels(pos, d_min), d), 1)
            return model(torch.cat((self._history, z), 1), tau_all, d_all, **joined)[:, -1:]

        return recompute

    def _commit(self, frames: torch.Tensor, actions: Actions) -> None:
        """Make corrupted frames (B, T, N_b, D_b) context of every later frame: run them into the cache (or
        append them to the history)."""
        t, start = frames.shape[1], self._committed
        if self.use_cache:
            if t:
                tau, d = self._labels(t, self.tau_ctx), self._labels(t, self.model.config.d_min)
                _, kv = self.model.forward_frames(
                    frames, tau, d, past_kv=self._cache.layers, start=start, **actions
                )
                self._cache.append(kv)
        else:
            self._history = frames if self._history is None else torch.cat((self._history, frames), 1)
            for k, acts in actions.items():
                self._history_actions[k] = _join_actions(self._history_actions[k], acts, start, t)
        self._committed += t

    def _check_num_steps(self) -> None:
        k_max = self.model.config.k_max
        if not is_power_of_two(self.num_steps) or self.num_steps > k_max:
            raise ValueError(
                f"rollout: num_steps must be a power of two in [1, k_max={k_max}], got {self.num_steps}"
            )

    def _labels(self, frames: int, level: float) -> torch.Tensor:
        return torch.full(
            (self._frame_shape[0], frames), level, dtype=torch.float32, device=self._like.device
        )

    def _noise(self) -> torch.Tensor:
        like = self._like
        return torch.randn(self._frame_shape, generator=self.generator, device=like.device, dtype=like.dtype)


def check_context_shape(context: torch.Tensor, config: Any) -> None:
    """A ValueError naming the expected and the given shape unless context is (B, T_ctx, N_b, D_b) of the
    model's ``config``; called before anything is computed with it (also before standardising)."""
    expected = (config.latent_tokens, config.latent_dim)
    if context.dim() != 4 or tuple(context.shape[2:]) != expected:
        raise ValueError(
            f"rollout: context must have shape (B, T_ctx, {expected[0]}, {expected[1]}), "
            f"got {tuple(context.shape)}"
        )


@torch.no_grad()
def rollout(
    model: nn.Module,
    context: torch.Tensor,
    horizon: int,
    *,
    actions_discrete: torch.Tensor | None = None,
    actions_continuous: torch.Tensor | None = None,
    num_steps: int = DEFAULT_ROLLOUT_STEPS,
    context_noise: float = DEFAULT_CONTEXT_NOISE,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate `horizon` frames after `context` (B, T_ctx, N_b, D_b), model units -> (B, horizon, N_b, D_b).

    actions_* cover T_ctx + horizon frames (actions[t] led from frame t-1 to frame t). A loop over
    `RolloutStepper.step`; see there for the sampling conventions.
    """
    cfg = model.config
    check_context_shape(context, cfg)
    if horizon < 0:
        raise ValueError(f"rollout: horizon must be >= 0, got {horizon}")
    b, t_ctx = context.shape[:2]
    total = t_ctx + horizon
    actions = {"actions_discrete": actions_discrete, "actions_continuous": actions_continuous}
    for name, acts in actions.items():
        if acts is not None and tuple(acts.shape[:2]) != (b, total):
            raise ValueError(
                f"rollout: {name} must cover T_ctx + horizon = {total} frames: "
                f"shape (B, {total}, n), got {tuple(acts.shape)}"
            )
    stepper = RolloutStepper(
        model,
        context,
        **{k: None if a is None else a[:, :t_ctx] for k, a in actions.items()},
        num_steps=num_steps,
        context_noise=context_noise,
        generator=generator,
        use_cache=use_cache,
    )
    frames = [
        stepper.step(**{k: None if a is None else a[:, t] for k, a in actions.items()})
        for t in range(t_ctx, total)
    ]
    if not frames:
        return context.new_zeros((b, 0) + tuple(context.shape[2:]))
    return torch.stack(frames, 1)


def rollout_actions(cfg, device: torch.device, discrete, continuous, unconditional: bool) -> Actions:
    """Rollout actions from tensors or numpy arrays: discrete long (a [B, T] array is one component),
    continuous float32, on `device`. An action-conditioned model needs them unless `unconditional`."""
    if discrete is not None:
        discrete = torch.as_tensor(discrete, device=device).long()
        if discrete.dim() == 2:  # [B, T]: one categorical component
            discrete = discrete.unsqueeze(-1)
    if continuous is not None:
        continuous = torch.as_tensor(continuous, device=device, dtype=torch.float32)
    actions = {"actions_discrete": discrete, "actions_continuous": continuous}
    needed = {"actions_discrete": cfg.num_discrete_actions, "actions_continuous": cfg.num_continuous_actions}
    missing = [name for name, acts in actions.items() if needed[name] and acts is None]
    if missing and not unconditional:
        raise ConfigError(
            f"rollout: the model is action-conditioned but {' and '.join(missing)} were not "
            "given; pass them (covering T_ctx + horizon frames) or unconditional=True"
        )
    return actions
