"""Crash-safe creation and appending of latent datasets (format: reading/format.py, docs/data.md).

Commit protocol for one episode: every array is validated in memory first, then written to a temporary file
in ``episodes/``, fsynced, and renamed to its final name; only then is ``metadata.json`` rewritten (temp
file + os.replace). A process killed at any point leaves a dataset whose metadata lists exactly the episodes
committed before, all complete. Leftover temporary files are removed by the next writer. ``abort()`` undoes a
writer that met an error: the dataset is left as it was before it opened (or absent, if it created it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dreamer_dynamics.atomic import atomic_write

from ..reading.format import (
    CONTINUOUS_DTYPE,
    DISCRETE_DTYPE,
    EPISODES_DIR,
    METADATA_FILE,
    DatasetError,
    DatasetMetadata,
    EpisodeRecord,
    check_action_ids,
    fsync_directory,
    read_metadata,
    write_json_atomically,
)
from ..reading.lock import WriterLock
from ..reading.stats import LatentStatistics
from .repair import remove_leftovers


def _to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, torch tensors and nested lists."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _action_array(
    name: str, value: Any, components: int, length: int, where: Any, *, declared: str, missing_label: str
) -> np.ndarray | None:
    """The [T, components] action array of one kind, checked against the dataset's declared spec (shared
    part of the discrete and continuous checks); None when the dataset declares no such actions."""
    if components == 0:
        if value is not None:
            raise DatasetError(where, f"{name} given but the dataset declares {declared}")
        return None
    if value is None:
        raise DatasetError(
            where,
            f"{name} missing; the dataset declares {components} components "
            f"(use {missing_label} for a missing label)",
        )
    array = _to_numpy(value)
    if array.ndim == 1 and components == 1:
        array = array[:, None]
    if array.shape != (length, components):
        raise DatasetError(
            where, f"{name} must have shape [T={length}, {components}], got {list(array.shape)}"
        )
    return array


def prepare_episode(
    meta: DatasetMetadata,
    where: str,
    latents: Any,
    actions_discrete: Any = None,
    actions_continuous: Any = None,
) -> dict[str, np.ndarray]:
    """Validate one episode against the dataset spec and return its arrays in storage dtypes.

    Rules (docs/data.md): latents are real floating point [T, N_b, D_b], finite, cast to the storage dtype
    (float64 -> float32 is allowed; a float16 overflow is an error); discrete actions are integers
    [T, n_discrete] in [-1, classes) with -1 = missing label; continuous actions are floating
    [T, n_continuous] with NaN = missing label and inf an error; action arrays have the latents' length.
    """
    arrays = {"latents": _stored_latents(meta, where, latents)}
    length = arrays["latents"].shape[0]

    a = _action_array(
        "actions_discrete",
        actions_discrete,
        len(meta.num_discrete_actions),
        length,
        where,
        declared="num_discrete_actions=()",
        missing_label="-1",
    )
    if a is not None:
        if not np.issubdtype(a.dtype, np.integer):
            raise DatasetError(where, f"actions_discrete must be integers, got dtype {a.dtype}")
        check_action_ids(a, meta.num_discrete_actions, where)
        arrays["actions_discrete"] = np.ascontiguousarray(a, dtype=DISCRETE_DTYPE)

    c = _action_array(
        "actions_continuous",
        actions_continuous,
        meta.num_continuous_actions,
        length,
        where,
        declared="num_continuous_actions=0",
        missing_label="NaN",
    )
    if c is not None:
        if not np.issubdtype(c.dtype, np.floating):
            raise DatasetError(where, f"actions_continuous must be floating point, got dtype {c.dtype}")
        if np.isinf(c).any():
            raise DatasetError(
                where, "actions_continuous contain inf (NaN is allowed and means a missing label)"
            )
        arrays["actions_continuous"] = np.ascontiguousarray(c, dtype=CONTINUOUS_DTYPE)
    return arrays


def _stored_latents(meta: DatasetMetadata, where: str, latents: Any) -> np.ndarray:
    """Checked latents [T, N_b, D_b] in the storage dtype (the latent rules of ``prepare_episode``)."""
    latents = _to_numpy(latents)
    if latents.ndim != 3 or tuple(latents.shape[1:]) != tuple(meta.latent_shape):
        raise DatasetError(
            where,
            f"latents must have shape [T, {meta.latent_shape[0]}, {meta.latent_shape[1]}], "
            f"got {list(latents.shape)}",
        )
    if not np.issubdtype(latents.dtype, np.floating):
        raise DatasetError(where, f"latents must be floating point, got dtype {latents.dtype}")
    length = latents.shape[0]
    if length < 1:
        raise DatasetError(where, "episode has no frames")
    finite_frames = np.isfinite(latents).reshape(length, -1).all(1)  # (T,)
    if not finite_frames.all():
        raise DatasetError(
            where,
            f"latents contain NaN/inf (first bad frame {int(np.argmin(finite_frames))})",
        )
    with np.errstate(over="ignore"):  # an overflow becomes inf and is reported just below
        stored = latents.astype(meta.latent_dtype, copy=False)
    if not np.isfinite(stored).all():
        raise DatasetError(where, f"latents overflow the storage dtype {meta.latent_dtype}")
    return np.ascontiguousarray(stored)


class LatentDatasetWriter:
    """Create a latent dataset at `root`, or append to the one already there.

    Example::

        with LatentDatasetWriter("data/run1", latent_shape=(16, 48), num_discrete_actions=(5,)) as w:
            w.add_episode(latents, actions_discrete=actions)   # latents [T, 16, 48], actions [T, 1]
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        latent_shape: Sequence[int],
        num_discrete_actions: Sequence[int] = (),
        num_continuous_actions: int = 0,
        latent_dtype: str = "float32",
        codec: dict[str, Any] | None = None,
        attributes: dict[str, Any] | None = None,
        commit_every: int = 1,
        force: bool = False,
    ):
        self.root = Path(root)
        self.commit_every = max(
            1, int(commit_every)
        )  # episodes per metadata rewrite (1 = commit each episode)
        spec = DatasetMetadata(
            tuple(int(x) for x in latent_shape),
            str(latent_dtype),
            tuple(int(x) for x in num_discrete_actions),
            int(num_continuous_actions),
            dict(attributes or {}),
            codec=codec,
        )
        spec.check_spec(None)
        episodes_dir = self.root / EPISODES_DIR
        # the folders this writer creates (outermost first), removed again by abort()
        self._created_dirs = [p for p in (*reversed(episodes_dir.parents), episodes_dir) if not p.exists()]
        episodes_dir.mkdir(parents=True, exist_ok=True)
        # one writer per root, also on NFS (reading/lock.py); force=True takes over another host's lock
        self._lock = WriterLock(self.root, force=force).acquire()
        try:
            if (self.root / METADATA_FILE).exists():
                self.meta = read_metadata(self.root)
                self._check_same_spec(spec)
            else:
                self.meta = spec
        except BaseException:
            self._lock.release()
            raise
        self._remove_temporaries()
        metadata = self.root / METADATA_FILE
        self._metadata_before = metadata.read_bytes() if metadata.exists() else None  # for abort()
        self._files_before = set(os.listdir(episodes_dir))
        self._uncommitted = 0
        self._closed = False
        self._next_index = 1 + max((int(e.name) for e in self.meta.episodes if e.name.isdigit()), default=-1)
        self._stats = self._continue_stats()  # per-channel latent mean/std, merged episode by episode
        if not (self.root / METADATA_FILE).exists():
            self._commit()  # an empty but valid dataset from the first moment

    # ------------------------------------------------------------------ public API
    @property
    def num_episodes(self) -> int:
        return len(self.meta.episodes)

    def add_episode(
        self,
        latents: Any,
        actions_discrete: Any = None,
        actions_continuous: Any = None,
        attributes: dict[str, Any] | None = None,
    ) -> int:
        """Validate and commit one episode; returns its index in the dataset."""
        if self._closed:
            raise RuntimeError("LatentDatasetWriter is closed")
        name = f"{self._next_index:06d}"
        arrays = prepare_episode(
            self.meta, f"{self.root}: episode {name}", latents, actions_discrete, actions_continuous
        )
        record = EpisodeRecord(name, int(arrays["latents"].shape[0]), dict(attributes or {}))
        episodes_dir = self.root / EPISODES_DIR
        for key, array in arrays.items():  # each file complete or absent; metadata (the commit) comes last
            with atomic_write(record.file(self.root, key), sync_directory=False) as f:
                np.save(f, array, allow_pickle=False)
        fsync_directory(episodes_dir)
        self.meta.episodes.append(record)
        if self._stats is not None:  # from the stored values (after the cast), in float64
            self._stats.update(arrays["latents"])
            self.meta.latent_stats = self._stats.record()
        self._next_index += 1
        self._uncommitted += 1
        if self._uncommitted >= self.commit_every:
            self._commit()
        return len(self.meta.episodes) - 1

    def close(self) -> None:
        """Commit the metadata and release the lock (idempotent)."""
        if self._closed:
            return
        try:
            self._commit()
        finally:
            self._closed = True
            self._lock.release()

    def abort(self) -> None:
        """Undo this writer and release the lock (idempotent; a no-op after ``close``): the episode files it
        wrote are removed and ``metadata.json`` is restored byte for byte, or, for a dataset this writer
        created, removed with the folders it made."""
        if self._closed:
            return
        self._closed = True
        try:
            episodes_dir = self.root / EPISODES_DIR
            for name in set(os.listdir(episodes_dir)) - self._files_before:
                (episodes_dir / name).unlink(missing_ok=True)
            metadata = self.root / METADATA_FILE
            if self._metadata_before is None:
                metadata.unlink(missing_ok=True)
            else:
                with atomic_write(metadata) as f:
                    f.write(self._metadata_before)
        finally:
            self._lock.release()
        for folder in reversed(self._created_dirs):  # innermost first; a folder someone else filled stays
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> LatentDatasetWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()  # episodes added before an exception are complete, so they are committed too

    # ------------------------------------------------------------------ internals
    def _continue_stats(self) -> LatentStatistics | None:
        """Statistics to continue: empty for a new dataset, the stored record when it counts exactly the
        committed episodes; None (leave them out) for episodes written without statistics."""
        dim = self.meta.latent_shape[1]
        count = sum(e.length for e in self.meta.episodes) * self.meta.latent_shape[0]
        record = self.meta.latent_stats
        if count == 0:
            self.meta.latent_stats = None
            return LatentStatistics(dim)
        if record is not None and int(record["count"]) == count:
            return LatentStatistics.from_record(record)
        warnings.warn(
            f"{self.root / METADATA_FILE}: appending to episodes without up-to-date latent_stats; they are "
            f"left out (run `dreamer-dynamics-data stats {self.root}` afterwards)",
            stacklevel=3,
        )
        self.meta.latent_stats = None
        return None

    def _commit(self) -> None:
        write_json_atomically(self.root / METADATA_FILE, self.meta.to_json())
        self._uncommitted = 0

    def _check_same_spec(self, spec: DatasetMetadata) -> None:
        path = self.root / METADATA_FILE
        for name in ("latent_shape", "latent_dtype", "num_discrete_actions", "num_continuous_actions"):
            old, new = getattr(self.meta, name), getattr(spec, name)
            if tuple(np.atleast_1d(old)) != tuple(np.atleast_1d(new)):
                raise DatasetError(
                    path, f"cannot append: existing {name}={old} but the writer was given {new}"
                )
        if spec.codec is not None and self.meta.codec not in (None, spec.codec):
            raise DatasetError(
                path, f"cannot append: existing codec {self.meta.codec} differs from {spec.codec}"
            )
        if spec.codec is not None:
            self.meta.codec = spec.codec
        self.meta.attributes.update(spec.attributes)

    def _remove_temporaries(self) -> None:
        remove_leftovers(self.root, self.meta)
