"""Validation/test step of ``DynamicsModule``: flow loss per tau bucket, bootstrap loss, rollout errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dreamer_dynamics.objective import sample_signal_and_step, shortcut_forcing_loss
from dreamer_dynamics.training.metrics import ValidationMetrics

if TYPE_CHECKING:
    from dreamer_dynamics.module import DynamicsModule


def evaluation_step(module: "DynamicsModule", batch: dict[str, Tensor], batch_idx: int,
                    metrics: ValidationMetrics, prefix: str) -> dict[str, Any]:
    """Update ``metrics`` from one batch and log them as ``{prefix}/...``; returns the rollouts of the
    rollout batches (``{"rollout_images": {...}}``) for ``RolloutImageLogger``.

    All noise comes from ``module.evaluation_generator(batch_idx)``: the numbers are comparable across epochs
    and validating never changes the training noise stream. Runs on the EMA weights when an
    ``EMAWeightAveraging`` callback is active (it swaps them in for validation).
    """
    z1 = batch["latents"]  # (B, T, N_b, D_b)
    b, t = z1.shape[:2]
    k_max = module.config.k_max
    generator = module.evaluation_generator(batch_idx)
    cond = module.conditioning(batch)

    # 1) The training objective itself (unnormalised, no image rows): total and bootstrap-frame loss.
    tau, d = sample_signal_and_step(b, t, k_max, generator=generator, d_min_share=module.hparams.d_min_share,
                                    device=module.device)
    z0 = torch.randn(z1.shape, generator=generator, device=z1.device, dtype=z1.dtype)
    output = shortcut_forcing_loss(module.model, z1, tau, d, d_min=module.d_min, z0=z0,
                                   teacher=module.teacher_model(), **cond)
    metrics.update_losses(output.loss, output.per_frame, output.bootstrap)

    # 2) Flow loss at d_min for every frame, tau uniform on the d_min grid, bucketed by tau.
    flow_tau = torch.randint(0, k_max, (b, t), generator=generator, device=z1.device).float() / k_max
    metrics.update_flow_buckets(module.flow_frame_loss(module.model, z1, z0, flow_tau, **cond), flow_tau)

    result: dict[str, Any] = {}
    ctx = module.hparams.val_context_frames
    if batch_idx < module.hparams.val_rollout_batches and t > ctx:
        result["rollout_images"] = _rollouts(module, batch, cond, generator, metrics)
    module.log_dict(metrics.as_dict(prefix), on_step=False, on_epoch=True, batch_size=b)
    return result


def _rollouts(module: "DynamicsModule", batch: dict[str, Tensor], cond: dict[str, Tensor],
              generator: torch.Generator, metrics: ValidationMetrics) -> dict[str, Tensor]:
    """K-step rollouts of the first rows from ``val_context_frames`` context frames; updates rollout MSEs."""
    rows = module.hparams.val_rollout_rows
    ctx = module.hparams.val_context_frames
    z1 = batch["latents"][:rows]
    horizon = min(z1.shape[1] - ctx, module.hparams.val_rollout_horizon)
    context, target = z1[:, :ctx], z1[:, ctx : ctx + horizon]  # (R, ctx, N, D), (R, H, N, D)
    actions = {k: v[:rows, : ctx + horizon] for k, v in cond.items()}
    metrics.update_copy_last(context, target)
    result = {"context": context, "target": target}
    for num_steps in module.val_rollout_steps:
        generated = module.rollout(context, horizon, num_steps=num_steps, generator=generator, **actions)
        metrics.update_rollout(num_steps, generated, target)
        result[f"k{num_steps}"] = generated
    return result
