"""Reading latent datasets: memory-mapped episodes, fixed-length windows, and the train/validation split."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamer_dynamics.units import LatentUnits

from .format import DatasetError, DatasetMetadata, check_action_ids, check_npy_header, read_metadata


class LatentDataset:
    """A dataset root opened for reading; `len(ds)` episodes, `ds[i]` a dict of memory-mapped arrays.

    Arrays are opened lazily with ``np.load(mmap_mode="r")`` and the open maps are not pickled, so a copy sent
    to a DataLoader worker reopens them in the worker. Opening checks the metadata and every episode file's
    header and size (cheap: no array data is read); :meth:`validate` with ``deep=True`` also scans the values.
    """

    def __init__(self, root: str | os.PathLike, *, check_files: bool = True, max_open_episodes: int = 1024):
        self.root = Path(root)
        self.meta: DatasetMetadata = read_metadata(self.root)
        self.episode_lengths = np.array([e.length for e in self.meta.episodes], dtype=np.int64)  # (E,)
        # least-recently-used open maps: a dataset of 100k episodes must not hold 300k mappings at once
        # (Linux caps a process at ~65k); closing a map only drops page-table entries, reopening is cheap
        self.max_open_episodes = max(1, int(max_open_episodes))
        self._maps: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        if check_files:
            self.check_files()

    # ------------------------------------------------------------------ spec
    @property
    def latent_shape(self) -> tuple[int, int]:
        return tuple(self.meta.latent_shape)

    @property
    def num_discrete_actions(self) -> tuple[int, ...]:
        return tuple(self.meta.num_discrete_actions)

    @property
    def num_continuous_actions(self) -> int:
        return int(self.meta.num_continuous_actions)

    @property
    def latent_stats(self) -> dict[str, Any] | None:
        """Per-channel latent statistics {"mean": [D_b], "std": [D_b], "count": N} from the metadata, or None
        if the dataset has none (docs/data.md)."""
        return self.meta.latent_stats

    @property
    def num_frames(self) -> int:
        return int(self.episode_lengths.sum())

    def __len__(self) -> int:
        return len(self.meta.episodes)

    # ------------------------------------------------------------------ access
    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Memory-mapped arrays of episode `index`: "latents" [T, N_b, D_b] and the action arrays present."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"episode index {index} out of range for {len(self)} episodes in {self.root}")
        index %= len(self)
        if index in self._maps:
            self._maps.move_to_end(index)
        else:
            record = self.meta.episodes[index]
            maps = {}
            for key in self.meta.array_keys():
                path = record.file(self.root, key)
                try:
                    maps[key] = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as err:
                    raise DatasetError(path, f"cannot memory-map episode file ({err})") from None
            self._maps[index] = maps
            if len(self._maps) > self.max_open_episodes:
                self._maps.popitem(last=False)
        return self._maps[index]

    def window(self, index: int, start: int, length: int) -> dict[str, np.ndarray]:
        """Copy frames [start, start + length) of episode `index` out of the maps (only those pages are read).

        Latents come back float32 (float16 storage is widened), discrete actions int64.
        """
        episode_length = int(self.episode_lengths[index])
        if start < 0 or length < 1 or start + length > episode_length:
            raise IndexError(
                f"window [{start}, {start + length}) outside episode {index} of length {episode_length}"
            )
        out = {}
        for key, array in self[index].items():
            piece = array[start : start + length]
            dtype = np.int64 if key == "actions_discrete" else np.float32
            out[key] = np.array(piece, dtype=dtype)
        return out

    def check_files(self) -> None:
        """Raise a DatasetError naming the first missing, truncated, or mismatched episode file."""
        for record in self.meta.episodes:
            for key in self.meta.array_keys():
                check_npy_header(
                    record.file(self.root, key),
                    record.length,
                    self.meta.expected_tail(key),
                    self.meta.expected_dtype(key),
                )

    def find_non_finite(self) -> tuple[Path, int] | None:
        """(latents file, first frame) of the first episode holding NaN/inf latents, or None (reads every
        latent once, one episode at a time)."""
        for index, record in enumerate(self.meta.episodes):
            latents = self[index]["latents"]  # (T, N_b, D_b)
            finite_frames = np.isfinite(latents).reshape(len(latents), -1).all(1)  # (T,)
            self._maps.pop(index, None)  # do not keep every map open during a full scan
            if not finite_frames.all():
                return record.file(self.root, "latents"), int(np.argmin(finite_frames))
        return None

    def check_finite_stats(self, record: dict[str, Any] | None) -> None:
        """Statistics over NaN/inf latents are not finite: a DatasetError naming the episode file and frame
        that made them so (a scan, only then), or the statistics themselves if no latent is to blame."""
        if record is None or all(np.isfinite(record[key]).all() for key in ("mean", "std")):
            return
        found = self.find_non_finite()
        if found is not None:
            raise DatasetError(found[0], f"latents contain NaN/inf at frame {found[1]}")
        raise DatasetError(self.root, "latent_stats are not finite; rerun `dreamer-dynamics-data stats`")

    def validate(self, *, deep: bool = False, stats: Any = None) -> None:
        """Check every file; with `deep`, also scan values (NaN/inf latents, inf or out-of-range actions) and,
        if `stats` (a ``LatentStatistics``) is given, accumulate the latents into it in the same pass."""
        self.check_files()
        if not deep:
            return
        for index, record in enumerate(self.meta.episodes):
            arrays = self[index]
            for key, array in arrays.items():
                path = record.file(self.root, key)
                if key == "latents" and not np.isfinite(array).all():
                    frame = int(np.argmin(np.isfinite(array).reshape(len(array), -1).all(1)))
                    raise DatasetError(path, f"latents contain NaN/inf at frame {frame}")
                if key == "latents" and stats is not None:
                    stats.update(array)
                if key == "actions_continuous" and np.isinf(array).any():
                    raise DatasetError(path, "continuous actions contain inf")
                if key == "actions_discrete":
                    check_action_ids(array, self.meta.num_discrete_actions, path)
            self._maps.pop(index, None)  # do not keep every map open during a full scan

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()  # memory maps are reopened lazily in the receiving process
        return state


class LatentWindowDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are windows addressed by (episode_index, start, length) tuples.

    Used with :class:`AlternatingLengthBatchSampler` (or any list of such tuples). Returns a dict of tensors:
    "latents" float32 [T, N_b, D_b], "actions_discrete" int64 [T, n] and "actions_continuous" float32 [T, c]
    where the dataset has them; the default collate stacks them to the batch layout of docs/design.md §9.
    ``units`` (a ``LatentUnits``) standardises the latents per channel: (z - mean) / std; None = as stored.
    """

    def __init__(self, dataset: LatentDataset, units: LatentUnits | None = None):
        self.dataset = dataset
        self.units = units

    def __len__(self) -> int:  # number of episodes; items are addressed by tuples, not by position
        return len(self.dataset)

    def __getitem__(self, item: Sequence[int]) -> dict[str, torch.Tensor]:
        episode, start, length = (int(x) for x in item)
        window = self.dataset.window(episode, start, length)
        out = {k: torch.from_numpy(v) for k, v in window.items()}
        if self.units is not None:
            out["latents"] = self.units.standardize(out["latents"])  # (T, N_b, D_b) float32
        return out


