"""A dataset's fingerprint: what a checkpoint records about the data it was trained on.

``{"root", "latent_shape", "num_discrete_actions", "num_continuous_actions", "latent_stats", "num_episodes"}``
in plain JSON types (weights-only loadable). The latent shape and action spec must match a checkpoint's
network (``check_data_matches``); a changed episode count, statistics or root only warrant a warning
(``fingerprint_changes``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .format import METADATA_FILE, DatasetError, read_metadata

SPEC_KEYS = ("latent_shape", "num_discrete_actions", "num_continuous_actions")


def dataset_fingerprint(root: str | os.PathLike) -> dict[str, Any]:
    """Fingerprint of the dataset at ``root`` from its metadata (no episode file is read)."""
    meta = read_metadata(root)
    try:
        raw = json.loads((Path(root) / METADATA_FILE).read_text())
    except (OSError, ValueError) as err:  # read_metadata succeeded, so this is a race: report it plainly
        raise DatasetError(Path(root) / METADATA_FILE, f"cannot re-read metadata ({err})") from None
    return {
        "root": str(Path(root).resolve()),
        "latent_shape": [int(x) for x in meta.latent_shape],
        "num_discrete_actions": [int(x) for x in meta.num_discrete_actions],
        "num_continuous_actions": int(meta.num_continuous_actions),
        "latent_stats": raw.get("latent_stats"),  # per-channel mean/std where the writer recorded them
        "num_episodes": len(meta.episodes),
    }


def describe_spec(spec: dict[str, Any]) -> str:
    """'latents [16, 8] with discrete actions (3,) and 2 continuous' (or 'and no actions')."""
    shape = list(spec["latent_shape"])
    discrete = tuple(spec.get("num_discrete_actions") or ())
    continuous = int(spec.get("num_continuous_actions") or 0)
    parts = []
    if discrete:
        parts.append(f"discrete actions {discrete}")
    if continuous:
        parts.append(f"{continuous} continuous")
    actions = " and ".join(parts) if parts else "no actions"
    return f"latents {shape} with {actions}"


def spec_of(config: dict[str, Any]) -> dict[str, Any]:
    """The data spec a network was built for, from a ``DynamicsConfig`` dict (checkpoint hyper-parameters)."""
    return {
        "latent_shape": [int(config["latent_tokens"]), int(config["latent_dim"])],
        "num_discrete_actions": [int(x) for x in config.get("num_discrete_actions") or ()],
        "num_continuous_actions": int(config.get("num_continuous_actions") or 0),
    }


def spec_mismatch(expected: dict[str, Any], actual: dict[str, Any], *, what: str, where: str) -> str | None:
    """One line naming both sides when the latent shape or action spec differ, else None."""
    if _normalised(expected) == _normalised(actual):
        return None
    return f"{what} expects {describe_spec(expected)}; {where} has {describe_spec(actual)}"


def _normalised(spec: dict[str, Any]) -> tuple:
    shape = tuple(int(x) for x in spec["latent_shape"])
    discrete = tuple(int(x) for x in spec["num_discrete_actions"] or ())
    return shape, discrete, int(spec["num_continuous_actions"] or 0)


def fingerprint_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences in episode count, latent statistics and root (spec checked elsewhere)."""
    changes = []
    if recorded.get("num_episodes") != current.get("num_episodes"):
        changes.append(f"{recorded.get('num_episodes')} -> {current.get('num_episodes')} episodes")
    if recorded.get("latent_stats") != current.get("latent_stats"):
        changes.append("latent statistics changed")
    if recorded.get("root") and recorded.get("root") != current.get("root"):
        changes.append(f"root {recorded.get('root')} -> {current.get('root')}")
    return changes


def is_other_dataset(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Another dataset, not the recorded one grown or moved: another root, and other episodes or statistics
    (a copy at another path is the same data; episodes appended at the same root are the same dataset)."""
    moved = bool(recorded.get("root")) and recorded.get("root") != current.get("root")
    same_content = recorded.get("num_episodes") == current.get("num_episodes") and recorded.get(
        "latent_stats"
    ) == current.get("latent_stats")
    return moved and not same_content


__all__ = [
    "is_other_dataset",
    "dataset_fingerprint",
    "describe_spec",
    "fingerprint_changes",
    "spec_mismatch",
    "spec_of",
]
