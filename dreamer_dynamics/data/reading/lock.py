"""The dataset writer's lock: one writer (or repair) per dataset root, also on network filesystems.

``ROOT/.lock`` is created with ``O_CREAT | O_EXCL`` and holds ``{"host", "pid", "token", "created"}``.
Exclusive creation is atomic on local filesystems and on NFS v3/v4 (Linux clients since 2.6.5), unlike
``fcntl``/``flock`` locks, which NFS serves only through a lock daemon that many cluster mounts disable
(``nolock``) and which a client that loses its lease drops silently. The file outlives a crash, so a held lock
is checked for staleness:

- same host, holder's pid no longer running: stale, reclaimed with a warning;
- same host, pid running: a live writer, ``DatasetError`` naming its pid;
- another host: this host cannot tell whether that writer is alive, so ``DatasetError`` naming host and pid,
  unless ``force=True`` (CLI ``--force``) says the user knows it is gone;
- an empty or unreadable lock file (a writer killed while creating it, or an older version's empty ``.lock``)
  older than ``EMPTY_LOCK_GRACE_S``: stale.

After taking the lock the writer reads it back and checks its own token, so two processes that reclaim the
same stale lock at once cannot both proceed. A pid reused by an unrelated process on the same host keeps a
stale lock held (safe side); remove the file by hand then.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from .format import DatasetError

LOCK_FILE = ".lock"
EMPTY_LOCK_GRACE_S = 10.0  # an empty lock younger than this may be a writer between create and write


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file, or None when it is empty or unreadable."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or not {"host", "pid"} <= holder.keys():
        return None
    return holder


class WriterLock:
    """Exclusive lock of a dataset root (see the module docstring); ``release()`` is idempotent."""

    def __init__(self, root: str | os.PathLike, *, force: bool = False, purpose: str = "LatentDatasetWriter"):
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.force = force
        self.purpose = purpose
        self.host = socket.gethostname()
        self.token = uuid.uuid4().hex
        self._held = False

    def acquire(self) -> WriterLock:
        record = {
            "host": self.host,
            "pid": os.getpid(),
            "token": self.token,
            "created": time.time(),
            "purpose": self.purpose,
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._reclaim_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            holder = read_lock(self.path)
            if holder is None or holder.get("token") != self.token:  # another process reclaimed it meanwhile
                raise DatasetError(self.root, "lost a race for the writer lock to another process; try again")
            self._held = True
            return self
        raise DatasetError(self.path, "could not take the writer lock (it keeps reappearing)")

    def _reclaim_if_stale(self) -> None:
        try:
            judged = self.path.read_bytes()
        except FileNotFoundError:
            return  # released meanwhile: just retry
        holder = read_lock(self.path) if judged else None
        if holder is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return  # released meanwhile: just retry
            if age < EMPTY_LOCK_GRACE_S and not self.force:
                raise DatasetError(self.path, "another writer is taking the lock right now")
            reason = "empty or unreadable lock file"
        else:
            who = f"pid {holder['pid']} on host {holder['host']}"
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("created", 0))))
            if holder["host"] == self.host:
                if _pid_running(int(holder["pid"])):
                    purpose = holder.get("purpose", "LatentDatasetWriter")
                    raise DatasetError(
                        self.root, f"another {purpose} has this dataset open ({who}, since {since})"
                    )
                reason = f"its writer ({who}) is no longer running"
            elif self.force:
                reason = f"forced: the writer {who} was declared gone"
            else:
                raise DatasetError(
                    self.root,
                    f"locked by a writer on another host ({who}, since {since}); "
                    "this host cannot check whether it is alive. If it is gone, "
                    f"pass force=True (CLI: --force) or delete {self.path}",
                )
        warnings.warn(f"{self.path}: reclaiming a stale writer lock ({reason})", stacklevel=3)
        # Move the judged file aside and check that it is the one judged: another process may have reclaimed
        # it and written a fresh lock in between, which must be put back, not deleted.
        grave = self.path.with_name(f"{LOCK_FILE}.stale-{self.token}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        if grave.read_bytes() != judged:
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
            grave.unlink(missing_ok=True)
            raise DatasetError(self.root, "lost a race for the writer lock to another process; try again")
        grave.unlink(missing_ok=True)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        holder = read_lock(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


__all__ = ["LOCK_FILE", "WriterLock", "read_lock"]
