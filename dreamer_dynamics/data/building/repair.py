"""Leftovers of interrupted writers: found by ``dreamer-dynamics-data validate``, removed by ``--repair`` and
by the next writer (docs/data.md, "Crash safety").

A writer killed mid-episode leaves ``.tmp-*`` files (a half-written array, or a metadata temp file); one
killed between renaming an episode's files into place and rewriting ``metadata.json`` (or before its
``commit_every``-th episode) leaves episode files that the metadata does not list. Neither is part of the
dataset: readers see only the episodes the metadata lists. Other files are never touched.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..reading.format import EPISODES_DIR, DatasetMetadata
from ..reading.lock import LOCK_FILE

_EPISODE_FILE = re.compile(r"^(?P<name>[^.]+)\.(latents|actions_discrete|actions_continuous)\.npy$")


def find_leftovers(root: str | os.PathLike, meta: DatasetMetadata) -> list[tuple[Path, str]]:
    """``[(path, what it is), ...]``, sorted: temporaries and unlisted episode files under ``root``."""
    root = Path(root)
    listed = {record.name for record in meta.episodes}
    found = []
    for directory in (root, root / EPISODES_DIR):
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if path.name.startswith(".tmp-"):
                found.append((path, "temporary file of an interrupted writer"))
            elif path.name.startswith(f"{LOCK_FILE}.stale-"):
                found.append((path, "stale lock of an interrupted lock reclaim"))
            elif directory.name == EPISODES_DIR and (m := _EPISODE_FILE.match(path.name)):
                if m["name"] not in listed:
                    found.append((path, "episode file not listed in metadata.json (never committed)"))
    return sorted(found)


def remove_leftovers(root: str | os.PathLike, meta: DatasetMetadata) -> list[Path]:
    """Delete what ``find_leftovers`` finds; returns the removed paths. Call it only under the writer lock."""
    removed = []
    for path, _ in find_leftovers(root, meta):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


__all__ = ["find_leftovers", "remove_leftovers"]
