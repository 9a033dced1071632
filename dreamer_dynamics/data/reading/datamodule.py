"""LightningDataModule: latent dataset -> alternating-length training batches, fixed validation windows.

Trainer settings this module needs (docs/data.md): ``use_distributed_sampler: false`` -- the module shards
the data itself (AlternatingLengthBatchSampler, by rank and world size read from the attached Trainer), and
Lightning must not wrap or replace its batch sampler. Use ``steps_per_epoch`` rather than
``limit_train_batches`` to shorten epochs.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from functools import cached_property
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from dreamer_dynamics.compat import training_batch_progress
from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.references import EvaluationReferences
from dreamer_dynamics.units import SCALES, LatentUnits

from .codec import decoder_for
from .context_file import load_context_file
from .dataset import LatentDataset, LatentWindowDataset, split_episodes
from .fingerprint import dataset_fingerprint, fingerprint_changes
from .format import DatasetError
from .references import dataset_references
from .sampler import AlternatingLengthBatchSampler, Window
from .stats import compute_latent_stats, stale_reason, write_latent_stats


class DynamicsDataModule(pl.LightningDataModule):
    """Training batches {"latents" [B,T,N_b,D_b], "actions_discrete" [B,T,n], "actions_continuous" [B,T,c]}.

    Args:
        root: dataset directory (format: docs/data.md). Required: for a built-in world,
            ``dreamer_dynamics.data.building.worlds.builtin_datamodule(world, toy, cache_dir, ...)`` generates
            (once, cached) and passes its root; the CLI does the same when ``--data.root`` is not given.
        short_length: frames T1 of the frequent short batches (paper Minecraft: 64).
        long_length: frames T2 of the occasional long batches (paper Minecraft: 256; > context C).
        short_batch_size: sequences per rank in a short batch.
        long_batch_size: sequences per rank in a long batch; None keeps frames per step even.
        long_every: every `long_every`-th step is long (a period); None to use `long_share` instead.
        long_share: probability that a step is long, from a hash of (seed, step); needs long_every=None.
        long_only: every batch is long (the paper's final finetuning phase).
        val_fraction: share of episodes held out for validation/test/predict (at least one if > 0).
        seed: seeds the split, the length schedule and the windows.
        num_workers: DataLoader worker processes (memory maps are reopened in each worker).
        steps_per_epoch: training batches per epoch; None = about one pass over the training frames.
        val_batch_size: sequences per validation/test/predict batch; None = short_batch_size.
        val_batches: number of fixed validation batches (per rank).
        val_length: frames per validation window; None = short_length.
        test_length: frames per test window; None = long_length.
        predict_length: frames per predict window (context + horizon); None = long_length.
        predict_batches: number of predict batches.
        predict_context: a context file (.npy / .npz, data/reading/context_file.py) that ``predict`` rolls out
            from instead of the held-out windows; the dataset at ``root`` still gives the latent shape and
            decoder.
        toy: generator config of the built-in world (``building.worlds.ToyDatasetConfig`` fields), recorded
            with the run; the CLI and ``builtin_datamodule`` generate the dataset from it when root is unset.
        world: the built-in world, recorded likewise: "deterministic" (the default) or "stochastic", whose
            balls turn at random (``toy.turn_probability``, 0.5 unless set; docs/data.md).
        cache_dir: cache of the built-in dataset, recorded likewise; None = $DREAMER_DYNAMICS_CACHE or
            ~/.cache/dreamer_dynamics.
        pin_memory: pin host memory in the DataLoaders (GPU training).
        standardize: emit standardised latents, (z - mean) / std with the dataset's ``latent_stats``: True or
            "pooled" = each channel's own mean, one pooled std for all channels (the RMS of the channel stds;
            ``LatentUnits.from_stats``); "channel" = each channel by its own std (floored at 1e-6 x the
            largest). A dataset without statistics (or with stale ones) gets them computed once, streaming
            over the episodes, and recorded in its ``metadata.json`` (skipped with a warning where that file
            is read-only). ``latent_units`` is then the ``LatentUnits`` the model must use (the CLI links it
            into ``DynamicsModule``; in Python pass ``latent_units=datamodule.latent_units``); False emits
            the stored values (``latent_units`` is the identity).
        token_grid: (rows, cols) layout of the N_b tokens, row-major, for 2-D rotary positions in the space
            layers; None = the codec's ``token_grid`` attribute (the built-in patch codec has one: its patch
            grid), else no grid (1-D positions over the token index). Linked into the model by the CLI.
    """

    def __init__(
        self,
        root: str | None = None,
        short_length: int = 16,
        long_length: int = 32,
        short_batch_size: int = 8,
        long_batch_size: int | None = 4,
        long_every: int | None = 8,
        long_share: float | None = None,
        long_only: bool = False,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        steps_per_epoch: int | None = None,
        val_batch_size: int | None = None,
        val_batches: int = 4,
        val_length: int | None = None,
        test_length: int | None = None,
        predict_length: int | None = None,
        predict_batches: int = 1,
        predict_context: str | None = None,
        toy: dict[str, Any] | None = None,
        world: str = "deterministic",
        cache_dir: str | None = None,
        pin_memory: bool = False,
        standardize: bool | Literal["pooled", "channel"] = True,
        token_grid: tuple[int, int] | None = None,
    ):
        super().__init__()
        if root is None:
            raise ConfigError(
                "DynamicsDataModule needs root=<dataset directory>; for a built-in world use "
                "dreamer_dynamics.data.building.worlds.builtin_datamodule(world=..., ...) (CLI: --data.world)"
            )
        # plain types only in the hyperparameters, so checkpoints load with weights-only unpickling
        self.save_hyperparameters(ignore=["toy"])
        self.hparams["toy"] = asdict(toy) if is_dataclass(toy) else (dict(toy) if toy is not None else None)
        self.root = os.fspath(root)
        self.dataset = LatentDataset(
            self.root, check_files=False
        )  # metadata only; files are checked in setup
        self.val_batch_size = val_batch_size or short_batch_size
        self.val_length = val_length or short_length
        self.test_length = test_length or long_length
        self.predict_length = predict_length or long_length
        names = [episode.name for episode in self.dataset.meta.episodes]
        self.train_episodes, self.val_episodes = split_episodes(names, val_fraction, seed)
        # the statistics batches are standardised with (None = batches in the dataset's own units)
        scale = "pooled" if standardize is True else standardize
        if scale not in (False, *SCALES):
            raise ConfigError(
                f"data.standardize must be true, false, 'pooled' or 'channel', got {standardize!r}"
            )
        record = self._load_latent_stats() if scale else None
        self.latent_units = (  # the units of every batch (docs/training.md, "Latent units")
            LatentUnits.identity(self.latent_dim) if record is None else LatentUnits.from_stats(record, scale)
        )
        self._window_dataset = LatentWindowDataset(self.dataset, self.latent_units)
        self._files_checked = False
        self._train_sampler: AlternatingLengthBatchSampler | None = None
        self._pending_position: tuple[int, int] | None = None  # restored by load_state_dict, used once

    # ------------------------------------------------------------ spec for LightningCLI argument linking
    @property
    def latent_tokens(self) -> int:
        return self.dataset.latent_shape[0]

    @property
    def latent_dim(self) -> int:
        return self.dataset.latent_shape[1]

    @property
    def num_discrete_actions(self) -> tuple[int, ...]:
        return self.dataset.num_discrete_actions

    @property
    def num_continuous_actions(self) -> int:
        return self.dataset.num_continuous_actions

    @property
    def token_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the N_b tokens: the ``token_grid`` argument, else the codec's, else None."""
        grid = self.hparams.token_grid
        if grid is None and self.decoder is not None:
            grid = getattr(self.decoder.codec, "token_grid", None)
        if grid is None:
            return None
        grid = tuple(int(n) for n in grid)
        if len(grid) != 2 or grid[0] * grid[1] != self.latent_tokens:
            raise ConfigError(
                f"data.token_grid={grid} must be (rows, cols) with rows * cols = the dataset's "
                f"{self.latent_tokens} latent tokens"
            )
        return grid

    @cached_property
    def decoder(self) -> Callable[[Any], Any] | None:
        """latents [..., N_b, D_b] in the dataset's own units (``destandardize`` a batch first) -> images
        [..., H, W, C] in [0, 1] through the dataset's codec (codec.py);
        None if the dataset names no codec or its codec cannot be imported."""
        return decoder_for(self.dataset)

    @cached_property
    def references(self) -> EvaluationReferences:
        """The object locator and oracle the dataset's description names (reading/references.py), for the
        rollout metrics: the CLI links them into the module (in Python pass ``references=dm.references``)."""
        return dataset_references(self.dataset)

    # ------------------------------------------------------------------ standardisation (docs/data.md)
    def standardize(self, latents: torch.Tensor) -> torch.Tensor:
        """Dataset units -> batch units (``latent_units.standardize``; identity if ``standardize=False``)."""
        return self.latent_units.standardize(latents)

    def destandardize(self, latents: torch.Tensor) -> torch.Tensor:
        """Batch units -> dataset units (``latent_units.destandardize``), e.g. before ``decoder``."""
        return self.latent_units.destandardize(latents)

    def _load_latent_stats(self) -> dict[str, Any] | None:
        """The dataset's record; computed once (and recorded in metadata.json) when missing or stale. Latents
        that are not finite are refused here, before any training step (statistics over them are not finite;
        a recorded record is finite by the format's rules)."""
        record = self.dataset.latent_stats
        reason = "no latent_stats" if record is None else stale_reason(self.dataset, record)
        if reason is None:
            return record
        if len(self.dataset) == 0:
            return None  # setup() reports the empty dataset
        rank_zero_info(f"{self.root}: {reason}; computing them once from the episodes")
        stats = compute_latent_stats(self.dataset)
        self.dataset.check_finite_stats(stats.record())  # a NaN latent: its file and frame, nothing recorded
        try:
            write_latent_stats(self.root, stats)
        except (DatasetError, OSError) as err:
            rank_zero_warn(
                f"{self.root}: latent_stats computed but not recorded ({err}); they are "
                f"recomputed next time (`dreamer-dynamics-data stats {self.root}` records them)"
            )
        return stats.record()

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint records about this dataset (root, latent shape, action spec, latent statistics,
        episode count; data/reading/fingerprint.py). Saved with the sampler state, checked on resume."""
        return dataset_fingerprint(self.root)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        self.check()

    def check(self) -> None:
        """Raise a DatasetError for an empty dataset, a missing/truncated episode file or an empty validation
        split. Cheap (file headers only) and done once; the CLI calls it before the Trainer starts, so data
        errors come before any log folder."""
        if not self._files_checked:
            if len(self.dataset) == 0:
                raise DatasetError(self.root, "dataset has no episodes")
            self.dataset.check_files()
            self._files_checked = True
        if self.hparams.val_fraction > 0 and not self.val_episodes:
            raise DatasetError(
                self.root,
                f"empty validation split: {len(self.dataset)} episode(s) cannot be split "
                "by episode; add episodes or set val_fraction=0",
            )

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self._rank_and_world()
        h = self.hparams
        sampler = AlternatingLengthBatchSampler(
            self.dataset.episode_lengths[self.train_episodes],
            short_length=h.short_length,
            long_length=h.long_length,
            short_batch_size=h.short_batch_size,
            long_batch_size=h.long_batch_size,
            long_every=h.long_every,
            long_share=h.long_share,
            long_only=h.long_only,
            seed=h.seed,
            rank=rank,
            world_size=world,
            steps_per_epoch=h.steps_per_epoch,
            episode_ids=self.train_episodes,
        )
        sampler.position_provider = self._training_position
        self._train_sampler = sampler
        workers = self.hparams.num_workers
        return _TrainLoader(
            self,
            self._window_dataset,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
            generator=_loader_generator(h.seed, rank),
        )

    def val_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.val_length, self.hparams.val_batches, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.test_length, self.hparams.val_batches, "test")

    def predict_dataloader(self) -> DataLoader:
        if self.hparams.predict_context is not None:
            items = load_context_file(
                self.hparams.predict_context,
                self.dataset.latent_shape,
                len(self.num_discrete_actions),
                self.num_continuous_actions,
            )
            return DataLoader(items, batch_size=self.val_batch_size, shuffle=False)
        return self._fixed_loader(self.predict_length, self.hparams.predict_batches, "predict")

    # ------------------------------------------------------------------ checkpoint state (exact resume)
    def state_dict(self) -> dict[str, Any]:
        """{"sampler_step": training batches consumed, "done_in_epoch": of those in this epoch, "seed",
        "dataset_fingerprint"}."""
        step, done = self._consumed_batches()
        return {
            "sampler_step": step,
            "done_in_epoch": done,
            "seed": self.hparams.seed,
            "dataset_fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        recorded = state.get("dataset_fingerprint")
        if recorded:
            changes = fingerprint_changes(recorded, self.fingerprint)
            # Lightning hands the state over twice (the DataModule's and the loaders'): warn once
            if changes and changes != getattr(self, "_warned_changes", None):
                self._warned_changes = changes
                warnings.warn(
                    f"dataset {self.root} changed since the checkpoint ({'; '.join(changes)}); the "
                    "split is per episode, so validation episodes stay held out",
                    stacklevel=2,
                )
        if int(state.get("seed", self.hparams.seed)) != self.hparams.seed:
            raise ConfigError(
                f"checkpoint data seed {state['seed']} differs from data.seed={self.hparams.seed}; "
                "the resumed batches would not match"
            )
        self._pending_position = (int(state["sampler_step"]), int(state.get("done_in_epoch", 0)))
        if self._train_sampler is not None:
            self._train_sampler.set_position(*self._pending_position)

    def _consumed_batches(self) -> tuple[int, int]:
        """Training batches actually consumed, read from the Trainer's progress (not from the sampler, which
        DataLoader prefetching runs ahead of consumption)."""
        trainer = self.trainer
        if trainer is None or not hasattr(trainer, "fit_loop"):
            if self._pending_position is not None:
                return self._pending_position
            if self._train_sampler is None:
                return 0, 0
            step = self._train_sampler.state_dict()["step"]  # plain loop: epochs align to steps_per_epoch
            return step, step % self._train_sampler.steps_per_epoch
        progress = training_batch_progress(trainer)
        done = int(progress.current.processed)
        batches = trainer.num_training_batches
        if isinstance(batches, (int, float)) and math.isfinite(batches) and done >= batches:
            done = 0  # the epoch is complete: a resumed run starts a fresh one
        return int(progress.total.processed), done

    def _training_position(self) -> tuple[int, int] | None:
        if self._pending_position is not None:
            position, self._pending_position = self._pending_position, None
            return position
        return self._consumed_batches() if self.trainer is not None else None

    # ------------------------------------------------------------------ helpers
    def fixed_windows(self, length: int, count: int, split: str) -> list[Window]:
        """Deterministic windows for evaluation: non-overlapping windows of the held-out episodes (all
        episodes when val_fraction=0), a seeded choice of `count` of them, ordered."""
        episodes = self.val_episodes or self.train_episodes
        candidates = [
            (e, s, length)
            for e in episodes
            for s in range(0, int(self.dataset.episode_lengths[e]) - length + 1, length)
        ]
        if not candidates:
            longest = int(self.dataset.episode_lengths[episodes].max())
            raise DatasetError(
                self.root,
                f"no {split} episode has {length} frames (longest: {longest}); "
                f"lower the {split} window length",
            )
        if len(candidates) > count:
            rng = np.random.default_rng([self.hparams.seed, 0xE7A1])
            candidates = [candidates[i] for i in sorted(rng.choice(len(candidates), count, replace=False))]
        return candidates

    def _fixed_loader(self, length: int, batches: int, split: str) -> DataLoader:
        self.setup(split)
        rank, world = self._rank_and_world()
        windows = self.fixed_windows(length, batches * self.val_batch_size * world, split)
        per_rank = math.ceil(len(windows) / world)  # equal batch counts on every rank (no collective hangs)
        mine = [windows[(rank * per_rank + i) % len(windows)] for i in range(per_rank)]
        workers = self.hparams.num_workers
        return DataLoader(
            _ListDataset(self._window_dataset, mine),
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
            generator=_loader_generator(self.hparams.seed, rank),
        )


def _loader_generator(seed: int, rank: int) -> torch.Generator:
    """Own generator of a DataLoader: starting a loader draws its workers' base seed from it, never from the
    global torch RNG, so how often Lightning starts loaders (a resumed run starts one more) cannot shift the
    training's global random stream. Workers draw nothing random: the windows come from the sampler."""
    state = np.random.SeedSequence([seed, rank, 0x10AD]).generate_state(1)
    return torch.Generator().manual_seed(int(state[0]))


class _TrainLoader(DataLoader):
    """The training DataLoader, resumable in Lightning's sense (state_dict/load_state_dict): its state is the
    DataModule's consumed-batch position, so the fit loop's own loader checkpointing agrees with ours."""

    def __init__(self, datamodule: DynamicsDataModule, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._datamodule = datamodule

    def state_dict(self) -> dict[str, Any]:
        return self._datamodule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._datamodule.load_state_dict(state)


class _ListDataset:
    """Positions 0..n-1 -> the given windows (for plain batch_size DataLoaders), each with its "episode" index
    and the absolute index of its first frame, "start" (int64 scalars; [B] in a batch), which locate it in
    its episode (the built-in world's oracle, ``references.oracle``, replays
    it from them)."""

    def __init__(self, windows_dataset: LatentWindowDataset, windows: list[Window]):
        self.windows_dataset, self.windows = windows_dataset, windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        episode, start, _ = self.windows[i]
        item = self.windows_dataset[self.windows[i]]
        return {**item, "episode": torch.tensor(int(episode)), "start": torch.tensor(int(start))}
