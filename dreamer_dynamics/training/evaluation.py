"""Validation, test and prediction of ``DynamicsModule``, as objects the module holds and calls.

``Evaluator`` scores one batch from explicit inputs: the network, the batch's draws (signal levels, step sizes
and noise, drawn by the module's own hooks with an evaluation generator, so a subclass's schedule is evaluated
the way it is trained), the conditioning and the teacher. Rollouts are scored with the energy score over
``rollout_samples`` samples per context (``scores.py``) in the dataset's own units: single-sample MSE rewards
blur and is logged only as a secondary figure. ``Predictor`` rolls out held-out windows or a context file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.model import RolloutConfig, rollout
from dreamer_dynamics.objective import shortcut_forcing_loss
from dreamer_dynamics.references import EvaluationReferences
from dreamer_dynamics.training.config import EvaluationConfig
from dreamer_dynamics.training.metrics import ValidationMetrics
from dreamer_dynamics.training.scores import oracle_scores
from dreamer_dynamics.units import LatentUnits

SPLITS = ("val", "test")  # the evaluation splits, each with its own metrics (log prefix)


@torch.no_grad()
def sample_rollouts(
    model: nn.Module,
    context: Tensor,
    horizon: int,
    actions: dict[str, Tensor],
    steps: list[int],
    samples: int,
    generator: torch.Generator,
    context_noise: float = RolloutConfig.context_noise,
) -> dict[int, Tensor]:
    """``samples`` rollouts of every context [B, T_ctx, N_b, D_b] (model units) for each K in ``steps`` ->
    K -> [S, B, horizon, N_b, D_b]; actions cover at least T_ctx + horizon frames."""
    total = context.shape[1] + horizon
    repeated = {k: v[:, :total].repeat(samples, *([1] * (v.dim() - 1))) for k, v in actions.items()}
    contexts = context.repeat(samples, 1, 1, 1)  # (S*B, T_ctx, N_b, D_b), sample-major
    shape = (samples, context.shape[0], horizon, *context.shape[2:])
    return {
        k: rollout(
            model,
            contexts,
            horizon,
            num_steps=k,
            context_noise=context_noise,
            generator=generator,
            **repeated,
        ).view(shape)
        for k in steps
    }


def in_data_units(
    units: LatentUnits, context: Tensor, target: Tensor, generated: dict[int, Tensor]
) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
    """Context, target and rollouts in the dataset's own units: scores then do not depend on how training
    standardises the latents."""
    back = units.destandardize
    return back(context), back(target), {k: back(g) for k, g in generated.items()}


class Evaluator(nn.Module):
    """The validation and test figures: the objective, the flow loss per tau bucket, scored rollouts."""

    def __init__(
        self,
        config: EvaluationConfig,
        rollout_config: RolloutConfig,
        k_max: int,
        references: EvaluationReferences | None = None,
    ) -> None:
        super().__init__()
        self.config, self.rollout_config, self.k_max = config, rollout_config, k_max
        self.references = references or EvaluationReferences()
        self.steps = config.scored_steps(k_max)  # the K values scored
        self.metrics = nn.ModuleDict({s: ValidationMetrics(self.steps, config.tau_buckets) for s in SPLITS})

    def losses(
        self,
        model: nn.Module,
        z1: Tensor,
        draws: tuple[Tensor, Tensor, Tensor],
        cond: dict[str, Tensor],
        generator: torch.Generator,
        split: str,
        **objective: Any,
    ) -> dict[str, Any]:
        """Update ``split``'s loss metrics from clean latents z1 [B, T, N_b, D_b] and the batch's draws
        (tau [B, T], d [B, T], z0 like z1); ``objective``: the teacher and weighting of the training loss.
        Returns the metrics to log, keyed by name."""
        tau, d, z0 = draws
        metrics, d_min = self.metrics[split], model.config.d_min
        # 1) The training objective itself (unnormalised, video rows only): total and bootstrap-frame loss.
        output = shortcut_forcing_loss(model, z1, tau, d, d_min=d_min, z0=z0, **objective, **cond)
        metrics.update_losses(output.loss, output.per_frame, output.bootstrap)
        # 2) Flow term (d = d_min) for every frame, tau uniform on the d_min grid, bucketed by tau.
        b, t = z1.shape[:2]
        k = self.k_max
        flow_tau = torch.randint(0, k, (b, t), generator=generator, device=z1.device).float() / k
        flow_d = torch.full_like(flow_tau, d_min)
        flow = shortcut_forcing_loss(model, z1, flow_tau, flow_d, d_min=d_min, z0=z0, **cond)
        metrics.update_flow_buckets(flow.per_frame, flow_tau)
        return metrics.as_dict(split)

    def runs_rollouts(self, batch_idx: int, frames: int) -> bool:
        """Whether batch ``batch_idx`` of windows of ``frames`` frames also runs scored rollouts."""
        return batch_idx < self.config.rollout_batches and frames > self.config.context_frames

    @torch.no_grad()
    def score_rollouts(
        self,
        model: nn.Module,
        batch: dict[str, Tensor],
        cond: dict[str, Tensor],
        generator: torch.Generator,
        split: str,
    ) -> dict[str, Tensor]:
        """S rollouts per K of the batch's first rows from ``context_frames`` frames, scored against the
        truth; returns the context, the truth and the first sample of each K, in the dataset's units."""
        rows, ctx, samples = self.config.rollout_rows, self.config.context_frames, self.config.rollout_samples
        z1 = batch["latents"][:rows]
        horizon = min(z1.shape[1] - ctx, self.config.rollout_horizon)
        context, target = z1[:, :ctx], z1[:, ctx : ctx + horizon]  # (R, ctx, N, D), (R, H, N, D)
        actions = {k: v[:rows] for k, v in cond.items()}
        noise = self.rollout_config.context_noise
        generated = sample_rollouts(model, context, horizon, actions, self.steps, samples, generator, noise)
        context, target, generated = in_data_units(model.latent_units, context, target, generated)
        hits = self.object_hits(generated, target)
        self.metrics[split].rollout.update(context, target, generated, hits, self.oracle(batch, target))
        return {"context": context, "target": target, **{f"k{k}": g[0] for k, g in generated.items()}}

    def object_hits(self, generated: dict[int, Tensor], target: Tensor) -> dict[int, Tensor] | None:
        """K -> bool [S, B, H]: every object of a generated frame within one pixel of its true position (data
        units; data with an object locator, e.g. the built-in world), else None."""
        locate = self.references.object_locator
        if locate is None:
            return None
        truth = locate(target)  # (B, H, objects, 2)
        return {k: ((locate(g) - truth).abs().amax(-1) <= 1).all(-1) for k, g in generated.items()}

    def oracle(self, batch: dict[str, Tensor], target: Tensor) -> dict[str, Tensor] | None:
        """The oracle's figures (``scores.oracle_scores``) on the rollout rows, target [R, H, N_b, D_b] in the
        dataset's units, for data with an oracle whose batches locate their windows; else None."""
        oracle = self.references.oracle
        if oracle is None or "episode" not in batch or "actions_discrete" not in batch:
            return None
        return oracle_scores(oracle, batch, self.config.context_frames, target, self.config.rollout_samples)

    def epoch_figures(self, split: str) -> dict[str, Tensor]:
        """The epoch's rollout scores of ``split`` (synchronised across ranks by torchmetrics), then reset."""
        scores = self.metrics[split].rollout
        computed = scores.compute() if scores.update_count else {}
        scores.reset()
        own_names = ("object", "oracle")  # val/object_accuracy_k4, val/oracle_es; the rest val/rollout_*
        return {
            f"{split}/{name}" if name.startswith(own_names) else f"{split}/rollout_{name}": value
            for name, value in computed.items()
        }


