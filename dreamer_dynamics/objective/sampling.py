"""Per-frame step sizes and signal levels of shortcut + diffusion forcing (docs/design.md §3.1-3.2, Eq. 4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def is_power_of_two(n: int) -> bool:
    """Whether n is 1, 2, 4, ...: the step counts K (and K_max) of the grid d = 1/K (docs/design.md §2)."""
    return n >= 1 and n & (n - 1) == 0


def check_k_max(k_max: int) -> int:
    """Return log2(k_max) after checking that k_max is a power of two (so d_min = 1/k_max is dyadic)."""
    if not is_power_of_two(k_max):
        raise ValueError(f"k_max must be a power of two >= 1, got {k_max}")
    return int(math.log2(k_max))


def step_level_probs(k_max: int, d_min_share: float | None = None) -> Tensor:
    """Probabilities of K = 2^j for j = 0..log2(k_max).

    The paper's default is uniform over the powers of two (uniform in log2 K, NOT P(d) ∝ 1/d). ``d_min_share``
    optionally puts that share of frames at d_min = 1/k_max (peers use 0.75-0.87) and spreads the rest evenly.
    """
    levels = check_k_max(k_max) + 1
    if d_min_share is None or levels == 1:
        return torch.full((levels,), 1.0 / levels)
    if not 0.0 <= d_min_share <= 1.0:
        raise ValueError(f"d_min_share must lie in [0, 1], got {d_min_share}")
    probs = torch.full((levels,), (1.0 - d_min_share) / (levels - 1))
    probs[-1] = d_min_share
    return probs


def sample_signal_and_step(
    batch: int,
    time: int,
    k_max: int,
    *,
    generator: torch.Generator | None = None,
    d_min_share: float | None = None,
    bootstrap_row_share: float | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw (tau, d), float32 [batch, time], independently per frame (diffusion forcing).

    K ~ U{1, 2, 4, ..., k_max} (or ``d_min_share`` at K = k_max), d = 1/K, then tau ~ U{0, d, ..., 1 - d}: the
    grid reached by that step size. tau = 1 is never drawn. All values are dyadic, hence exact in float32.
    ``bootstrap_row_share``: only that share of rows draws K so; the other rows hold every frame at d_min.
    The teacher passes run only on rows holding a bootstrap frame (docs/design.md §3.7), so this sets the cost
    of a step; None = every row (the paper).
    """
    probs = step_level_probs(k_max, d_min_share).to(device)
    gen_device = generator.device if generator is not None else device
    level = torch.multinomial(probs.to(gen_device), batch * time, replacement=True, generator=generator)
    steps = torch.pow(2.0, level.to(torch.float32)).reshape(batch, time)  # K per frame
    u = torch.rand(batch, time, generator=generator, device=gen_device)
    if bootstrap_row_share is not None:
        if not 0.0 <= bootstrap_row_share <= 1.0:
            raise ValueError(f"bootstrap_row_share must lie in [0, 1], got {bootstrap_row_share}")
        rows = torch.rand(batch, generator=generator, device=gen_device) < bootstrap_row_share
        steps = torch.where(rows[:, None], steps, torch.full_like(steps, float(k_max)))
    index = torch.floor(u * steps).clamp_max(steps - 1)  # uniform over {0, ..., K - 1}
    tau, d = index / steps, 1.0 / steps
    return tau.to(device), d.to(device)


def with_context_prefix(
    tau: Tensor, d: Tensor, frames: int, level: float, d_min: float
) -> tuple[Tensor, Tensor]:
    """(tau, d) [B, T] with the first ``frames`` frames of every row set to the rollout context's labels.

    A rollout always starts from context frames at (tau_ctx, d_min) (docs/design.md §5), whereas diffusion
    forcing draws every frame's level independently, so the first frames of a training row are mostly
    noisy and have no history to be predicted from. ``frames`` > 0 makes them the context a rollout starts
    from (docs/design.md §3.2); 0 returns the inputs unchanged (the paper's schedule). ``level`` is the
    rollouts' own, ``model.context_signal_level``, which is below 1 (tau = 1 is never trained).
    """
    if frames < 0 or frames >= tau.shape[1]:
        raise ValueError(
            f"context_prefix_frames={frames} must be >= 0 and leave a frame to predict in rows of "
            f"{tau.shape[1]} frames"
        )
    if frames == 0:
        return tau, d
    tau, d = tau.clone(), d.clone()
    tau[:, :frames] = level
    d[:, :frames] = d_min
    return tau, d
