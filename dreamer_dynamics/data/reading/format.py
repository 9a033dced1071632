"""The on-disk latent dataset format, version ``dreamer-dynamics-latents/1`` (documented in docs/data.md).

Layout of a dataset root::

    ROOT/metadata.json                          # written last, atomically (temp file + os.replace)
    ROOT/episodes/000000.latents.npy            # [T, N_b, D_b] float32 or float16
    ROOT/episodes/000000.actions_discrete.npy   # [T, n_discrete] int32, only if n_discrete > 0
    ROOT/episodes/000000.actions_continuous.npy # [T, n_continuous] float32, only if n_continuous > 0

Action alignment (docs/design.md §6): ``actions[t]`` is the action that led from frame t-1 to frame t, so
``actions[0]`` has no cause inside the episode; store -1 (discrete) / NaN (continuous) there, which
the model reads as "label missing" (learned embedding only).

Every problem is reported as a :class:`DatasetError` that names the file and what is wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dreamer_dynamics.atomic import atomic_write, fsync_directory  # noqa: F401 (fsync_directory re-exported)

FORMAT_VERSION = "dreamer-dynamics-latents/1"
METADATA_FILE = "metadata.json"
EPISODES_DIR = "episodes"
LATENT_DTYPES = ("float32", "float16")  # storage dtypes for latents; reads always return float32
DISCRETE_DTYPE = np.int32  # storage dtype for action ids (-1 = missing label)
CONTINUOUS_DTYPE = np.float32  # storage dtype for continuous actions (NaN = missing label)
ARRAY_KEYS = ("latents", "actions_discrete", "actions_continuous")


class DatasetError(ValueError):
    """A dataset file is missing, corrupt, or inconsistent; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


@dataclass
class EpisodeRecord:
    """One committed episode as listed in the metadata."""

    name: str  # stem of the episode's files, e.g. "000042"
    length: int  # number of frames T
    attributes: dict[str, Any] = field(default_factory=dict)  # free-form per-episode info (seed, policy, ...)

    def file(self, root: Path, key: str) -> Path:
        """Path of the array `key` ("latents", "actions_discrete", "actions_continuous") of this episode."""
        return Path(root) / EPISODES_DIR / f"{self.name}.{key}.npy"


@dataclass
class DatasetMetadata:
    """Contents of ``metadata.json``: the dataset-wide spec plus the list of committed episodes."""

    latent_shape: tuple[int, int]  # (N_b, D_b): tokens per frame and width per token
    latent_dtype: str = "float32"  # storage dtype of latents, one of LATENT_DTYPES
    num_discrete_actions: tuple[int, ...] = ()  # class count of each categorical action component
    num_continuous_actions: int = 0  # number of continuous action components
    attributes: dict[str, Any] = field(
        default_factory=dict
    )  # free-form dataset info (source, generator config)
    episodes: list[EpisodeRecord] = field(default_factory=list)  # committed episodes in order
    format: str = FORMAT_VERSION  # format version string
    # per-channel statistics of the latents, {"mean": [D_b], "std": [D_b], "count": frames x N_b}
    # (stats.py); None = not recorded (still a valid dataset: `dreamer-dynamics-data stats ROOT` adds them)
    latent_stats: dict[str, Any] | None = None
    codec: dict[str, Any] | None = None  # {"class_path", "init_args"} of the frames <-> latents codec

    def array_keys(self) -> tuple[str, ...]:
        """Arrays stored per episode."""
        keys = ["latents"]
        if self.num_discrete_actions:
            keys.append("actions_discrete")
        if self.num_continuous_actions:
            keys.append("actions_continuous")
        return tuple(keys)

    def to_json(self) -> dict[str, Any]:
        stats = {} if self.latent_stats is None else {"latent_stats": self.latent_stats}
        return {
            "format": self.format,
            "latent_shape": list(self.latent_shape),
            "latent_dtype": self.latent_dtype,
            "num_discrete_actions": list(self.num_discrete_actions),
            "num_continuous_actions": self.num_continuous_actions,
            "codec": self.codec,
            "attributes": self.attributes,
            "episodes": [
                {"name": e.name, "length": e.length, "attributes": e.attributes} for e in self.episodes
            ],
            **stats,
        }

    @classmethod
    def from_json(cls, data: Any, path: Path) -> DatasetMetadata:
        """Parse and check the metadata; `path` is only used in error messages."""
        if not isinstance(data, dict):
            raise DatasetError(path, "metadata must be a JSON object")
        if data.get("format") != FORMAT_VERSION:
            raise DatasetError(
                path, f"unsupported format {data.get('format')!r}; this reader knows {FORMAT_VERSION!r}"
            )
        try:
            shape = tuple(int(x) for x in data["latent_shape"])
            dtype = str(data.get("latent_dtype", "float32"))
            discrete = tuple(int(x) for x in data.get("num_discrete_actions", ()))
            continuous = int(data.get("num_continuous_actions", 0))
            episodes = [
                EpisodeRecord(str(e["name"]), int(e["length"]), dict(e.get("attributes") or {}))
                for e in data.get("episodes", [])
            ]
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(path, f"malformed metadata field: {err!r}") from None
        meta = cls(
            shape,
            dtype,
            discrete,
            continuous,
            dict(data.get("attributes") or {}),
            episodes,
            latent_stats=check_latent_stats_record(data.get("latent_stats"), shape[1], path),
            codec=data.get("codec"),
        )
        meta.check_spec(path)
        for e in episodes:
            if e.length < 1:
                raise DatasetError(path, f"episode {e.name!r} has length {e.length} (< 1)")
        return meta

    def check_spec(self, path: Path | None) -> None:
        """Check the dataset-wide fields (used by the reader and the writer)."""
        if len(self.latent_shape) != 2 or min(self.latent_shape) < 1:
            raise DatasetError(
                path, f"latent_shape must be [N_b, D_b] with positive sizes, got {self.latent_shape}"
            )
        if self.latent_dtype not in LATENT_DTYPES:
            raise DatasetError(
                path, f"latent_dtype must be one of {LATENT_DTYPES}, got {self.latent_dtype!r}"
            )
        if any(n < 1 for n in self.num_discrete_actions):
            raise DatasetError(
                path, f"num_discrete_actions must be class counts >= 1, got {self.num_discrete_actions}"
            )
        if self.num_continuous_actions < 0:
            raise DatasetError(
                path, f"num_continuous_actions must be >= 0, got {self.num_continuous_actions}"
            )

    def expected_tail(self, key: str) -> tuple[int, ...]:
        """Per-frame shape of array `key`."""
        if key == "latents":
            return tuple(self.latent_shape)
        if key == "actions_discrete":
            return (len(self.num_discrete_actions),)
        return (self.num_continuous_actions,)

    def expected_dtype(self, key: str) -> np.dtype:
        if key == "latents":
            return np.dtype(self.latent_dtype)
        return np.dtype(DISCRETE_DTYPE if key == "actions_discrete" else CONTINUOUS_DTYPE)


