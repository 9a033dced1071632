"""``DynamicsModule``: the LightningModule that trains the dynamics transformer with shortcut forcing.

Convention (docs/design.md §2): signal level tau = 0 is pure noise, tau = 1 is clean data.

One training step (docs/design.md §3): draw per-frame (tau, d) and the image rows, compute the
shortcut-forcing loss, divide every named term (``shortcut`` = flow + bootstrap, plus any extra terms) by its
running RMS (``LossNormalizer``, paper Sec. 3) and sum. Every random draw goes through the module's own
``torch.Generator`` (stored in checkpoints), so a resumed run repeats an uninterrupted one bit for bit.
Subclasses change one piece by overriding a hook (the sampling hooks take an optional generator: evaluation
passes its own):

=========================================  ==========================================================
hook                                       default
=========================================  ==========================================================
``sample_signal_and_step(batch)``          per-frame (tau, d) by ``sample_signal_and_step`` (design §3.1-2)
``sample_image_rows(batch)``               ``image_row_share`` of the rows trained as images (§3.8)
``sample_noise(batch)``                    z0 ~ N(0, I) like the latents
``conditioning(batch)``                    the batch's ``actions_discrete`` / ``actions_continuous``
``extra_loss_terms(batch, output)``        ``{}``; returned terms are normalised and summed like the rest
``extra_loss_names`` (class attribute)     names of the extra terms (their RMS buffers exist from the start)
=========================================  ==========================================================
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks.weight_averaging import WeightAveraging
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from dreamer_dynamics import compat
from dreamer_dynamics.data.reading.datamodule import DynamicsDataModule
from dreamer_dynamics.errors import ConfigError, NonFiniteLossError
from dreamer_dynamics.field_docs import config_from
from dreamer_dynamics.model import (
    DynamicsConfig,
    DynamicsTransformer,
    RolloutConfig,
    context_signal_level,
)
from dreamer_dynamics.objective import (
    LOSS_WEIGHTINGS,
    LossNormalizer,
    ShortcutForcingLoss,
    sample_signal_and_step,
    shortcut_forcing_loss,
    with_context_prefix,
)
from dreamer_dynamics.parallelize import clip_gradients, is_fsdp, parallelize_model, total_grad_norm
from dreamer_dynamics.references import EvaluationReferences
from dreamer_dynamics.training.config import EvaluationConfig, ObjectiveConfig
from dreamer_dynamics.training.ema import averaging_started
from dreamer_dynamics.training.evaluation import Evaluator, Predictor
from dreamer_dynamics.training.optim import (
    WarmupCosineLR,
    default_optimizer,
    learning_rates,
    parameter_groups,
)
from dreamer_dynamics.training.rng import (
    collect_global_rng_state,
    gather_from_ranks,
    restore_global_rng_state,
)
from dreamer_dynamics.units import LatentUnits, latent_units_or_identity

SHORTCUT_TERMS = ("flow", "bootstrap")  # named terms of ShortcutForcingLoss.terms (always logged raw)


class DynamicsModule(pl.LightningModule):
    """Dynamics transformer + shortcut-forcing objective + loss normaliser (docs/design.md §7).

    Args:
        model: sizes of the transformer; ``latent_tokens``, ``latent_dim`` and the action spec are linked from
            the DataModule by the CLI.
        optimizer: optimiser factory ``params -> Optimizer``; None = AdamW(3e-4, betas (0.9, 0.95), wd 0.01).
            Weight decay applies to matrices only (norms, biases, embeddings are never decayed).
        scheduler: ``optimizer -> LRScheduler`` stepped every optimiser step; None = ``WarmupCosineLR`` (1000
            warmup steps, cosine to 10 % over the Trainer's ``max_steps``).
        objective: the shortcut-forcing objective and its schedule (``ObjectiveConfig``).
        evaluation: what validation, test and predict score and generate (``EvaluationConfig``).
        rollout: K and context noise of rollouts: ``model.rollout``, ``predict``, validation and an export
            (``RolloutConfig``); training labels its context prefix with the same noise.
        noise_seed: seed of the training-noise generator; None = ``torch.initial_seed()`` (as set by
            ``seed_everything``).
        latent_units: the ``LatentUnits`` the batches are standardised with, ``datamodule.latent_units``
            (linked by the CLI; pass it yourself in Python). Stored in the hyperparameters as its plain dict,
            so checkpoints and exports carry it; ``model.rollout`` and ``predict`` take and return the
            dataset's own units. None = identity; ``fit`` / ``validate`` refuse a DynamicsDataModule whose
            units differ.
        references: the data's object locator and oracle for the rollout metrics, ``datamodule.references``
            (linked by the CLI; ``EvaluationReferences``); None = neither. Not a hyper-parameter: it describes
            the data.
    """

    extra_loss_names: tuple[str, ...] = ()

    def __init__(
        self,
        model: DynamicsConfig,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        objective: ObjectiveConfig = ObjectiveConfig(),
        evaluation: EvaluationConfig = EvaluationConfig(),
        rollout: RolloutConfig = RolloutConfig(),
        noise_seed: int | None = None,
        latent_units: LatentUnits | dict | None = None,
        references: EvaluationReferences | None = None,
    ) -> None:
        super().__init__()
        model = config_from(DynamicsConfig, model, "DynamicsModule: model")
        objective = config_from(ObjectiveConfig, objective, "DynamicsModule: objective")
        evaluation = config_from(EvaluationConfig, evaluation, "DynamicsModule: evaluation")
        rollout = config_from(RolloutConfig, rollout, "DynamicsModule: rollout")
        units = latent_units_or_identity(latent_units, model.latent_dim, "DynamicsModule: latent_units")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "latent_units", "references"])
        # plain values: checkpoints load with weights_only=True
        self.hparams.update(
            model=model,
            objective=objective,
            evaluation=evaluation,
            rollout=rollout,
            latent_units=units.to_dict(),
        )
        self.config, self.objective = model, objective
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.d_min = model.d_min
        # w(tau), on training and validation losses
        self.loss_weight = LOSS_WEIGHTINGS[objective.loss_weighting]
        self.model = DynamicsTransformer(model)
        # Data units <-> model units (docs/training.md) and rollout defaults, carried by the network itself:
        # `model.rollout` and `model.save_pretrained` then match an export of this module exactly.
        self.model.latent_units = units
        self.model.rollout_defaults = rollout
        self.evaluator = Evaluator(evaluation, rollout, model.k_max, references)
        self.predictor = Predictor(evaluation, rollout)
        # Registered last: its buffers come last in buffers(), which EMAWeightAveraging pairs by position.
        self.loss_normalizer = LossNormalizer(
            decay=objective.loss_norm_decay,
            enabled=objective.normalize_losses,
            names=self.normalized_term_names(),
        )
        self._noise_generator: torch.Generator | None = None
        # restored generator state (or a seed), used once by noise_generator
        self._pending_generator_state: Tensor | int | None = None
        self._pending_global_rng: dict[str, Any] | None = None  # restored at the first resumed batch

    def normalized_term_names(self) -> tuple[str, ...]:
        """Names of the terms the loss normaliser divides by their running RMS (and sums into the loss)."""
        core = SHORTCUT_TERMS if self.objective.normalize_shortcut_terms_separately else ("shortcut",)
        return core + tuple(self.extra_loss_names)

    # ------------------------------------------------------------------ overridable hooks
    def sample_signal_and_step(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-frame signal level tau and step size d, float32 [B, T] (docs/design.md §3.1-3.2); the first
        ``context_prefix_frames`` of every row at the rollout context's labels.

        ``generator``: None = the training-noise generator; evaluation passes its own, so a subclass's
        schedule is evaluated exactly as it is trained."""
        b, t = batch["latents"].shape[:2]
        share = self.objective.d_min_share
        if generator is None and self.global_step < self.objective.bootstrap_warmup_steps:
            share = 1.0  # training during the bootstrap warm-up: flow term only
        tau, d = sample_signal_and_step(
            b,
            t,
            self.config.k_max,
            generator=generator or self.noise_generator,
            d_min_share=share,
            bootstrap_row_share=self.objective.bootstrap_row_share,
            device=self.device,
        )
        level = context_signal_level(self.model.rollout_defaults.context_noise, self.config.k_max)
        return with_context_prefix(tau, d, self.objective.context_prefix_frames, level, self.d_min)

    def sample_image_rows(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> Tensor | None:
        """Bool [B]: rows trained as images, without attention across time (docs/design.md §3.8)."""
        generator = generator or self.noise_generator
        b = batch["latents"].shape[0]
        u = torch.rand(b, generator=generator, device=generator.device)
        return (u < self.objective.image_row_share).to(self.device)

    def sample_noise(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """z0 ~ N(0, I) shaped like the latents (drawn from the module's generator for exact resumes)."""
        z1 = batch["latents"]
        generator = generator or self.noise_generator
        return torch.randn(z1.shape, generator=generator, device=z1.device, dtype=z1.dtype)

    def conditioning(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Keyword arguments passed to every denoiser call: the batch's actions, where present."""
        return {k: batch[k] for k in ("actions_discrete", "actions_continuous") if k in batch}

    def extra_loss_terms(self, batch: dict[str, Tensor], output: ShortcutForcingLoss) -> dict[str, Tensor]:
        """Extra named scalar loss terms (e.g. reward or policy heads), normalised and summed like the rest.

        ``output`` holds the student prediction ``output.x1_hat`` and the per-frame losses. Declare the names
        in the class attribute ``extra_loss_names``: their RMS buffers then exist before EMA/FSDP wrap it.
        """
        return {}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        z1 = batch["latents"]  # (B, T, N_b, D_b)
        tau, d = self.sample_signal_and_step(batch)  # (B, T) each
        output = shortcut_forcing_loss(
            self.model,
            z1,
            tau,
            d,
            d_min=self.d_min,
            z0=self.sample_noise(batch),
            teacher=self.teacher_model(),
            teacher_always=self.sharded(),
            weight=self.loss_weight,
            image_rows=self.sample_image_rows(batch),
            **self.conditioning(batch),
        )
        if self.objective.normalize_shortcut_terms_separately:
            terms = dict(output.terms)
        else:
            terms = {"shortcut": output.loss}
        extra = self.extra_loss_terms(batch, output)
        clash = set(extra) & (set(terms) | set(SHORTCUT_TERMS) | {"shortcut"})
        if clash:
            raise ValueError(f"extra_loss_terms returned names that already exist: {sorted(clash)}")
        terms.update(extra)
        self.check_finite(terms)
        normalized = self.loss_normalizer(terms)
        loss = torch.stack(list(normalized.values())).sum()

        logs = {
            "train/loss": loss.detach(),
            "train/loss_unnormalized": output.loss.detach() + sum(v.detach() for v in extra.values()),
        }
        logs.update({f"train/{name}": value.detach() for name, value in output.terms.items()})
        for name, value in terms.items():
            logs[f"train/{name}"] = value.detach()
            logs[f"train/{name}_rms"] = self.loss_normalizer.rms(name)
        if self._trainer is not None and self.trainer.optimizers:
            logs.update(learning_rates(self.trainer.optimizers[0]))
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=z1.shape[0])
        # progress bar: the unnormalised loss (the normalised one is ~1 by design, docs/design.md §3.9)
        self.log(
            "loss",
            logs["train/loss_unnormalized"],
            prog_bar=True,
            logger=False,
            on_step=True,
            batch_size=z1.shape[0],
        )
        return loss

    # ------------------------------------------------------------------ evaluation (training/evaluation.py)
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """Logs ``val/*``: loss, bootstrap loss, flow loss per tau bucket, rollout energy scores per K."""
        return self.evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """Same figures as validation on the test windows, logged as ``test/*``."""
        return self.evaluate(batch, batch_idx, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.evaluator.epoch_figures("val"), sync_dist=False)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.evaluator.epoch_figures("test"), sync_dist=False)

    def evaluate(self, batch: dict[str, Tensor], batch_idx: int, split: str) -> dict[str, Any]:
        """One evaluation batch: the draws come from this module's hooks and ``evaluation_generator``, so the
        figures are comparable across epochs and never touch the training noise. Returns
        ``{"rollout_images": {...}}`` (the dataset's units) for the rollout batches."""
        z1 = batch["latents"]  # (B, T, N_b, D_b)
        generator = self.evaluation_generator(batch_idx)
        tau, d = self.sample_signal_and_step(batch, generator)
        draws = (tau, d, self.sample_noise(batch, generator))
        cond = self.conditioning(batch)
        objective = dict(teacher=self.teacher_model(), teacher_always=self.sharded(), weight=self.loss_weight)
        figures = self.evaluator.losses(self.model, z1, draws, cond, generator, split, **objective)
        self.log_dict(figures, on_step=False, on_epoch=True, batch_size=z1.shape[0])
        if not self.evaluator.runs_rollouts(batch_idx, z1.shape[1]):
            return {}
        return {"rollout_images": self.evaluator.score_rollouts(self.model, batch, cond, generator, split)}

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Rollouts of a window's first ``evaluation.context_frames`` frames, or of a context file, in the
        dataset's own units (saved by ``RolloutWriter``)."""
        return self.predictor(
            self.model, batch, self.conditioning(batch), self.evaluation_generator(batch_idx)
        )

    def check_finite(self, terms: dict[str, Tensor]) -> None:
        """Stop the run (NonFiniteLossError, one line naming the step) before a non-finite loss term reaches
        the running RMS, the gradients or a checkpoint. Every rank takes the same decision (one all-reduce of
        a flag), so none is left waiting in a collective the others abandoned."""
        values = torch.stack([v.detach().float() for v in terms.values()])
        finite = bool(torch.isfinite(values).all())
        if self._trainer is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            bad = [name for name, v in zip(terms, values.tolist()) if not math.isfinite(v)]
            raise NonFiniteLossError(
                f"training stopped at step {self.global_step + 1}: the loss is not finite "
                f"({', '.join(bad) or 'on another rank'}); nothing of this step was applied or saved. "
                "Check the data (`dreamer-dynamics-data validate ROOT`) or lower the learning rate"
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Before clipping: the norm the clip threshold is compared with (reduced over FSDP shards).
        grad_norm = total_grad_norm(self, self.trainer.strategy)
        self.log("train/grad_norm", grad_norm, on_step=True, on_epoch=False)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Trainer's ``gradient_clip_val``, also under FSDP (``parallelize.clip_gradients``)."""
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def sharded(self) -> bool:
        """True under FSDP (1 or 2): every forward all-gathers, so every rank must make the same calls."""
        if self._trainer is None:
            return False
        return is_fsdp(self.trainer.strategy) or getattr(self, "device_mesh", None) is not None

    def teacher_model(self) -> torch.nn.Module | None:
        """Bootstrap teacher: None (online weights, paper) or the EMA weights when ``ema_teacher=True``.

        The EMA weights are the ``AveragedModel`` held by the weight-averaging callback (``EMA`` in the
        configs; one copy of the weights in memory, not two); its ``device`` must be the training device.
        Before the callback's first update (``update_starting_at_step``) the average still holds the initial
        weights, so the teacher is the online network until then.
        """
        if not self.objective.ema_teacher:
            return None
        for callback in self.trainer.callbacks if self._trainer is not None else []:
            if not isinstance(callback, WeightAveraging) or compat.averaged_model(callback) is None:
                continue
            if not averaging_started(callback):
                return None
            teacher = compat.averaged_model(callback).module.model
            if next(teacher.parameters()).device != self.device:
                where = next(teacher.parameters()).device
                raise RuntimeError(
                    f"ema_teacher=True: the EMA weights live on {where}, training on "
                    f"{self.device}; set the EMA callback's `device` to the training device"
                )
            return teacher
        raise RuntimeError(
            "ema_teacher=True needs an EMA callback (dreamer_dynamics.training.EMA or "
            "lightning.pytorch.callbacks.EMAWeightAveraging) in trainer.callbacks"
        )

    def setup(self, stage: str) -> None:
        """Refuse a DynamicsDataModule whose batches are in other units than this module's."""
        data = self.trainer.datamodule if self._trainer is not None else None
        if isinstance(data, DynamicsDataModule) and data.latent_units != self.model.latent_units:
            raise ConfigError(
                f"DynamicsModule: its latent_units differ from those of the DataModule of {data.root}, "
                "so the model would see latents in other units; build it with "
                "DynamicsModule(..., latent_units=datamodule.latent_units) (the CLI links them), or "
                "DynamicsModule.load_from_checkpoint(path, latent_units=datamodule.latent_units)"
            )

    def configure_model(self) -> None:
        """The config's activation checkpointing and per-block compile, and FSDP2 sharding (every block its
        own ``fully_shard`` unit) under ``ModelParallelStrategy``, which sets ``device_mesh``: see
        ``dreamer_dynamics.parallelize``. Idempotent (Lightning calls it once per stage)."""
        parallelize_model(self.model, mesh=self.device_mesh)

    def __getstate__(self) -> dict[str, Any]:
        # Lightning's EMAWeightAveraging deep-copies the module; the jsonargparse optimiser/scheduler
        # factories reference the CLI parser -> Trainer -> launcher (process handles), which cannot be copied
        # and are not needed by an averaged copy.
        state = super().__getstate__()
        state["optimizer_factory"] = state["scheduler_factory"] = None
        return state

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        groups = parameter_groups(self.model)
        optimizer = (self.optimizer_factory or default_optimizer)(groups)
        scheduler = (self.scheduler_factory or WarmupCosineLR)(optimizer)
        fill_total = isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None
        if fill_total and self._trainer is not None:
            total = self.trainer.estimated_stepping_batches
            scheduler.total_steps = int(total) if total != float("inf") else None
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ randomness and checkpoints
    @property
    def noise_generator(self) -> torch.Generator:
        """Generator of all training randomness; per-rank seed, state saved in checkpoints."""
        if self._noise_generator is None or self._noise_generator.device != self.device:
            generator = torch.Generator(device=self.device)
            generator.manual_seed((self._noise_base_seed() + 1_000_003 * self.global_rank) % 2**63)
            pending, self._pending_generator_state = self._pending_generator_state, None
            if isinstance(pending, int):
                generator.manual_seed(pending)
            elif pending is not None:
                generator.set_state(pending)
            self._noise_generator = generator
        return self._noise_generator

    def _noise_base_seed(self) -> int:
        seed = self.hparams.noise_seed
        return int(seed) if seed is not None else int(torch.initial_seed())

    def evaluation_generator(self, batch_idx: int) -> torch.Generator:
        """Fresh generator per evaluation batch: validation/prediction noise is reproducible and never touches
        the training generator (so validating more or less often cannot change training)."""
        base = self.hparams.noise_seed if self.hparams.noise_seed is not None else 0
        generator = torch.Generator(device=self.device)
        seed = int(base) * 7919 + 104_729 * batch_idx + 15_485_863 * self.global_rank
        generator.manual_seed(seed % 2**63)
        return generator

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every rank's random state (a collective: Lightning builds the checkpoint on every rank, rank 0
        # writes it), restored on the same rank (docs/training.md, "Exact resume"). Everything stored is a
        # tensor, dict, list, number or string: torch.load(weights_only=True) safe.
        state = self._noise_generator.get_state() if self._noise_generator is not None else None
        local = {
            "noise_generator": state if state is not None else self._pending_generator_state,
            **collect_global_rng_state(),
        }
        per_rank = gather_from_ranks(local)
        checkpoint["dreamer_dynamics_rng"] = {"world_size": len(per_rank), "ranks": per_rank}
        hparams = checkpoint.get("hyper_parameters")
        if hparams is not None:  # the setting groups as plain dicts (weights-only loading)
            checkpoint["hyper_parameters"] = {
                k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in hparams.items()
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("dreamer_dynamics_rng")
        if not rng:
            return
        if self._trainer is None:
            # load_from_checkpoint for evaluation: leave the caller's global RNG alone.
            return
        ranks = rng["ranks"]  # one random state per rank
        world, rank = self.trainer.world_size, self.global_rank
        self._noise_generator = None
        if len(ranks) != world:
            # Other world size: the saved streams cannot be assigned to ranks. Re-derive each rank's noise
            # stream from (noise seed, rank, global step): deterministic, not a continuation of the saved run.
            step = int(checkpoint.get("global_step", 0))
            sequence = np.random.SeedSequence([self._noise_base_seed(), rank, step])
            seed = sequence.generate_state(1, np.uint64)[0]
            self._pending_generator_state = int(seed) % 2**63  # a seed: valid for a generator on any device
            rank_zero_warn(
                f"the checkpoint holds the random state of {len(ranks)} ranks, this run has "
                f"{world}: each rank's noise stream is re-derived from (noise_seed, rank, global "
                "step), so the resumed run is reproducible but does not repeat the saved run "
                "exactly"
            )
            return
        mine = ranks[rank]
        self._pending_generator_state = mine.get("noise_generator")
        # The global RNGs are restored just before the first resumed batch: Lightning draws a DataLoader seed
        # from the torch RNG whenever it starts a loader, and the resumed run starts one that the
        # uninterrupted run did not. Restoring after that keeps code that draws from the global RNG exact.
        self._pending_global_rng = mine

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_global_rng is not None:
            restore_global_rng_state(self._pending_global_rng)
            self._pending_global_rng = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any) -> DynamicsModule:
        """Lightning's loader, returning the module in eval mode (ready for ``rollout``); ``weights_only``
        defaults to True (checkpoints hold only tensors and plain containers)."""
        kwargs.setdefault("weights_only", True)
        return super().load_from_checkpoint(*args, **kwargs).eval()


__all__ = ["DynamicsModule", "SHORTCUT_TERMS"]
