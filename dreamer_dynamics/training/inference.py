"""Latent units and ``predict`` of ``DynamicsModule`` (docs/design.md §5, docs/training.md).

``InferenceMixin`` lives with the module (``DynamicsModule`` inherits it) and uses its ``model``, ``config``
and ``hparams``. The network works in model units (the DataModule's batches); ``standardize`` /
``destandardize`` convert through the ``LatentUnits`` the network carries (``model.latent_units``), and
``model.rollout`` (data units) / ``dreamer_dynamics.model.rollout`` (model units) generate frames.
"""

from __future__ import annotations

from torch import Tensor

from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.model import rollout


class InferenceMixin:
    """Data units <-> model units and ``predict_step`` (rollouts of held-out windows or a context file)."""

    def standardize(self, z: Tensor) -> Tensor:
        """Dataset units -> model units (``model.latent_units``): what the DataModule's batches hold."""
        return self.model.latent_units.standardize(z)

    def destandardize(self, z: Tensor) -> Tensor:
        """Model units -> dataset units (``model.latent_units``), e.g. before decoding to pictures."""
        return self.model.latent_units.destandardize(z)

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Roll out each window from its first ``val_context_frames`` frames (saved by ``RolloutWriter``, in
        the dataset's own units); a batch from a context file (``"context"``, ``--data.predict_context``)
        rolls
        out from all its frames."""
        if "context" in batch:
            return self._predict_from_context(batch, batch_idx)
        z1 = batch["latents"]  # (B, T, N_b, D_b)
        ctx = self.hparams.val_context_frames
        if z1.shape[1] <= ctx and self.hparams.predict_horizon is None:
            raise ValueError(
                f"predict: windows of {z1.shape[1]} frames leave nothing after "
                f"val_context_frames={ctx}; set model.predict_horizon or longer windows"
            )
        horizon = self.hparams.predict_horizon or z1.shape[1] - ctx
        cond = self.conditioning(batch)
        for name, actions in cond.items():
            if actions.shape[1] < ctx + horizon:
                raise ValueError(
                    f"predict: {name} cover {actions.shape[1]} frames, the rollout needs "
                    f"val_context_frames + predict_horizon = {ctx + horizon}"
                )
        cond = {k: v[:, : ctx + horizon] for k, v in cond.items()}
        generator = self.evaluation_generator(batch_idx)
        generated = rollout(
            self.model,
            z1[:, :ctx],
            horizon,
            num_steps=self.hparams.rollout_steps,
            context_noise=self.hparams.context_noise,
            generator=generator,
            **cond,
        )
        truth = z1[:, ctx : ctx + horizon]
        # batches arrive standardised; files hold the dataset's own units
        return {
            "rollout": self.destandardize(generated),
            "context": self.destandardize(z1[:, :ctx]),
            "ground_truth": self.destandardize(truth),
            **cond,
        }

    def _predict_from_context(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        context = batch["context"]  # (B, T_ctx, N_b, D_b)
        cond = self.conditioning(batch)
        if not cond and (self.config.num_discrete_actions or self.config.num_continuous_actions):
            raise ConfigError(
                "predict: the model is action-conditioned but the context file has no actions; "
                "add actions_discrete / actions_continuous covering the frames to generate"
            )
        covered = min((a.shape[1] for a in cond.values()), default=None)
        horizon = self.hparams.predict_horizon or (covered - context.shape[1] if covered else 0)
        if horizon < 1:
            raise ConfigError(
                "predict: a context file needs actions beyond its context frames or "
                "model.predict_horizon (frames to generate)"
            )
        cond = {k: v[:, : context.shape[1] + horizon] for k, v in cond.items()}
        generated = self.model.rollout(
            context, horizon, generator=self.evaluation_generator(batch_idx), **cond
        )
        return {"rollout": generated, "context": context, **cond}


__all__ = ["InferenceMixin"]
