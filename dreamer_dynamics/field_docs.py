"""Help text of dataclass configs from their field comments (one source for the code and ``--help``).

The configs document each field with a trailing comment (``dim: int = 64  # model width``). LightningCLI
(jsonargparse) reads help text from docstrings only, so :func:`document_fields` appends a Google-style
``Args:`` section built from those comments to the class docstring: every field then has a help line in
``dreamer-dynamics fit --help`` and in ``--print_config=comments``.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
from typing import Any, TypeVar

from dreamer_dynamics.errors import ConfigError

T = TypeVar("T")


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its trailing ``#`` comment} read from the class source; {} when the source is missing."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # frozen or source-less installs: no help text, nothing breaks
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[str, str] = {}
    line_field: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row, col = token.start
        if token.type == tokenize.NAME and token.string in names and row not in line_field and col == 4:
            line_field[row] = token.string
        elif token.type == tokenize.COMMENT and row in line_field:
            comments[line_field[row]] = token.string.lstrip("#").strip()
    return comments


def document_fields(cls: T) -> T:
    """Class decorator: append ``Args:`` lines from the field comments to ``cls.__doc__`` (see module doc)."""
    comments = field_comments(cls)
    if comments:
        lines = [f"    {name}: {text}" for name, text in comments.items()]
        cls.__doc__ = (inspect.cleandoc(cls.__doc__ or "") + "\n\nArgs:\n" + "\n".join(lines)).strip()
    return cls


def config_from(cls: type[T], value: Any, where: str) -> T:
    """A new ``cls`` from one (copied), its plain dict (checkpoints, exports) or None (the defaults);
    ``where`` names it in the one-line error for unknown keys."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return dataclasses.replace(value)  # a copy: a shared default instance is never changed in place
    if isinstance(value, dict):
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown} for {cls.__name__}")
        return cls(**value)
    raise ConfigError(f"{where}: expected a {cls.__name__} or its dict, got {type(value).__name__}")


__all__ = ["config_from", "document_fields", "field_comments"]
