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
from typing import Any, Literal, Optional, Union

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
from dreamer_dynamics.model import (
    DEFAULT_CONTEXT_NOISE,
    DEFAULT_ROLLOUT_STEPS,
    DynamicsConfig,
    DynamicsTransformer,
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
from dreamer_dynamics.training.ema import averaging_started
from dreamer_dynamics.training.evaluation import EvaluationMixin
from dreamer_dynamics.training.inference import InferenceMixin
from dreamer_dynamics.training.metrics import ValidationMetrics
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


def check_settings(
    image_row_share: float,
    bootstrap_row_share: float | None,
    val_rollout_samples: int,
    loss_weighting: str,
    context_prefix_frames: int,
    val_context_frames: int,
) -> None:
    """One ConfigError line for the first DynamicsModule setting out of its range."""
    if not 0.0 <= image_row_share <= 1.0:
        raise ConfigError(f"DynamicsModule: image_row_share must be in [0, 1], got {image_row_share}")
    if bootstrap_row_share is not None and not 0.0 <= bootstrap_row_share <= 1.0:
        raise ConfigError(
            f"DynamicsModule: bootstrap_row_share must be in [0, 1] or null, got {bootstrap_row_share}"
        )
    if val_rollout_samples < 2:
        raise ConfigError(
            f"DynamicsModule: val_rollout_samples must be >= 2 (energy score), got {val_rollout_samples}"
        )
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ConfigError(
            f"DynamicsModule: loss_weighting must be one of {sorted(LOSS_WEIGHTINGS)}, got {loss_weighting!r}"
        )
    if context_prefix_frames < 0:
        raise ConfigError(f"DynamicsModule: context_prefix_frames must be >= 0, got {context_prefix_frames}")
    if val_context_frames < 1:
        raise ConfigError(f"DynamicsModule: val_context_frames must be >= 1, got {val_context_frames}")


class DynamicsModule(EvaluationMixin, InferenceMixin, pl.LightningModule):
    """Dynamics transformer + shortcut-forcing objective + loss normaliser (docs/design.md §7).

    Args:
        model: sizes of the transformer; ``latent_tokens``, ``latent_dim`` and the action spec are linked from
            the DataModule by the CLI.
        optimizer: optimiser factory ``params -> Optimizer``; None = AdamW(3e-4, betas (0.9, 0.95), wd 0.01).
            Weight decay applies to matrices only (norms, biases, embeddings are never decayed).
        scheduler: ``optimizer -> LRScheduler`` stepped every optimiser step; None = ``WarmupCosineLR`` (1000
            warmup steps, cosine to 10 % over the Trainer's ``max_steps``).
        image_row_share: share of batch rows trained as independent images (paper: 30 %, docs/design.md §3.8).
        d_min_share: share of frames at the finest step d_min; None = uniform over K (paper default, §3.1).
        bootstrap_row_share: share of rows whose frames draw K by that schedule; the other rows hold every
            frame at d_min. Teacher passes run only on rows holding a bootstrap frame, so this sets the cost
            of a step (docs/design.md §3.7); None = every row (paper).
        bootstrap_warmup_steps: train the flow term only (every frame at d_min) for this many steps first: the
            bootstrap targets of a random network carry no information, and flow-only steps skip the teacher.
        loss_weighting: per-frame weight of both loss terms over the signal level: ``ramp`` (paper Eq. 8,
            w = 0.9 tau + 0.1) or ``uniform`` (w = 1: the noisiest frames, predicted from the frames before
            them, count as much as clean ones; the quickstart's choice, docs/experiments.md).
        context_prefix_frames: label the first n frames of every row as a rollout's context, (tau_ctx, d_min)
            from ``context_noise``, instead of drawing their levels (docs/design.md §3.2); 0 = the paper's
            schedule.
        normalize_losses: divide each loss term by its running RMS (paper Sec. 3); False logs the RMS only.
        normalize_shortcut_terms_separately: False (default) normalises the shortcut-forcing loss as ONE term
            ``shortcut`` = flow + bootstrap, keeping the frame-count weighting of docs/design.md §3.6 between
            them; True divides ``flow`` and ``bootstrap`` by their own RMS. The bootstrap term starts far
            smaller than the flow term (teacher and student agree early), so separate normalisation multiplies
            its gradient by that ratio relative to Eq. 8.
        loss_norm_decay: EMA decay of the running mean square of each term.
        ema_teacher: bootstrap targets from the EMA weights of an ``EMAWeightAveraging`` callback instead of
            the online weights (paper: online weights, docs/design.md §3.10).
        context_noise: noise amount of context frames in rollouts (tau_ctx = 1 - 0.1 on the grid,
            docs/design.md §5); also the rollout default of ``model.rollout`` and of an export.
        rollout_steps: default K of ``model.rollout``, ``predict`` and an export (paper: 4).
        val_rollout_steps: K values whose rollouts are scored; None = [1, 2, 4, k_max].
        val_rollout_samples: rollout samples per context for the energy score (>= 2; training/scores.py).
        val_context_frames: context frames of validation / prediction rollouts; the rest of a window is the
            target.
        val_rollout_horizon: most frames generated per validation rollout (rollouts with K = k_max are slow).
        val_rollout_batches: validation batches (per rank) that also run rollouts.
        val_rollout_rows: most rows per batch that run rollouts.
        num_tau_buckets: equal-width tau buckets of the validation flow loss.
        predict_horizon: frames generated per ``predict`` window; None = the rest of the window.
        noise_seed: seed of the training-noise generator; None = ``torch.initial_seed()`` (as set by
            ``seed_everything``).
        latent_units: the ``LatentUnits`` the batches are standardised with, ``datamodule.latent_units``
            (linked by the CLI; pass it yourself in Python). Stored in the hyperparameters as its plain dict,
            so checkpoints and exports carry it; ``model.rollout`` and ``predict`` take and return the
            dataset's own units. None = identity; ``fit`` / ``validate`` refuse a DynamicsDataModule whose
            units differ.
    """

    extra_loss_names: tuple[str, ...] = ()

    def __init__(
        self,
        model: DynamicsConfig,
        optimizer: Optional[OptimizerCallable] = None,
        scheduler: Optional[LRSchedulerCallable] = None,
        image_row_share: float = 0.3,
        d_min_share: Optional[float] = None,
        bootstrap_row_share: Optional[float] = None,
        bootstrap_warmup_steps: int = 0,
        loss_weighting: Literal["ramp", "uniform"] = "ramp",
        context_prefix_frames: int = 0,
        normalize_losses: bool = True,
        normalize_shortcut_terms_separately: bool = False,
        loss_norm_decay: float = 0.99,
        ema_teacher: bool = False,
        context_noise: float = DEFAULT_CONTEXT_NOISE,
        rollout_steps: int = DEFAULT_ROLLOUT_STEPS,
        val_rollout_steps: Optional[list[int]] = None,
        val_rollout_samples: int = 4,
        val_context_frames: int = 4,
        val_rollout_horizon: int = 8,
        val_rollout_batches: int = 1,
        val_rollout_rows: int = 8,
        num_tau_buckets: int = 4,
        predict_horizon: Optional[int] = None,
        noise_seed: Optional[int] = None,
        latent_units: Union[LatentUnits, dict, None] = None,
    ) -> None:
        super().__init__()
        if isinstance(model, dict):  # from a checkpoint's hyper_parameters (stored as a plain dict)
            model = DynamicsConfig(**model)
        check_settings(
            image_row_share,
            bootstrap_row_share,
            val_rollout_samples,
            loss_weighting,
            context_prefix_frames,
            val_context_frames,
        )
        units = latent_units_or_identity(latent_units, model.latent_dim, "DynamicsModule: latent_units")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "latent_units"])
        self.hparams["latent_units"] = units.to_dict()  # plain: checkpoints load with weights_only=True
        self.config = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.d_min = model.d_min
        self.loss_weight = LOSS_WEIGHTINGS[loss_weighting]  # w(tau), on training and validation losses
        self.model = DynamicsTransformer(model)
        # Data units <-> model units (docs/training.md) and rollout defaults, carried by the network itself:
        # `model.rollout` and `model.save_pretrained` then match an export of this module exactly.
        self.model.latent_units = units
        self.model.rollout_defaults = {"num_steps": rollout_steps, "context_noise": context_noise}
        steps = val_rollout_steps if val_rollout_steps is not None else [1, 2, 4, model.k_max]
        self.val_rollout_steps = sorted({k for k in steps if k <= model.k_max})
        self.val_metrics = ValidationMetrics(self.val_rollout_steps, num_tau_buckets)
        self.test_metrics = ValidationMetrics(self.val_rollout_steps, num_tau_buckets)
        # Registered last: its buffers come last in buffers(), which EMAWeightAveraging pairs by position.
        self.loss_normalizer = LossNormalizer(
            decay=loss_norm_decay, enabled=normalize_losses, names=self.normalized_term_names()
        )
        self._noise_generator: Optional[torch.Generator] = None
        # restored generator state (or a seed), used once by noise_generator
        self._pending_generator_state: Optional[Union[Tensor, int]] = None
        self._pending_global_rng: Optional[dict[str, Any]] = None  # restored at the first resumed batch

    def normalized_term_names(self) -> tuple[str, ...]:
        """Names of the terms the loss normaliser divides by their running RMS (and sums into the loss)."""
        core = SHORTCUT_TERMS if self.hparams.normalize_shortcut_terms_separately else ("shortcut",)
        return core + tuple(self.extra_loss_names)

    # ------------------------------------------------------------------ overridable hooks
    def sample_signal_and_step(
        self, batch: dict[str, Tensor], generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor]:
        """Per-frame signal level tau and step size d, float32 [B, T] (docs/design.md §3.1-3.2); the first
        ``context_prefix_frames`` of every row at the rollout context's labels.

        ``generator``: None = the training-noise generator; evaluation passes its own, so a subclass's
        schedule is evaluated exactly as it is trained."""
        b, t = batch["latents"].shape[:2]
        share = self.hparams.d_min_share
        if generator is None and self.global_step < self.hparams.bootstrap_warmup_steps:
            share = 1.0  # training during the bootstrap warm-up: flow term only
        tau, d = sample_signal_and_step(
            b,
            t,
            self.config.k_max,
            generator=generator or self.noise_generator,
            d_min_share=share,
            bootstrap_row_share=self.hparams.bootstrap_row_share,
            device=self.device,
        )
        level = context_signal_level(self.hparams.context_noise, self.config.k_max)
        return with_context_prefix(tau, d, self.hparams.context_prefix_frames, level, self.d_min)

    def sample_image_rows(
        self, batch: dict[str, Tensor], generator: Optional[torch.Generator] = None
    ) -> Optional[Tensor]:
        """Bool [B]: rows trained as images, without attention across time (docs/design.md §3.8)."""
        generator = generator or self.noise_generator
        b = batch["latents"].shape[0]
        u = torch.rand(b, generator=generator, device=generator.device)
        return (u < self.hparams.image_row_share).to(self.device)

    def sample_noise(self, batch: dict[str, Tensor], generator: Optional[torch.Generator] = None) -> Tensor:
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
        if self.hparams.normalize_shortcut_terms_separately:
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
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        """Trainer's ``gradient_clip_val``, also under FSDP (``parallelize.clip_gradients``)."""
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def sharded(self) -> bool:
        """True under FSDP (1 or 2): every forward all-gathers, so every rank must make the same calls."""
        if self._trainer is None:
            return False
        return is_fsdp(self.trainer.strategy) or getattr(self, "device_mesh", None) is not None

    def teacher_model(self) -> Optional[torch.nn.Module]:
        """Bootstrap teacher: None (online weights, paper) or the EMA weights when ``ema_teacher=True``.

        The EMA weights are the ``AveragedModel`` held by the weight-averaging callback (``EMA`` in the
        configs; one copy of the weights in memory, not two); its ``device`` must be the training device.
        Before the callback's first update (``update_starting_at_step``) the average still holds the initial
        weights, so the teacher is the online network until then.
        """
        if not self.hparams.ema_teacher:
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
        if hparams is not None and dataclasses.is_dataclass(hparams.get("model")):
            checkpoint["hyper_parameters"] = {**hparams, "model": dataclasses.asdict(hparams["model"])}

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
