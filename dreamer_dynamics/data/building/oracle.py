"""The built-in world's oracle: samples of the true future of an evaluation window (docs/data.md).

A built-in episode is a function of its seed and its actions, so its hidden state (positions and velocities)
at any frame can be replayed exactly. The oracle replays an episode up to the last context frame, then
simulates forward under the given actions with fresh turn draws, once per sample: draws from the true
predictive distribution of the future given everything before it. On the deterministic world every sample is
the stored future. Samples are encoded by the dataset's codec, so they are in the dataset's own units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..reading.format import DatasetMetadata
from .toy_env import ToyEnv, ToyEnvConfig, episode_actions


def _ints(values: Any, name: str, ndim: int) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.int64)
    if array.ndim == ndim + 1 and array.shape[-1] == 1:
        array = array[..., 0]  # [B, H, 1]: the batches' one discrete action component
    if array.ndim != ndim:
        raise ValueError(f"oracle: {name} must have {ndim} dims, got shape {array.shape}")
    return array


class ToyOracle:
    """Samples of the built-in world's true future: ``sample(episode, first, actions, samples)``.

    env: the world the dataset was generated with (size, balls, turn_probability); seeds: the environment
    seed of each episode, by episode index; encode: frames [..., H, W, 3] -> latents [..., N_b, D_b] (the
    dataset's codec). A plain class: it pickles, like the object locator.
    """

    def __init__(self, env: ToyEnvConfig, seeds: Sequence[int], encode: Any) -> None:
        self.env, self.seeds, self.encode = env, [int(s) for s in seeds], encode

    def replay(self, episode: int, frames: int) -> tuple[ToyEnv, np.ndarray]:
        """Episode ``episode`` replayed from its seed and its actions for its first ``frames`` frames: the
        environment in the hidden state of frame ``frames - 1``, and those frames [frames, H, W, 3]."""
        if not 0 <= episode < len(self.seeds):
            raise IndexError(f"oracle: episode {episode} outside the dataset's {len(self.seeds)} episodes")
        if frames < 1:
            raise ValueError(f"oracle: the context must hold at least one frame, got {frames}")
        seed = self.seeds[episode]
        env = ToyEnv(self.env)
        actions = episode_actions(seed, frames)
        observed = [env.reset(seed)] + [env.step(int(a)) for a in actions[1:]]
        return env, np.stack(observed)

    def sample(self, episode: Any, first: Any, actions: Any, samples: int, seed: int = 0) -> torch.Tensor:
        """S samples of the frames after each context -> latents float32 [B, S, H, N_b, D_b], data units.

        episode, first: int [B]: the episode index and the absolute index of the first frame to predict (the
        context is frames 0..first - 1 of that episode); actions: int [B, H] (or [B, H, 1]), actions[:, h] led
        to frame first + h. Sample s of a context draws its turns from a generator seeded by (seed, episode
        seed, first, s): fresh (never the episode's own draws), and the same for a context whatever batch it
        is in.
        """
        episode, first = _ints(episode, "episode", 1), _ints(first, "first", 1)
        actions = _ints(actions, "actions", 2)
        if not len(episode) == len(first) == len(actions):
            raise ValueError(
                f"oracle: episode {episode.shape}, first {first.shape} and actions {actions.shape} "
                "must share the batch size"
            )
        if samples < 1:
            raise ValueError(f"oracle: samples must be >= 1, got {samples}")
        rows = []
        for e, f, acts in zip(episode, first, actions):
            start, _ = self.replay(int(e), int(f))
            futures = []
            for s in range(samples):
                env = start.fork(np.random.default_rng([seed, self.seeds[e], int(f), s]))
                futures.append([env.step(int(a)) for a in acts])
            rows.append(futures)
        size = self.env.image_size
        frames = np.asarray(rows, dtype=np.float32).reshape(-1, size, size, 3)  # (B*S*H, H_img, W_img, 3)
        latents = np.asarray(self.encode(frames), dtype=np.float32)
        return torch.from_numpy(latents.reshape(len(episode), samples, actions.shape[1], *latents.shape[1:]))


def toy_oracle(meta: DatasetMetadata, env: ToyEnvConfig, decoder: Any) -> ToyOracle | None:
    """The oracle of a built-in-world dataset (its metadata, the environment it was generated with and the
    ``Decoder`` of its codec; the caller, ``worlds.evaluation_references``, checks it is one); None where its
    episodes do not record their seeds."""
    codec = getattr(decoder, "codec", decoder)
    seeds = [episode.attributes.get("seed") for episode in meta.episodes]
    if not hasattr(codec, "encode") or any(seed is None for seed in seeds):
        return None
    return ToyOracle(env, seeds, codec.encode)
