"""Crash-safe file writes: a file appears under its final name complete or not at all.

Every writer of the package (dataset metadata and episodes, prediction files) goes through ``atomic_write``:
write to a temporary file beside the target, flush and fsync it, ``os.replace`` it onto the target (atomic on
POSIX and Windows), then fsync the directory so that the rename itself survives a power cut.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".tmp-"  # temporaries start with this, so cleaners can find leftovers of a crashed writer


def temporary_path(path: Path) -> Path:
    """Hidden temporary name in the target's directory (same filesystem, so the rename is atomic)."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}-{os.getpid()}")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, sync_directory: bool = True) -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)``: the file is renamed into place only if the block
    completes; on an exception the temporary file is removed and the old ``path`` (if any) is untouched.

    ``sync_directory=False`` skips the directory fsync, for callers that rename several files and sync once.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_directory:
        fsync_directory(path.parent)


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["atomic_write", "fsync_directory", "temporary_path", "TEMP_PREFIX"]