def check_latent_stats_record(record: Any, dim: int, path: Path | None) -> dict[str, Any] | None:
    """Check a ``latent_stats`` record: {"mean": D_b finite floats, "std": D_b finite floats >= 0,
    "count": int >= 1}; returns it with plain Python types, or None when absent."""
    if record is None:
        return None
    if not isinstance(record, dict) or set(record) != {"mean", "std", "count"}:
        raise DatasetError(path, 'latent_stats must be an object with keys "mean", "std" and "count"')
    out: dict[str, Any] = {}
    for key in ("mean", "std"):
        try:
            values = np.asarray(record[key], dtype=np.float64)
        except (TypeError, ValueError):
            values = np.zeros(0)
        if values.shape != (dim,) or not np.isfinite(values).all():
            raise DatasetError(path, f"latent_stats.{key} must be a list of D_b={dim} finite numbers")
        out[key] = [float(v) for v in values]
    if min(out["std"]) < 0:
        raise DatasetError(path, "latent_stats.std must be >= 0")
    count = record["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DatasetError(path, f"latent_stats.count must be an integer >= 1, got {count!r}")
    out["count"] = count
    return out


def read_metadata(root: str | os.PathLike) -> DatasetMetadata:
    """Read and check ``ROOT/metadata.json``."""
    path = Path(root) / METADATA_FILE
    if not Path(root).is_dir():
        raise DatasetError(root, "dataset root does not exist or is not a directory")
    if not path.is_file():
        raise DatasetError(path, "metadata file is missing (not a dataset, or no episode was ever committed)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(path, f"metadata is not valid JSON ({err})") from None
    return DatasetMetadata.from_json(data, path)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write JSON crash-safely (``atomic_write``): the file holds the old or the new content, never half."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1)


def check_npy_header(path: Path, length: int, tail: Sequence[int], dtype: np.dtype) -> None:
    """Check that `path` is a complete .npy file of shape (length, *tail), `dtype`; header only."""
    if not path.is_file():
        raise DatasetError(path, "episode file is missing")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, file_dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, file_dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except Exception as err:  # numpy raises ValueError/OSError/EOFError on junk
        raise DatasetError(path, f"corrupt .npy file (cannot read header: {err})") from None
    if fortran:
        raise DatasetError(path, "array is Fortran-ordered; the format stores C-ordered arrays")
    expected = (length, *tail)
    if tuple(shape) != expected:
        raise DatasetError(path, f"shape {tuple(shape)} does not match the metadata, expected {expected}")
    if file_dtype != dtype:
        raise DatasetError(path, f"dtype {file_dtype} does not match the metadata, expected {dtype}")
    needed = offset + int(np.prod(expected)) * dtype.itemsize
    size = path.stat().st_size
    if size < needed:
        raise DatasetError(path, f"file is truncated: {size} bytes, expected {needed}")


def check_action_ids(actions: np.ndarray, classes: Sequence[int], where: Any) -> None:
    """Raise a DatasetError naming ``where`` for the first discrete action id outside [0, classes) and not -1
    (-1 = missing label). actions: [T, n_discrete] integers."""
    limits = np.asarray(classes, dtype=np.int64)
    bad = (actions < -1) | (actions >= limits[None, :])
    if bad.any():
        t, k = np.argwhere(bad)[0]
        raise DatasetError(
            where,
            f"action id {int(actions[t, k])} out of range at frame {t}, component {k}: "
            f"must be in [0, {int(limits[k])}) or -1 (missing)",
        )
