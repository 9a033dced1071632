"""Latent units, rollouts and ``predict`` of ``DynamicsModule`` (docs/design.md §5, docs/training.md).

``InferenceMixin`` lives with the module (``DynamicsModule`` inherits it) and uses its ``model``, ``config``,
``hparams`` and the ``latent_mean`` / ``latent_std`` buffers built in ``DynamicsModule.__init__``. The network
works in standardised units (the DataModule's batches); ``rollout`` and ``predict`` take and return the
dataset's own units.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from dreamer_dynamics.data.stats import standardization
from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.model import rollout
from dreamer_dynamics.model.rollout import check_context_shape


class InferenceMixin:
    """Standardisation helpers, ``rollout`` (data units), ``rollout_standardized`` (model units), predict."""

    # ------------------------------------------------------------------ latent units
    def _standardization_tensors(self, stats: Optional[dict]) -> tuple[Tensor, Tensor]:
        """float32 (mean, floored std) [D_b] of a ``latent_stats`` record; identity (0, 1) for None."""
        dim = self.config.latent_dim
        if stats is None:
            return torch.zeros(dim), torch.ones(dim)
        mean, std = standardization(stats)
        if mean.shape != (dim,) or std.shape != (dim,):
            raise ValueError(
                f"DynamicsModule: latent_stats have {mean.shape[0]} channels, the model's latent_dim is {dim}"
            )
        return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))

    def standardize(self, z: Tensor) -> Tensor:
        """Dataset units -> model units, (z - mean) / std: what the DataModule's batches hold."""
        return ((z.float() - self.latent_mean.float()) / self.latent_std.float()).to(z.dtype)

    def destandardize(self, z: Tensor) -> Tensor:
        """Model units -> dataset units: z * std + mean (e.g. before decoding to pictures)."""
        return (z.float() * self.latent_std.float() + self.latent_mean.float()).to(z.dtype)

    def use_latent_stats(self, stats: Optional[dict], *, source: str = "the DataModule") -> None:
        """Check that batches from `source`, standardised with `stats`, are in this module's units; a
        module built without statistics adopts them (called by ``DynamicsDataModule.setup``, before
        callbacks copy the module)."""
        mine = self.hparams.get("latent_stats")
        if stats is None and mine is None:
            return
        if mine is None:
            rank_zero_info(f"DynamicsModule: using the latent_stats of {source}")
            self.hparams["latent_stats"] = stats  # saved with the checkpoint
            mean, std = self._standardization_tensors(stats)
            self.latent_mean.copy_(mean)
            self.latent_std.copy_(std)
            return
        same = (
            stats is not None
            and mine.get("scale", "pooled") == stats.get("scale", "pooled")
            and all(
                np.allclose(np.asarray(mine[key]), np.asarray(stats[key]), rtol=1e-6, atol=0)
                for key in ("mean", "std")
            )
        )
        if not same:
            theirs = "no standardisation" if stats is None else "other latent_stats"
            raise ValueError(
                f"DynamicsModule: its latent_stats differ from {source} ({theirs}); the model would see "
                "latents in other units. Build the module with the data's statistics, e.g. "
                "DynamicsModule.load_from_checkpoint(path, latent_stats=datamodule.latent_stats)"
            )

    # ------------------------------------------------------------------ rollouts and prediction
    def rollout(
        self,
        context: Union[Tensor, np.ndarray],
        horizon: int,
        *,
        actions_discrete: Union[Tensor, np.ndarray, None] = None,
        actions_continuous: Union[Tensor, np.ndarray, None] = None,
        num_steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        unconditional: bool = False,
    ) -> Union[Tensor, np.ndarray]:
        """Generate ``horizon`` frames after ``context`` [B, T_ctx, N_b, D_b] -> clean latents
        [B, horizon, N_b, D_b], both in the dataset's own units (standardised inside, docs/training.md); a
        numpy array when ``context`` is one, else a tensor on the module's device.

        Inputs may be numpy arrays or tensors on any device. Actions cover T_ctx + horizon frames; discrete
        actions may be [B, T] for a single categorical component. A model trained with actions needs them:
        pass ``unconditional=True`` to roll out with the learned "no action" embedding instead. Runs in eval
        mode under no-grad by itself (the previous mode is restored). ``num_steps`` = K Euler steps per frame
        (default ``rollout_steps``); ``generator`` makes the noise reproducible.
        """
        as_numpy = isinstance(context, np.ndarray)
        context = torch.as_tensor(context, device=self.device, dtype=torch.float32)
        check_context_shape(context, self.config)  # before standardising: the shapes, not a broadcast error
        if actions_discrete is not None:
            actions_discrete = torch.as_tensor(actions_discrete, device=self.device).long()
            if actions_discrete.dim() == 2:  # [B, T]: one categorical component
                actions_discrete = actions_discrete.unsqueeze(-1)
        if actions_continuous is not None:
            actions_continuous = torch.as_tensor(actions_continuous, device=self.device, dtype=torch.float32)
        missing = [
            name
            for name, given, needed in (
                ("actions_discrete", actions_discrete, self.config.num_discrete_actions),
                ("actions_continuous", actions_continuous, self.config.num_continuous_actions),
            )
            if needed and given is None
        ]
        if missing and not unconditional:
            raise ConfigError(
                f"rollout: the model is action-conditioned but {' and '.join(missing)} were not "
                "given; pass them (covering T_ctx + horizon frames) or unconditional=True"
            )
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                generated = self.destandardize(
                    self.rollout_standardized(
                        self.standardize(context),
                        horizon,
                        actions_discrete=actions_discrete,
                        actions_continuous=actions_continuous,
                        num_steps=num_steps,
                        generator=generator,
                    )
                )
        finally:
            self.train(was_training)
        return generated.cpu().numpy() if as_numpy else generated

    @torch.no_grad()
    def rollout_standardized(
        self,
        context: Tensor,
        horizon: int,
        *,
        actions_discrete: Optional[Tensor] = None,
        actions_continuous: Optional[Tensor] = None,
        num_steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """``rollout`` in model units: context and result standardised, like the DataModule's batches (for
        evaluation on batches; ``destandardize`` the result before decoding it)."""
        return rollout(
            self.model,
            context,
            horizon,
            actions_discrete=actions_discrete,
            actions_continuous=actions_continuous,
            num_steps=num_steps or self.hparams.rollout_steps,
            context_noise=self.hparams.context_noise,
            generator=generator,
        )

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Roll out each window from its first ``val_context_frames`` frames (saved by ``RolloutWriter``, in
        the dataset's own units); a batch from a context file (``"context"``, ``--data.predict_context``)
        rolls out from all its frames."""
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
        generated = self.rollout_standardized(z1[:, :ctx], horizon, generator=generator, **cond)
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
        generated = self.rollout(context, horizon, generator=self.evaluation_generator(batch_idx), **cond)
        return {"rollout": generated, "context": context, **cond}


__all__ = ["InferenceMixin"]
