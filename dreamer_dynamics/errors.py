"""Errors that are the user's to fix: the CLIs print them as one line and exit 1 (no traceback).

``DatasetError`` (data/reading/format.py: a file and its problem) and ``ConfigError`` (a setting, or a
checkpoint that does not fit the data) are both ``ValueError``s; ``MissingExtraError`` (an ``ImportError``)
names the ``pip install`` command of a missing optional extra. Set ``DREAMER_DYNAMICS_TRACEBACK=1`` to see the
full traceback instead.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Iterable
from types import ModuleType

TRACEBACK_ENV = "DREAMER_DYNAMICS_TRACEBACK"


class ConfigError(ValueError):
    """A configuration value, or a checkpoint, that cannot work; the message says which and why."""


class NonFiniteLossError(RuntimeError):
    """Training met a non-finite loss; the message names the step (docs/training.md, "Errors")."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message gives the ``pip install`` command."""


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or a MissingExtraError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{purpose} needs the optional extra: pip install 'dreamer_dynamics[{extra}]'"
        ) from err


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean a, b?"`` with the closest of `candidates` (difflib), or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")
_NOT_ACCEPTED = re.compile(r"(Group|Subcommand) '([^']+)' does not accept option '([^']+)'")


def argument_error_line(message: str, keys: Iterable[str]) -> str:
    """A jsonargparse error as one line; an unknown key (command line or config file) with the closest
    valid keys."""
    match = _UNRECOGNIZED.search(message)
    key = match.group(1).lstrip("-").split("=")[0] if match else None
    match = _NOT_ACCEPTED.search(message)
    if match:
        kind, where, option = match.groups()  # a group's keys are relative to it, a subcommand's are not
        key = f"{where}.{option}" if kind == "Group" else option
    if key is None:
        return " ".join(message.split())
    return f"unknown key '{key}'{did_you_mean(key, keys)} (--help lists every key)"


def show_traceback() -> bool:
    """True when ``DREAMER_DYNAMICS_TRACEBACK`` is set to a true value (1, true, yes)."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


__all__ = [
    "ConfigError",
    "MissingExtraError",
    "NonFiniteLossError",
    "TRACEBACK_ENV",
    "argument_error_line",
    "did_you_mean",
    "require_extra",
    "show_traceback",
]