class Predictor:
    """``predict``: rollouts of held-out windows from their first ``context_frames`` frames, or of a context
    file's frames (``--data.predict_context``), returned in the dataset's own units."""

    def __init__(self, config: EvaluationConfig, rollout_config: RolloutConfig) -> None:
        self.config, self.rollout_config = config, rollout_config

    def __call__(
        self, model: nn.Module, batch: dict[str, Tensor], cond: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        if "context" in batch:
            return self.from_context(model, batch["context"], cond, generator)
        z1 = batch["latents"]  # (B, T, N_b, D_b), model units
        ctx, horizon = self.config.context_frames, self.config.predict_horizon
        if z1.shape[1] <= ctx and horizon is None:
            raise ConfigError(
                f"predict: windows of {z1.shape[1]} frames leave nothing after "
                f"evaluation.context_frames={ctx}; set model.evaluation.predict_horizon or longer windows"
            )
        horizon = horizon or z1.shape[1] - ctx
        for name, actions in cond.items():
            if actions.shape[1] < ctx + horizon:
                raise ConfigError(
                    f"predict: {name} cover {actions.shape[1]} frames, the rollout needs "
                    f"evaluation.context_frames + evaluation.predict_horizon = {ctx + horizon}"
                )
        cond = {k: v[:, : ctx + horizon] for k, v in cond.items()}
        steps, noise = self.rollout_config.num_steps, self.rollout_config.context_noise
        generated = rollout(
            model, z1[:, :ctx], horizon, num_steps=steps, context_noise=noise, generator=generator, **cond
        )
        back = model.latent_units.destandardize  # batches arrive standardised; files hold the data's units
        truth = z1[:, ctx : ctx + horizon]
        return {"rollout": back(generated), "context": back(z1[:, :ctx]), "ground_truth": back(truth), **cond}

    def from_context(
        self, model: nn.Module, context: Tensor, cond: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Roll out after every frame of a context [B, T_ctx, N_b, D_b] given in the dataset's units."""
        if not cond and (model.config.num_discrete_actions or model.config.num_continuous_actions):
            raise ConfigError(
                "predict: the model is action-conditioned but the context file has no actions; "
                "add actions_discrete / actions_continuous covering the frames to generate"
            )
        covered = min((a.shape[1] for a in cond.values()), default=None)
        horizon = self.config.predict_horizon or (covered - context.shape[1] if covered else 0)
        if horizon < 1:
            raise ConfigError(
                "predict: a context file needs actions beyond its context frames or "
                "model.evaluation.predict_horizon (frames to generate)"
            )
        cond = {k: v[:, : context.shape[1] + horizon] for k, v in cond.items()}
        steps = self.rollout_config.num_steps
        generated = model.rollout(context, horizon, num_steps=steps, generator=generator, **cond)
        return {"rollout": generated, "context": context, **cond}


__all__ = ["Evaluator", "Predictor", "in_data_units", "sample_rollouts"]
