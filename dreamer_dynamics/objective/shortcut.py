"""Shortcut forcing with diffusion forcing and x-prediction (paper Sec. 3.2, Eq. 7-8; docs/design.md §3).

Model-agnostic: the loss takes any ``denoiser(z_tilde, tau, d, **cond) -> x1_hat`` callable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dreamer_dynamics.objective.flow import Denoiser, corrupt, expand_like, ramp_weight, velocity


@dataclass
class ShortcutForcingLoss:
    """Result of :func:`shortcut_forcing_loss`."""

    loss: Tensor  # scalar: mean over all (b, t) of w(tau_t) * L_t
    per_frame: Tensor  # [B, T] unweighted L_t (flow term at d_min, bootstrap term above it)
    bootstrap: Tensor  # [B, T] bool, frames with d > d_min
    terms: dict[str, Tensor] = field(default_factory=dict)  # named scalars that sum to ``loss``
    x1_hat: Tensor | None = None  # [B, T, ...] the student's x-prediction (for extra heads / logging)


def _frame_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error over each frame's latent elements: [B, T, ...] -> [B, T], in at least fp32
    (so that a bf16 network output is reduced in full precision)."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return (a.to(dtype) - b.to(dtype)).square().flatten(2).mean(-1)


def _select_rows(cond: dict, rows: Tensor, batch: int) -> dict:
    """Slice every per-row conditioning tensor (dim 0 == B) to ``rows``; pass everything else through."""
    return {
        k: v[rows] if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == batch else v
        for k, v in cond.items()
    }


@torch.no_grad()
def bootstrap_velocity_target(
    teacher: Denoiser, z_tilde: Tensor, tau: Tensor, d: Tensor, bootstrap: Tensor, **cond
) -> Tensor:
    """sg((b' + b'') / 2) of Eq. 7: the average velocity of two half steps of size d/2, under no-grad.

    Frames that are not bootstrap frames (d = d_min) keep their student inputs and labels in both passes, so
    the causal context each bootstrap frame sees is the one the student saw.
    """
    half = d / 2
    d_half = torch.where(bootstrap, half, d)
    b1 = velocity(teacher(z_tilde, tau, d_half, **cond), z_tilde, tau)  # b'
    moved = expand_like(bootstrap, z_tilde)
    z_mid = torch.where(moved, z_tilde + expand_like(half, z_tilde).to(z_tilde.dtype) * b1, z_tilde)  # z'
    tau_mid = torch.where(bootstrap, tau + half, tau)
    b2 = velocity(teacher(z_mid, tau_mid, d_half, **cond), z_mid, tau_mid)  # b''
    return (b1 + b2) / 2


def shortcut_forcing_loss(
    denoiser: Denoiser,
    z1: Tensor,
    tau: Tensor,
    d: Tensor,
    *,
    d_min: float,
    z0: Tensor | None = None,
    teacher: Denoiser | None = None,
    teacher_always: bool = False,
    weight: Callable[[Tensor], Tensor] = ramp_weight,
    **cond,
) -> ShortcutForcingLoss:
    """Shortcut-forcing loss of one batch (docs/design.md §3.3-3.7).

    z1: clean latents [B, T, ...]; tau, d: float [B, T] on their grids (see ``sample_signal_and_step``);
    z0: noise like z1 (fresh Gaussian if None); teacher: denoiser for the bootstrap targets (default: the
    student's own online weights under stop-gradient, as in the paper; pass EMA weights to use those);
    teacher_always: run the two teacher passes even when no frame bootstraps (on the first row, result
    unused): sharded training (FSDP) needs every rank to make the same forward calls, whatever it drew.
    weight: per-frame loss weight w(tau) on both terms (default Eq. 8's ramp; ``flow.LOSS_WEIGHTINGS``).
    cond: conditioning forwarded to every denoiser call (per-row tensors are sliced for the teacher passes).
    """
    if tau.shape != d.shape or z1.shape[:2] != tau.shape:
        raise ValueError(
            f"tau {tuple(tau.shape)} and d {tuple(d.shape)} must both be [B, T] = {tuple(z1.shape[:2])} of z1"
        )
    if bool((d < d_min).any()) or bool((tau >= 1).any()) or bool((tau < 0).any()):
        raise ValueError("d must be >= d_min and tau must lie in [0, 1): tau = 1 is never a training level")
    batch = z1.shape[0]
    z0 = torch.randn_like(z1) if z0 is None else z0
    z_tilde = corrupt(z1, z0, tau)
    bootstrap = d > d_min
    rows = bootstrap.any(dim=1).nonzero().squeeze(1)
    teacher_rows = rows if rows.numel() > 0 or not teacher_always else rows.new_zeros(1)
    if teacher_rows.numel() > 0:
        # Teacher passes only on rows holding a bootstrap frame (docs/design.md §3.7), never building a graph;
        # they run before the student, while no autograd graph is alive (faster; docs/experiments.md).
        target = bootstrap_velocity_target(
            teacher or denoiser,
            z_tilde[teacher_rows],
            tau[teacher_rows],
            d[teacher_rows],
            bootstrap[teacher_rows],
            **_select_rows(cond, teacher_rows, batch),
        )
    x1_hat = denoiser(z_tilde, tau, d, **cond)  # (B, T, ...)
    per_frame = _frame_mse(x1_hat, z1)  # flow term at d_min: ||x1_hat - z1||^2
    if rows.numel() > 0:
        # (1 - tau)^2 ||(x1_hat - z_tilde)/(1 - tau) - target||^2 == ||x1_hat - z_tilde - (1 - tau)target||^2;
        # the right-hand form is identical in value and gradient and avoids dividing by a small 1 - tau.
        one_minus_tau = expand_like(1 - tau[rows], target).to(target.dtype)
        boot_rows = _frame_mse(x1_hat[rows] - z_tilde[rows], one_minus_tau * target)
        boot = torch.zeros_like(per_frame).index_copy(0, rows, boot_rows)
        per_frame = torch.where(bootstrap, boot, per_frame)

    weighted = weight(tau) * per_frame  # the same weight on both terms (Eq. 8: the ramp)
    count = weighted.numel()  # count-weighted: each batch is a mean over its frames
    terms = {
        "flow": weighted.masked_fill(bootstrap, 0).sum() / count,
        "bootstrap": weighted.masked_fill(~bootstrap, 0).sum() / count,
    }
    return ShortcutForcingLoss(
        loss=weighted.mean(), per_frame=per_frame, bootstrap=bootstrap, terms=terms, x1_hat=x1_hat
    )
