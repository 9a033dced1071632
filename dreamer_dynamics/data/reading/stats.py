"""Per-channel latent statistics: streaming float64 mean/std and their ``metadata.json`` record.

Encoders emit latents at any scale (raw pixel patches: mean ~0.3, std ~0.13; other tokenizers: std ~5), while
the flow mixes the data with unit Gaussian noise (paper Eq. 1). Training therefore standardises the D_b
channels with these statistics (``dreamer_dynamics.units.LatentUnits.from_stats``), and rollouts convert back
(docs/data.md, docs/training.md).

The statistics are exact across appends: episodes are merged with Chan et al.'s parallel update of
(count, mean, M2) in float64, and a reopened dataset continues from the stored record (M2 = std^2 * count).
Values are accumulated relative to a fixed per-channel shift (the first mean seen), so a large offset does not
cost digits of a small spread (the "shifted data" algorithm).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .format import METADATA_FILE, DatasetError, read_metadata, write_json_atomically
from .lock import WriterLock

CHUNK_ELEMENTS = 1 << 22  # float64 working set of one update (32 MiB): a huge episode is never copied whole


class LatentStatistics:
    """Running per-channel count, mean and M2 (sum of squared deviations) over latent vectors [..., D_b]."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.count = 0  # latent vectors seen (frames x N_b)
        self.shift: np.ndarray | None = None  # (D_b,) subtracted before accumulating; set by the first data
        self.shifted_mean = np.zeros(self.dim, np.float64)  # (D_b,) mean - shift
        self.m2 = np.zeros(self.dim, np.float64)  # (D_b,) sum of squared deviations from the mean

    @property
    def mean(self) -> np.ndarray:
        """(D_b,) float64 mean per channel."""
        return self.shifted_mean if self.shift is None else self.shift + self.shifted_mean

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LatentStatistics:
        """Continue from a ``latent_stats`` record {"mean", "std", "count"} (population std, ddof 0)."""
        stats = cls(len(record["mean"]))
        stats.count = int(record["count"])
        stats.shift = np.asarray(record["mean"], np.float64)
        stats.m2 = np.square(np.asarray(record["std"], np.float64)) * stats.count
        return stats

    def update(self, latents: np.ndarray) -> None:
        """Add latents [..., D_b] (any float dtype, memory maps welcome: read in chunks of leading rows)."""
        flat = latents.reshape(-1, self.dim)  # a view for contiguous arrays and memory maps
        rows = max(1, CHUNK_ELEMENTS // self.dim)
        for start in range(0, flat.shape[0], rows):
            chunk = np.asarray(flat[start : start + rows], dtype=np.float64)  # (n, D_b)
            if self.shift is None:
                self.shift = chunk.mean(0)
            chunk -= self.shift
            mean = chunk.mean(0)
            self._merge(chunk.shape[0], mean, np.square(chunk - mean).sum(0))

    def _merge(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        # (count, shifted mean, M2) of new data; Chan, Golub, LeVeque (1979): exact combination of two
        # partial (count, mean, M2) summaries.
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.shifted_mean
        self.shifted_mean = self.shifted_mean + delta * (count / total)
        self.m2 = self.m2 + m2 + np.square(delta) * (self.count * count / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel (ddof 0), like ``np.std``."""
        return np.sqrt(self.m2 / max(self.count, 1))

    def record(self) -> dict[str, Any] | None:
        """The ``latent_stats`` record of ``metadata.json``; None before any latent was seen."""
        if self.count == 0:
            return None
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": int(self.count)}


def expected_count(dataset) -> int:
    """Latent vectors a record of `dataset` (a LatentDataset) must count: frames x N_b."""
    return dataset.num_frames * dataset.latent_shape[0]


def stale_reason(
    dataset, record: dict[str, Any] | None, recomputed: LatentStatistics | None = None
) -> str | None:
    """Why `record` does not describe `dataset` (None = it does): the count must equal frames x N_b and, when
    `recomputed` (from a full scan) is given, mean and std must agree with it."""
    if record is None:
        return None
    count = expected_count(dataset)
    if int(record["count"]) != count:
        return (
            f"latent_stats are stale: count {record['count']}, but the episodes hold {count} latent vectors"
        )
    if recomputed is not None:
        scale = max(float(recomputed.std.max()), float(np.abs(recomputed.mean).max()), 1e-30)
        for name, stored, actual in (
            ("mean", record["mean"], recomputed.mean),
            ("std", record["std"], recomputed.std),
        ):
            error = float(np.abs(np.asarray(stored, np.float64) - actual).max())
            if error > 1e-6 * scale:
                return f"latent_stats are stale: {name} differs from the episodes' by up to {error:.3g}"
    return None


def compute_latent_stats(dataset, *, progress: bool = False) -> LatentStatistics:
    """Scan every episode of `dataset` (a LatentDataset) through its memory maps, one chunk at a time."""
    stats = LatentStatistics(dataset.latent_shape[1])
    for index in tqdm(range(len(dataset)), desc="latent stats", disable=not progress):
        stats.update(dataset[index]["latents"])
        dataset._maps.pop(index, None)  # do not keep every map open during a full scan
    return stats


def write_latent_stats(root: str | os.PathLike, stats: LatentStatistics) -> Path:
    """Store `stats` as ``latent_stats`` in ``ROOT/metadata.json`` (atomic rewrite under the writer's lock).

    Raises DatasetError if a writer holds the dataset or the episodes changed since `stats` were computed.
    """
    root = Path(root)
    path = root / METADATA_FILE
    try:
        lock = WriterLock(root, purpose="dreamer-dynamics-data stats").acquire()
    except OSError as err:
        raise DatasetError(root, f"cannot record latent_stats: {err.strerror}") from None
    try:
        meta = read_metadata(root)
        count = sum(e.length for e in meta.episodes) * meta.latent_shape[0]
        if count != stats.count:
            raise DatasetError(
                path,
                f"episodes changed while computing latent_stats ({stats.count} latent "
                f"vectors counted, metadata lists {count})",
            )
        meta.latent_stats = stats.record()
        try:
            write_json_atomically(path, meta.to_json())
        except OSError as err:
            raise DatasetError(path, f"cannot record latent_stats: {err.strerror}") from None
    finally:
        lock.release()
    return path
