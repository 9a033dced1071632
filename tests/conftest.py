"""Fixtures and helpers shared by the test files: a single-thread guard, the tiny network, and a tiny
DataModule, module and Trainer for the training tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dreamer_dynamics.data import DynamicsDataModule
from dreamer_dynamics.data.building.toy_env import ToyEnv, ToyEnvConfig
from dreamer_dynamics.data.building.worlds import ToyDatasetConfig, builtin_datamodule
from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer, RolloutConfig
from dreamer_dynamics.module import DynamicsModule
from dreamer_dynamics.training.config import EvaluationConfig, ObjectiveConfig

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "lightning_configs" / "quickstart.yaml")
TINY_CLI = [  # command-line overrides that shrink the quickstart to a tiny network and tiny windows
    "--model.model.dim=32",
    "--model.model.depth=2",
    "--model.model.heads=2",
    "--model.model.kv_heads=1",
    "--data.short_length=6",
    "--data.long_length=8",
    "--data.short_batch_size=2",
    "--data.long_batch_size=1",
    "--data.val_batch_size=2",
    "--data.val_batches=1",
    "--data.val_length=6",
    "--data.predict_length=6",
    "--data.test_length=6",
    "--model.evaluation.context_frames=2",
    "--model.evaluation.rollout_horizon=2",
]
TINY_TOY = ToyDatasetConfig(episodes=6, length=24)  # the built-in world, 6 episodes of 24 frames
TINY_WINDOWS = dict(  # DataModule windows and batches of the training tests
    short_length=6,
    long_length=12,
    short_batch_size=4,
    long_batch_size=2,
    long_every=3,
    val_batch_size=4,
    val_batches=1,
    predict_length=6,
)


@pytest.fixture
def single_thread():
    """Tiny models are dispatch-bound: one thread is faster and immune to OpenMP spin contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Cache folder of the built-in dataset, one per test file."""
    return tmp_path_factory.mktemp("toy_cache")


def make_debug_model(seed=0, **overrides) -> DynamicsTransformer:
    """The tiny ``DynamicsConfig.debug()`` network (with ``overrides``), seeded, in eval mode."""
    torch.manual_seed(seed)
    return DynamicsTransformer(DynamicsConfig.debug(**overrides)).eval()


def run_python(script: str, *args) -> subprocess.CompletedProcess:
    """Run ``python -c script *args`` in the repository root; fails with its stderr unless it exits 0."""
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def replayed_objects(config: ToyEnvConfig, seed: int, actions) -> list[np.ndarray]:
    """(1 + balls, 2) positions of the sprite and balls at every frame of a built-in episode, replayed from
    its seed and actions (``toy_env.rollout_episode``)."""
    replay = ToyEnv(config)
    replay.reset(seed)
    objects = [np.concatenate([replay.sprite[None], replay.balls])]
    for action in actions[1:]:
        replay.step(int(action))
        objects.append(np.concatenate([replay.sprite[None], replay.balls]))
    return objects


def tiny_datamodule(root: str | None = None, cache: Path | None = None, **overrides) -> DynamicsDataModule:
    """``TINY_WINDOWS`` over the dataset at ``root``, or over ``TINY_TOY`` cached in ``cache``."""
    kwargs = {**TINY_WINDOWS, **overrides}
    if root is None:
        return builtin_datamodule(toy=TINY_TOY, cache_dir=str(cache), **kwargs)
    return DynamicsDataModule(root, **kwargs)


def tiny_module(
    data: DynamicsDataModule,
    cls=DynamicsModule,
    objective: dict | None = None,
    evaluation: dict | None = None,
    rollout: dict | None = None,
    **kwargs,
) -> DynamicsModule:
    """A ``cls`` with the debug network sized for ``data`` and in its units (``data.latent_units``): noise
    seed 0, 2 context frames, 3 generated, the data's references; ``objective`` etc.: fields of the groups."""
    config = DynamicsConfig.debug(
        latent_tokens=data.latent_tokens,
        latent_dim=data.latent_dim,
        num_discrete_actions=data.num_discrete_actions,
        num_continuous_actions=data.num_continuous_actions,
    )
    kwargs = {
        "noise_seed": 0,
        "objective": ObjectiveConfig(**(objective or {})),
        "evaluation": EvaluationConfig(**{"context_frames": 2, "rollout_horizon": 3, **(evaluation or {})}),
        "rollout": RolloutConfig(**(rollout or {})),
        "latent_units": data.latent_units,
        "references": data.references,
        **kwargs,
    }
    return cls(config, **kwargs)


def quiet_trainer(tmp_path, max_steps: int, callbacks: Sequence[pl.Callback] = (), **overrides) -> pl.Trainer:
    """A one-CPU fp32 Trainer without logger, progress bar, summary or validation (``overrides`` change any);
    it checkpoints only where a ``ModelCheckpoint`` is among ``callbacks``."""
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        callbacks=list(callbacks),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
    return pl.Trainer(**{**kwargs, **overrides})
