"""``from-hdf5`` / ``from-npz``: arrays of frames or latents plus actions, selected by key names -> a latent
dataset (docs/data.md, "Arrays: HDF5 and NPZ").

* NPZ: one episode per file; ``--frames KEY`` or ``--latents KEY``, ``--actions-discrete KEY``,
  ``--actions-continuous KEY``.
* HDF5 (h5py, optional extra ``video``): keys are dataset paths such as ``obs/agentview_image``; with
  ``--episodes GROUP`` every child group of GROUP is one episode (the robomimic layout ``data/demo_*``),
  without it the whole file is one episode.

Frames: uint8 (0..255) or float in [0, 1], [T, H, W, C] or [T, H, W] (grayscale), ``--channels-first`` for
[T, C, H, W]. Latents: float [T, N_b, D_b], or [T, D] read as one token per frame.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dreamer_dynamics.errors import require_extra

from ..reading.format import DatasetError
from .convert import Source, resize_frames


class ArrayKeys:
    """Which arrays of an episode to read."""

    def __init__(
        self,
        frames: str | None = None,
        latents: str | None = None,
        actions_discrete: str | None = None,
        actions_continuous: str | None = None,
    ):
        if (frames is None) == (latents is None):
            raise DatasetError(None, "give exactly one of --frames KEY and --latents KEY")
        self.frames, self.latents = frames, latents  # key of the frames / latents array
        self.actions_discrete, self.actions_continuous = actions_discrete, actions_continuous


def _get(
    lookup: Callable[[str], Any], available: Callable[[], list[str]], key: str, where: str
) -> np.ndarray:
    try:
        return np.asarray(lookup(key))
    except KeyError:
        names = ", ".join(sorted(available())) or "none"
        raise DatasetError(where, f"no array {key!r} (available: {names})") from None


def frames_array(
    array: np.ndarray, key: str, where: str, image_size: int | None, channels_first: bool
) -> np.ndarray:
    """Check and convert one episode's frames -> float32 [T, S, S, C] in [0, 1]."""
    if array.ndim == 3:
        array = array[..., None]  # grayscale (T, H, W) -> (T, H, W, 1)
    if array.ndim == 4 and channels_first:
        array = array.transpose(0, 2, 3, 1)
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        hint = (
            " (pass --channels-first for [T, C, H, W])"
            if array.ndim == 4 and array.shape[1] in (1, 3)
            else ""
        )
        raise DatasetError(
            where,
            f"frames {key!r} have shape {list(array.shape)}; expected [T, H, W, C] with C = 1 or 3{hint}",
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise DatasetError(where, f"frames {key!r} must be uint8 or float in [0, 1], got {array.dtype}")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DatasetError(
                where,
                f"float frames {key!r} must be finite and in [0, 1] (got [{array.min()}, {array.max()}])",
            )
    if image_size is None and array.shape[1] != array.shape[2]:
        raise DatasetError(
            where,
            f"frames {key!r} are {array.shape[1]}x{array.shape[2]}; pass --image-size "
            "to crop and resize them to a square",
        )
    return resize_frames(array, image_size)


def latents_array(array: np.ndarray, key: str, where: str) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, None]  # (T, D) -> one token per frame
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.floating):
        raise DatasetError(
            where,
            f"latents {key!r} must be float [T, N_b, D_b] (or [T, D]), got {array.dtype} {list(array.shape)}",
        )
    return array


def _episode_source(
    key: str,
    label: str,
    lookup: Callable[[str], Any],
    available: Callable[[], list[str]],
    keys: ArrayKeys,
    image_size: int | None,
    channels_first: bool,
) -> Source:
    def load(bar: Any) -> tuple[str, np.ndarray]:
        if keys.frames is not None:
            array = frames_array(
                _get(lookup, available, keys.frames, label), keys.frames, label, image_size, channels_first
            )
            kind = "frames"
        else:
            array = latents_array(_get(lookup, available, keys.latents, label), keys.latents, label)
            kind = "latents"
        if bar is not None:
            bar.update(len(array))
        return kind, array

    def actions() -> dict[str, np.ndarray | None]:
        out = {}
        for kind, name in (("discrete", keys.actions_discrete), ("continuous", keys.actions_continuous)):
            if name is not None:
                rows = _get(lookup, available, name, label)
                out[kind] = rows[:, None] if rows.ndim == 1 else rows
        return out

    return Source(key, label, load, actions)


def npz_sources(
    files: Sequence[str | os.PathLike],
    keys: ArrayKeys,
    image_size: int | None = None,
    channels_first: bool = False,
) -> list[Source]:
    """One episode per ``.npz`` file (arrays are read lazily, one key at a time)."""
    sources = []
    for file in files:
        path = Path(file).resolve()
        try:
            archive = np.load(path, allow_pickle=False)
        except Exception as err:
            raise DatasetError(file, f"cannot read NPZ file: {err}") from None
        if not hasattr(archive, "files"):
            raise DatasetError(file, "not an NPZ archive (a single .npy array?)")
        sources.append(
            _episode_source(
                str(path),
                str(file),
                archive.__getitem__,
                lambda a=archive: a.files,
                keys,
                image_size,
                channels_first,
            )
        )
    return sources


def hdf5_sources(
    files: Sequence[str | os.PathLike],
    keys: ArrayKeys,
    episodes: str | None = None,
    image_size: int | None = None,
    channels_first: bool = False,
) -> list[Source]:
    """Episodes of HDF5 files: each child group of `episodes` (in natural order), or the whole file."""
    h5py = require_extra("h5py", "video", "reading HDF5")
    from .video import _natural_key

    sources = []
    for file in files:
        path = Path(file).resolve()
        try:
            handle = h5py.File(path, "r")
        except Exception as err:
            raise DatasetError(file, f"cannot open HDF5 file: {err}") from None
        if episodes is None:
            groups = [("", handle)]
        else:
            if not isinstance(handle.get(episodes), h5py.Group):
                raise DatasetError(file, f"no group {episodes!r} (top level: {', '.join(sorted(handle))})")
            parent = handle[episodes]
            names = sorted(
                (n for n in parent if isinstance(parent[n], h5py.Group)), key=lambda n: _natural_key(Path(n))
            )
            groups = [(f"{episodes}/{n}", parent[n]) for n in names]
        for name, group in groups:
            label = f"{file}:{name}" if name else str(file)

            def lookup(key: str, _g=group) -> np.ndarray:
                node = _g.get(key)
                if not isinstance(node, h5py.Dataset):
                    raise KeyError(key)
                return node[()]

            def available(_g=group) -> list[str]:
                found = []
                _g.visititems(lambda key, node: found.append(key) if isinstance(node, h5py.Dataset) else None)
                return found

            sources.append(
                _episode_source(f"{path}:{name}", label, lookup, available, keys, image_size, channels_first)
            )
    return sources
