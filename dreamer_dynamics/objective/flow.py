"""Flow-matching primitives in the paper's convention (docs/design.md §2): tau = 0 noise, tau = 1 clean data.

Every function takes per-frame signal levels ``tau`` of shape [B, T] (or any leading shape) and broadcasts
them over the trailing latent dimensions of the tensors it is given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dreamer_dynamics.objective.sampling import is_power_of_two

Denoiser = Callable[..., Tensor]  # denoiser(z_tilde, tau, d, **cond) -> x1_hat, tau and d float [B, T]


def expand_like(level: Tensor, target: Tensor) -> Tensor:
    """View a per-frame level [B, T] as [B, T, 1, ..., 1] so that it broadcasts against ``target``."""
    if target.shape[: level.ndim] != level.shape:
        raise ValueError(
            f"level of shape {tuple(level.shape)} does not match the leading dims of a tensor of shape "
            f"{tuple(target.shape)}"
        )
    return level.reshape(*level.shape, *([1] * (target.ndim - level.ndim)))


def corrupt(z1: Tensor, z0: Tensor, tau: Tensor) -> Tensor:
    """Eq. 1/6: z_tilde = (1 - tau) * z0 + tau * z1, with z0 ~ N(0, I) noise and z1 the clean latent."""
    t = expand_like(tau, z1).to(z1.dtype)
    return (1 - t) * z0 + t * z1


def velocity(x1_hat: Tensor, z_tilde: Tensor, tau: Tensor) -> Tensor:
    """Velocity implied by an x-prediction: v_hat = (x1_hat - z_tilde) / (1 - tau).

    Undefined at tau = 1 (a clean input has nowhere left to flow); training never samples tau = 1 and
    sampling stops one step before it.
    """
    t = expand_like(tau, z_tilde).to(z_tilde.dtype)
    return (x1_hat - z_tilde) / (1 - t)


def ramp_weight(tau: Tensor) -> Tensor:
    """Eq. 8: w(tau) = 0.9 * tau + 0.1 — the weight grows toward clean data, where the learning signal is."""
    return 0.9 * tau + 0.1


def uniform_weight(tau: Tensor) -> Tensor:
    """w(tau) = 1: every signal level counts alike. The noisiest levels are where a frame must be predicted
    from the frames before it (the dynamics); Eq. 8's ramp gives them a tenth of the weight of clean ones."""
    return torch.ones_like(tau)


# The per-frame loss weights by name (``DynamicsModule(loss_weighting=...)``).
LOSS_WEIGHTINGS: dict[str, Callable[[Tensor], Tensor]] = {"ramp": ramp_weight, "uniform": uniform_weight}


def euler_sample(denoiser: Denoiser, z0: Tensor, num_steps: int, **cond) -> Tensor:
    """Integrate from noise (tau = 0) to clean data (tau = 1) in ``num_steps`` Euler steps of d = 1/num_steps.

    z0: noise [B, T, ...]. Each step calls ``denoiser(z, tau, d, **cond)`` with tau, d float [B, T] and moves
    z <- z + d * v_hat. The last step lands exactly on the x-prediction, since d = 1 - tau there.
    Gradient tracking follows the caller's mode (wrap in ``torch.no_grad()`` for inference).
    """
    if not is_power_of_two(num_steps):
        raise ValueError(f"num_steps must be a power of two >= 1 (it picks d = 1/num_steps), got {num_steps}")
    z = z0
    leading = z0.shape[:2]
    d = torch.full(leading, 1.0 / num_steps, dtype=torch.float32, device=z0.device)
    for step in range(num_steps):
        tau = torch.full(leading, step / num_steps, dtype=torch.float32, device=z0.device)
        x1_hat = denoiser(z, tau, d, **cond)
        z = z + expand_like(d, z).to(z.dtype) * velocity(x1_hat, z, tau)
    return z
