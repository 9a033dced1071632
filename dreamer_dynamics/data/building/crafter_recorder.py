"""Record Crafter episodes (PyPI ``crafter``, offline) into a latent dataset through the patch codec.

Optional extra: ``pip install dreamer_dynamics[crafter]``. Frames are 64x64 RGB; with 8x8 patches each frame
becomes 64 tokens of 192 dims (N_b = 64, D_b = 192). Actions: one discrete component with Crafter's 17
actions; ``actions[0] = -1`` because no action led to the reset frame.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dreamer_dynamics.errors import require_extra

from ..reading.codec import codec_spec
from ..reading.patch_codec import PatchCodec
from .toy_env import sticky_random_actions
from .writer import LatentDatasetWriter

CRAFTER_NUM_ACTIONS = 17  # crafter.Env().action_space.n


@dataclass
class CrafterRecordingConfig:
    """What to record."""

    episodes: int = 10  # number of episodes
    length: int = 256  # maximum frames per episode (an episode also ends when the agent dies)
    size: int = 64  # frame side in pixels (crafter renders size x size)
    patch: int = 8  # codec patch side: 64x64 -> 64 tokens of 8*8*3 = 192 dims
    policy: str = "random"  # "random": sticky uniform actions; "explore": moves and collects (noop-free)
    seed: int = 0  # episode e uses world seed seed + e


def _policy_actions(policy: str, length: int, rng: np.random.Generator) -> np.ndarray:
    if policy == "random":
        return sticky_random_actions(length, CRAFTER_NUM_ACTIONS, rng, repeat=0.5)
    if (
        policy == "explore"
    ):  # walk (ids 1-4) in runs, interact ("do", id 5) often: visits and changes the world
        walk = sticky_random_actions(length, 4, rng, repeat=0.8) + 1
        return np.where(rng.random(length) < 0.3, 5, walk)
    raise ValueError(f"unknown policy {policy!r}; use 'random' or 'explore'")


def record_crafter(
    root: str | os.PathLike, config: CrafterRecordingConfig | None = None, *, progress: bool = True
) -> Path:
    """Record `config.episodes` episodes into the dataset at `root` (created or appended)."""
    crafter = require_extra("crafter", "crafter", "recording Crafter")
    config = config or CrafterRecordingConfig()
    codec = PatchCodec(config.size, config.patch, 3, mean=0.5, std=0.25)
    with LatentDatasetWriter(
        root,
        latent_shape=(codec.latent_tokens, codec.latent_dim),
        num_discrete_actions=(CRAFTER_NUM_ACTIONS,),
        codec=codec_spec(codec),
        attributes={"source": "crafter", "recording": asdict(config)},
    ) as writer:
        bar = tqdm(
            total=config.episodes * config.length, desc="crafter frames", unit="frame", disable=not progress
        )
        for e in range(config.episodes):
            seed = config.seed + e
            env = crafter.Env(size=(config.size, config.size), length=config.length, seed=seed)
            planned = _policy_actions(config.policy, config.length, np.random.default_rng([seed, 2]))
            frames, actions = [env.reset()], [-1]
            bar.update(1)
            for t in range(1, config.length):
                obs, _, done, _ = env.step(int(planned[t]))
                frames.append(obs)
                actions.append(int(planned[t]))
                bar.update(1)
                if done:
                    break
            images = np.stack(frames).astype(np.float32) / 255.0  # (T, H, W, 3) in [0, 1]
            writer.add_episode(
                codec.encode(images),
                actions_discrete=np.array(actions)[:, None],
                attributes={"seed": seed, "policy": config.policy},
            )
        bar.close()
    return Path(root)
