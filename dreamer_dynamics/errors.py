"""Errors that are the user's to fix: the CLI prints them as one line and exits 1 (no traceback).

``DatasetError`` (data/format.py: a file and its problem) and ``ConfigError`` (a setting, or a checkpoint
that does not fit the data) are both ``ValueError``s. Set ``DREAMER_DYNAMICS_TRACEBACK=1`` to see the full
traceback instead.
"""

from __future__ import annotations

import os

TRACEBACK_ENV = "DREAMER_DYNAMICS_TRACEBACK"


class ConfigError(ValueError):
    """A configuration value, or a checkpoint, that cannot work; the message says which and why."""


def show_traceback() -> bool:
    """True when ``DREAMER_DYNAMICS_TRACEBACK`` is set to a true value (1, true, yes)."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


__all__ = ["ConfigError", "TRACEBACK_ENV", "show_traceback"]
