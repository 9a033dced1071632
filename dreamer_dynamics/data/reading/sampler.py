"""Alternating-length batch sampling (paper Sec. 3.4): frequent short batches (T1), occasional long (T2).

Everything is a pure function of (seed, step) so that distributed ranks agree without communication and a
resumed run reproduces an uninterrupted one exactly:

- the length at step s: ``long_every`` (s % long_every == long_every - 1) or ``long_share`` (a uniform number
  from a generator seeded with (seed, s) is < long_share), or always long in ``long_only`` mode;
- the windows at step s: one *global* batch of ``batch_size * world_size`` distinct windows drawn uniformly
  over all valid (episode, start) pairs with a generator seeded from (seed, s); rank r takes the r-th
  contiguous slice. Ranks therefore get disjoint windows, every rank yields the same number of batches, and
  the union over ranks is exactly the single-process global batch (sharding by windows, not by episodes, so
  any number of episodes works with any number of ranks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .format import DatasetError

Window = tuple[int, int, int]  # (episode_index, start, length)


def _generator(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


class AlternatingLengthBatchSampler(torch.utils.data.Sampler):
    """Yields lists of (episode_index, start, length) windows for :class:`LatentWindowDataset`.

    Batch sizes are per rank. ``__len__`` is the number of steps per epoch. The sampler's position is the
    global step of the next batch; ``state_dict()``/``load_state_dict()`` save and restore it, and
    ``position_provider`` (a callable returning (next_step, batches_already_done_in_epoch) or None) lets an
    owner such as the DataModule set it from the number of batches actually consumed, which DataLoader
    prefetching would otherwise hide.
    """

    def __init__(
        self,
        episode_lengths: Sequence[int],
        *,
        short_length: int,
        long_length: int,
        short_batch_size: int,
        long_batch_size: int | None = None,
        long_every: int | None = 8,
        long_share: float | None = None,
        long_only: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        steps_per_epoch: int | None = None,
        episode_ids: Sequence[int] | None = None,
        start_step: int = 0,
    ):
        if long_every is not None and long_share is not None:
            raise ValueError("give either long_every (a period) or long_share (a probability), not both")
        if long_every is not None and long_every < 1:
            raise ValueError(f"long_every must be >= 1, got {long_every}")
        if long_share is not None and not 0.0 <= long_share <= 1.0:
            raise ValueError(f"long_share must be in [0, 1], got {long_share}")
        if not 1 <= short_length <= long_length:
            raise ValueError(f"need 1 <= short_length <= long_length, got {short_length}, {long_length}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.lengths = np.asarray(episode_lengths, dtype=np.int64)  # (E,)
        self.episode_ids = np.arange(len(self.lengths)) if episode_ids is None else np.asarray(episode_ids)
        self.short_length, self.long_length = int(short_length), int(long_length)
        self.short_batch_size = int(short_batch_size)
        # default long batch size keeps the frames (tokens) per step even across the two lengths
        self.long_batch_size = int(long_batch_size or max(1, short_batch_size * short_length // long_length))
        self.long_every, self.long_share, self.long_only = long_every, long_share, bool(long_only)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self._cumulative = {}  # length -> cumulative count of valid starts per episode, (E,)
        for length in self._lengths_in_use():
            starts = np.maximum(self.lengths - length + 1, 0)
            if starts.sum() == 0:
                longest = int(self.lengths.max()) if len(self.lengths) else 0
                raise DatasetError(
                    None,
                    f"no episode is long enough for batches of {length} frames (longest "
                    f"episode: {longest} frames); shorten the batch length or add data",
                )
            self._cumulative[length] = np.cumsum(starts)
        if steps_per_epoch is None:  # about one pass over the frames per epoch, counted over all ranks
            frames_per_step = self.world_size * self._mean_frames_per_step()
            steps_per_epoch = max(1, int(self.lengths.sum() // frames_per_step))
        self.steps_per_epoch = int(steps_per_epoch)
        self.set_position(start_step)
        self.position_provider: Callable[[], tuple[int, int] | None] | None = None

    # ---------------------------------------------------------- schedule (pure functions of seed, step)
    def _lengths_in_use(self) -> list[int]:
        if self.long_only:
            return [self.long_length]
        if self.long_every is None and not self.long_share:
            return [self.short_length]
        return [self.short_length, self.long_length]

    def _mean_frames_per_step(self) -> float:
        short = self.short_batch_size * self.short_length
        long = self.long_batch_size * self.long_length
        if self.long_only:
            return long
        share = (1.0 / self.long_every) if self.long_every else (self.long_share or 0.0)
        return (1 - share) * short + share * long

    def is_long(self, step: int) -> bool:
        """Whether global step `step` is a long batch (identical on every rank)."""
        if self.long_only:
            return True
        if self.long_every is not None:
            return step % self.long_every == self.long_every - 1
        if self.long_share:
            return bool(_generator(self.seed, step, 0xA17).random() < self.long_share)
        return False

    def length_at(self, step: int) -> int:
        return self.long_length if self.is_long(step) else self.short_length

    def batch_size_at(self, step: int) -> int:
        return self.long_batch_size if self.is_long(step) else self.short_batch_size

    def batch(self, step: int) -> list[Window]:
        """This rank's windows at global step `step`."""
        length, size = self.length_at(step), self.batch_size_at(step)
        cumulative = self._cumulative[length]
        total, wanted = int(cumulative[-1]), size * self.world_size
        rng = _generator(self.seed, step, 0xB47)
        flat = rng.integers(0, total, size=wanted)
        if total >= wanted:  # distinct windows inside the global batch, so ranks never share one
            flat = np.unique(flat)
            while len(flat) < wanted:
                flat = np.unique(np.concatenate([flat, rng.integers(0, total, size=wanted - len(flat))]))
            flat = rng.permutation(flat)
        mine = flat[self.rank * size : (self.rank + 1) * size]
        episodes = np.searchsorted(cumulative, mine, side="right")
        starts = mine - np.where(episodes > 0, cumulative[episodes - 1], 0)
        return [(int(self.episode_ids[e]), int(s), length) for e, s in zip(episodes, starts)]

    # ------------------------------------------------------------------ iteration and state
    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_position(self, step: int, done_in_epoch: int | None = None) -> None:
        """The next iteration starts at global `step`, with `done_in_epoch` batches of its epoch already seen.

        By default epochs are aligned to multiples of ``steps_per_epoch``, as in an uninterrupted run.
        """
        done = step % self.steps_per_epoch if done_in_epoch is None else done_in_epoch
        self._next_step, self._done_in_epoch = int(step), int(done) % self.steps_per_epoch

    def __iter__(self) -> Iterator[list[Window]]:
        position = self.position_provider() if self.position_provider is not None else None
        if position is not None:
            self.set_position(*position)
        first, count = self._next_step, self.steps_per_epoch - self._done_in_epoch
        self._done_in_epoch = 0
        for step in range(first, first + count):
            self._next_step = step + 1
            yield self.batch(step)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._next_step, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(
                f"sampler state was saved with seed {state['seed']}, this sampler has {self.seed}"
            )
        self.set_position(int(state["step"]))
