"""The built-in worlds: toy-environment episodes encoded by the patch codec, generated once and cached, and
what they give evaluation beyond their latents (``evaluation_references``: object locator and oracle).

The cache lives in ``$DREAMER_DYNAMICS_CACHE`` (default ``~/.cache/dreamer_dynamics``) under a directory
named after a hash of the generator config and the codec's import path (which the dataset's metadata names),
so a different config, or a codec that moved, never reuses a stale dataset. Generation writes into a private
temporary directory that is renamed into place when complete: concurrent processes (e.g. DDP ranks) may
generate at the same time, one rename wins and nobody reads a half-written dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.references import EvaluationReferences

from ..reading.codec import codec_spec, decoder_for
from ..reading.dataset import LatentDataset
from ..reading.format import FORMAT_VERSION, METADATA_FILE, DatasetMetadata
from ..reading.patch_codec import PatchCodec
from ..reading.references import REFERENCES_ATTRIBUTE
from .oracle import toy_oracle
from .toy_env import ACTIONS, ToyEnv, ToyEnvConfig, locate_objects, rollout_episode
from .writer import LatentDatasetWriter

if TYPE_CHECKING:
    from ..reading.datamodule import DynamicsDataModule

REFERENCES_PATH = "dreamer_dynamics.data.building.worlds.evaluation_references"  # named in the metadata
GENERATOR_VERSION = "toy-v1"  # bump when the environment or codec changes, so caches are rebuilt
WORLDS = {"deterministic": 0.0, "stochastic": 0.5}  # ``data.world`` preset -> its turn_probability


@dataclass
class ToyDatasetConfig:
    """What the built-in dataset contains. Defaults: 200 episodes x 64 frames of 16 tokens x 48 dims
    (12,800 frames, 39 MB of float32 latents), generated in a few seconds on one CPU core."""

    episodes: int = 200  # number of episodes
    length: int = 64  # frames per episode (>= the longest batch length used for training)
    image_size: int = 16  # frame side in pixels
    patch: int = 4  # patch side of the codec: 16x16 frames -> 16 tokens of 4*4*3 = 48 dims
    num_balls: int = 2  # autonomous objects in the toy world
    seed: int = 0  # episode e uses environment seed seed * 1_000_003 + e
    turn_probability: float | None = None  # chance per step that a ball turns (toy_env); None: the world's


def default_cache_dir() -> Path:
    return Path(os.environ.get("DREAMER_DYNAMICS_CACHE", Path.home() / ".cache" / "dreamer_dynamics"))


def toy_config(world: str = "deterministic", toy: ToyDatasetConfig | dict | None = None) -> ToyDatasetConfig:
    """The built-in dataset of ``data.world`` and ``data.toy``: the world's preset turn_probability unless
    ``toy`` sets its own (a deterministic world takes none but 0)."""
    if world not in WORLDS:
        raise ConfigError(f"data.world must be one of {sorted(WORLDS)}, got {world!r}")
    if isinstance(toy, dict):
        unknown = sorted(set(toy) - {field.name for field in fields(ToyDatasetConfig)})
        if unknown:
            raise ConfigError(
                f"data.toy has no field(s) {unknown}; fields: {list(asdict(ToyDatasetConfig()))}"
            )
        toy = ToyDatasetConfig(**toy)
    toy = toy or ToyDatasetConfig()
    strength = toy.turn_probability
    if strength is None:
        return replace(toy, turn_probability=WORLDS[world])
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"data.toy.turn_probability must be in [0, 1], got {strength}")
    if world == "deterministic" and strength > 0:
        raise ConfigError(
            f"data.toy.turn_probability={strength} makes balls turn at random: set data.world=stochastic"
        )
    return replace(toy, turn_probability=float(strength))


def world_name(turn_probability: float | None) -> str:
    """ "stochastic" where balls turn at random, else "deterministic" (recorded in the dataset metadata)."""
    return "stochastic" if turn_probability else "deterministic"


def toy_dataset_key(config: ToyDatasetConfig) -> str:
    settings = asdict(config)
    if not settings["turn_probability"]:  # the deterministic world's key does not depend on how 0 is spelled
        del settings["turn_probability"]
    codec = f"{PatchCodec.__module__}.{PatchCodec.__qualname__}"  # the import paths its metadata records
    described = {
        "generator": GENERATOR_VERSION,
        "format": FORMAT_VERSION,
        "codec": codec,
        "references": REFERENCES_PATH,
        **settings,
    }
    text = json.dumps(described, sort_keys=True)
    return f"{GENERATOR_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def generate_toy_dataset(
    root: str | os.PathLike, config: ToyDatasetConfig | None = None, *, progress: bool = True
) -> Path:
    """Write the toy dataset described by `config` to `root` (created or appended)."""
    config = config or ToyDatasetConfig()
    strength = float(config.turn_probability or 0.0)
    env = ToyEnv(
        ToyEnvConfig(image_size=config.image_size, num_balls=config.num_balls, turn_probability=strength)
    )
    seeds = [config.seed * 1_000_003 + e for e in range(config.episodes)]
    # fixed codec statistics from the first episodes, rounded so the spec is short and exact in JSON
    sample = np.stack([rollout_episode(env, seed, config.length)[0] for seed in seeds[:16]])
    codec = PatchCodec(
        config.image_size, config.patch, 3, round(float(sample.mean()), 4), round(float(sample.std()), 4)
    )
    with LatentDatasetWriter(
        root,
        latent_shape=(codec.latent_tokens, codec.latent_dim),
        num_discrete_actions=(len(ACTIONS),),
        codec=codec_spec(codec),
        commit_every=32,
        attributes={
            "source": GENERATOR_VERSION,
            REFERENCES_ATTRIBUTE: REFERENCES_PATH,  # evaluation's object locator and oracle
            "actions": list(ACTIONS),
            "config": asdict(config),
            "world": world_name(strength),
            "turn_probability": strength,
        },
    ) as writer:
        for seed in tqdm(seeds, desc="toy episodes", disable=not progress):  # streamed: memory stays flat
            frames, actions = rollout_episode(env, seed, config.length)  # (T, H, W, 3), (T,)
            writer.add_episode(
                codec.encode(frames), actions_discrete=actions[:, None], attributes={"seed": seed}
            )
    return Path(root)


def builtin_dataset_root(
    config: ToyDatasetConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Path of the cached built-in dataset for `config`, generating it on first use."""
    config = config or ToyDatasetConfig()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / toy_dataset_key(config)
    if (root / METADATA_FILE).is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=cache))
    try:
        generate_toy_dataset(tmp, config, progress=progress)
        (tmp / ".lock").unlink(missing_ok=True)
        try:
            os.rename(tmp, root)  # atomic; fails if another process finished first
        except OSError:
            if not (root / METADATA_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class ToyObjectLocator:
    """Object positions of the built-in world, decoded and matched by colour (``toy_env.locate_objects``).

    latents [..., N_b, D_b] (data units) -> long [..., 1 + balls, 2]. A class, not a closure: it pickles.
    """

    def __init__(self, decoder: Any, env: ToyEnvConfig) -> None:
        self.decoder, self.env = decoder, env

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        frames = torch.as_tensor(self.decoder(latents.detach().float()))  # (..., H, W, 3) in [0, 1]
        return locate_objects(frames, self.env)


def world_env(meta: DatasetMetadata) -> ToyEnvConfig:
    """The environment a built-in-world dataset was generated with, from its metadata attributes."""
    config = meta.attributes.get("config") or {}
    return ToyEnvConfig(
        image_size=int(config.get("image_size", 16)),
        num_balls=int(config.get("num_balls", 2)),
        turn_probability=float(meta.attributes.get("turn_probability") or 0.0),
    )


def builtin_datamodule(
    world: str = "deterministic",
    toy: ToyDatasetConfig | dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> DynamicsDataModule:
    """A ``DynamicsDataModule`` over a built-in world (``toy_config(world, toy)``), generated on first use and
    cached in `cache_dir`; `kwargs` are the DataModule's other arguments (lengths, batch sizes, seed, ...)."""
    from ..reading.datamodule import DynamicsDataModule

    config = toy_config(world, toy)
    root = builtin_dataset_root(config, cache_dir, progress=True)
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    given = asdict(toy) if isinstance(toy, ToyDatasetConfig) else toy
    return DynamicsDataModule(str(root), world=world, toy=given, cache_dir=cache, **kwargs)


def evaluation_references(dataset: Any) -> EvaluationReferences:
    """The object locator and oracle of a dataset (its root, ``LatentDataset`` or ``DatasetMetadata``, or a
    DataModule over it), read from its metadata (source, generator config, episode seeds) and its codec: both
    for a built-in world, both None for any other dataset. The locator takes latents in the dataset's own
    units (``destandardize`` batches first)."""
    if isinstance(dataset, (str, os.PathLike)):
        dataset = LatentDataset(dataset, check_files=False)
    dataset = getattr(dataset, "dataset", dataset)  # a DataModule -> its LatentDataset
    meta = dataset if isinstance(dataset, DatasetMetadata) else dataset.meta
    decoder = decoder_for(dataset) if meta.attributes.get("source") == GENERATOR_VERSION else None
    if decoder is None:
        return EvaluationReferences()
    env = world_env(meta)
    return EvaluationReferences(
        object_locator=ToyObjectLocator(decoder, env), oracle=toy_oracle(meta, env, decoder)
    )