def split_episodes(
    episodes: int | Sequence[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split by episode: a stable hash of each episode's name.

    ``episodes`` is the list of episode names (``metadata.json``), or a count for the default names
    ``000000, 000001, ...``. Episode e is held out when ``u(seed, name) < val_fraction``, u a hash mapped to
    [0, 1): each episode's side depends on its own name only, so appending episodes never moves a validation
    episode into training (the split is a function of the episode, not of the dataset size).

    Small datasets: at least one validation episode when ``val_fraction`` > 0 and there are two or more
    episodes (the lowest hash), and at least one training episode always (the highest hash). Only in these
    fallbacks can growing the dataset change an existing episode's side; a resumed run warns when its dataset
    changed (``DynamicsDataModule.load_state_dict``).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = [f"{i:06d}" for i in range(episodes)] if isinstance(episodes, int) else [str(n) for n in episodes]
    u = np.array([_unit_hash(seed, name) for name in names], dtype=np.float64)  # (E,)
    held_out = u < val_fraction
    if val_fraction > 0 and len(names) > 1 and not held_out.any():
        held_out[int(np.argmin(u))] = True
    if len(names) and held_out.all():
        held_out[int(np.argmax(u))] = False
    train = [i for i in range(len(names)) if not held_out[i]]
    val = [i for i in range(len(names)) if held_out[i]]
    return train, val


def _unit_hash(seed: int, name: str) -> float:
    """A stable hash of (seed, episode name) in [0, 1) (sha256; identical on every machine and Python)."""
    digest = hashlib.sha256(f"dreamer-dynamics-split/{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
