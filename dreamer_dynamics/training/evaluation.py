"""Validation and test of ``DynamicsModule``: the objective, flow loss per signal level, scored rollouts.

``EvaluationMixin`` lives with the module (``DynamicsModule`` inherits it), so it uses the module's own hooks:
noise levels, noise and conditioning are drawn exactly as in training, through ``sample_signal_and_step`` and
``sample_noise`` with an evaluation generator, so a subclass's schedule is evaluated the way it is trained.

Rollouts are scored with the energy score over ``val_rollout_samples`` samples per context (``scores.py``), in
the dataset's own units: single-sample MSE rewards blur and is logged only as a secondary figure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor

from dreamer_dynamics.model import rollout
from dreamer_dynamics.objective import shortcut_forcing_loss
from dreamer_dynamics.training.metrics import ValidationMetrics
from dreamer_dynamics.training.scores import oracle_scores


class EvaluationMixin:
    """``validation_step`` / ``test_step`` and the epoch-end rollout-score logging of ``DynamicsModule``."""

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """Logs ``val/*``: loss, bootstrap loss, flow loss per tau bucket, rollout energy scores per K."""
        return self.evaluation_step(batch, batch_idx, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """Same metrics as validation on the test windows, logged as ``test/*``."""
        return self.evaluation_step(batch, batch_idx, self.test_metrics, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_rollout_scores(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self.log_rollout_scores(self.test_metrics, "test")

    def evaluation_step(
        self, batch: dict[str, Tensor], batch_idx: int, metrics: ValidationMetrics, prefix: str
    ) -> dict[str, Any]:
        """Update ``metrics`` from one batch; returns ``{"rollout_images": {...}}`` for the rollout batches.

        All noise comes from ``evaluation_generator(batch_idx)``: the figures are comparable across epochs and
        evaluating never touches the training noise stream. Runs on the EMA weights where an averaging
        callback swaps them in.
        """
        z1 = batch["latents"]  # (B, T, N_b, D_b)
        b, t = z1.shape[:2]
        generator = self.evaluation_generator(batch_idx)
        cond = self.conditioning(batch)

        # 1) The training objective itself (unnormalised, video rows only): total and bootstrap-frame loss.
        tau, d = self.sample_signal_and_step(batch, generator)
        z0 = self.sample_noise(batch, generator)
        output = shortcut_forcing_loss(
            self.model,
            z1,
            tau,
            d,
            d_min=self.config.d_min,
            z0=z0,
            teacher=self.teacher_model(),
            teacher_always=self.sharded(),
            weight=self.loss_weight,
            **cond,
        )
        metrics.update_losses(output.loss, output.per_frame, output.bootstrap)

        # 2) Flow term (d = d_min) for every frame, tau uniform on the d_min grid, bucketed by tau.
        k_max = self.config.k_max
        flow_tau = torch.randint(0, k_max, (b, t), generator=generator, device=z1.device).float() / k_max
        flow = shortcut_forcing_loss(
            self.model,
            z1,
            flow_tau,
            torch.full_like(flow_tau, self.config.d_min),
            d_min=self.config.d_min,
            z0=z0,
            **cond,
        )
        metrics.update_flow_buckets(flow.per_frame, flow_tau)
        self.log_dict(metrics.as_dict(prefix), on_step=False, on_epoch=True, batch_size=b)

        ctx = self.hparams.val_context_frames
        if batch_idx < self.hparams.val_rollout_batches and t > ctx:
            return {"rollout_images": self.score_rollouts(batch, cond, generator, metrics)}
        return {}

    @torch.no_grad()
    def score_rollouts(
        self,
        batch: dict[str, Tensor],
        cond: dict[str, Tensor],
        generator: torch.Generator,
        metrics: ValidationMetrics,
    ) -> dict[str, Tensor]:
        """S sampled rollouts per K of the first rows from ``val_context_frames`` frames, scored against the
        truth; returns the context, the truth and the first sample of each K (for pictures), model units."""
        rows, ctx = self.hparams.val_rollout_rows, self.hparams.val_context_frames
        samples = self.hparams.val_rollout_samples
        z1 = batch["latents"][:rows]
        horizon = min(z1.shape[1] - ctx, self.hparams.val_rollout_horizon)
        context, target = z1[:, :ctx], z1[:, ctx : ctx + horizon]  # (R, ctx, N, D), (R, H, N, D)
        actions = {k: v[:rows] for k, v in cond.items()}
        generated = self.sample_rollouts(
            context, horizon, actions, self.val_rollout_steps, samples, generator
        )
        units = self.score_units(context, target, generated)
        metrics.rollout.update(
            *units, self.object_hits(generated, target), self.oracle_figures(batch, units[1], samples)
        )
        return {"context": context, "target": target, **{f"k{k}": g[0] for k, g in generated.items()}}

    @torch.no_grad()
    def sample_rollouts(
        self,
        context: Tensor,
        horizon: int,
        actions: dict[str, Tensor],
        steps: list[int],
        samples: int,
        generator: torch.Generator,
        model: Optional[torch.nn.Module] = None,
    ) -> dict[int, Tensor]:
        """``samples`` rollouts of every context [B, T_ctx, N_b, D_b] (model units) for each K in ``steps`` ->
        K -> [S, B, horizon, N_b, D_b]; actions cover at least T_ctx + horizon frames; ``model``: the network
        to roll out (default ``self.model``)."""
        total = context.shape[1] + horizon
        repeated = {k: v[:, :total].repeat(samples, *([1] * (v.dim() - 1))) for k, v in actions.items()}
        contexts = context.repeat(samples, 1, 1, 1)  # (S*B, T_ctx, N_b, D_b), sample-major
        return {
            k: rollout(
                model or self.model,
                contexts,
                horizon,
                num_steps=k,
                context_noise=self.hparams.context_noise,
                generator=generator,
                **repeated,
            ).view(samples, context.shape[0], horizon, *context.shape[2:])
            for k in steps
        }

    def score_units(self, context: Tensor, target: Tensor, generated: dict[int, Tensor]) -> tuple:
        """Rollouts are scored in the dataset's own units: the figures then do not depend on how training
        standardises the latents (the energy-score ratio to copy-last is unchanged by one global scale)."""
        return (
            self.destandardize(context),
            self.destandardize(target),
            {k: self.destandardize(g) for k, g in generated.items()},
        )

    def object_hits(self, generated: dict[int, Tensor], target: Tensor) -> Optional[dict[int, Tensor]]:
        """K -> bool [S, B, H]: every object of a generated frame within one pixel of its true position (data
        whose DataModule defines ``object_locator``, e.g. the built-in world), else None."""
        locate = self.object_locator()
        if locate is None:
            return None
        truth = locate(target)  # (B, H, objects, 2)
        return {k: ((locate(g) - truth).abs().amax(-1) <= 1).all(-1) for k, g in generated.items()}

    def object_locator(self) -> Optional[Callable[[Tensor], Tensor]]:
        """Model-unit latents [..., N_b, D_b] -> object positions [..., objects, 2] for data that defines them
        (the built-in world: ``DynamicsDataModule.object_locator``), else None."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        locate = getattr(datamodule, "object_locator", None)
        if locate is None:
            return None
        return lambda latents: locate(self.destandardize(latents))

    def oracle_figures(self, batch: dict[str, Tensor], target: Tensor, samples: int) -> Optional[dict]:
        """The oracle's figures (``scores.oracle_scores``) on the rollout rows, target [R, H, N_b, D_b] in the
        dataset's units, for data with an oracle (``DynamicsDataModule.oracle``: the built-in world) whose
        batches locate their windows; else None."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        oracle = getattr(datamodule, "oracle", None)
        if oracle is None or "episode" not in batch or "actions_discrete" not in batch:
            return None
        return oracle_scores(oracle, batch, self.hparams.val_context_frames, target, samples)

    def log_rollout_scores(self, metrics: ValidationMetrics, prefix: str) -> None:
        """Log the epoch's rollout scores (synchronised across ranks by torchmetrics) and reset them."""
        if metrics.rollout.update_count:
            scores = metrics.rollout.compute()
            self.log_dict(
                {
                    f"{prefix}/{name}"
                    if name.startswith(("object", "oracle"))
                    else f"{prefix}/rollout_{name}": value
                    for name, value in scores.items()
                },
                sync_dist=False,
            )
        metrics.rollout.reset()


__all__ = ["EvaluationMixin"]
