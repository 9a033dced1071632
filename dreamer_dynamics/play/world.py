"""What ``dreamer-dynamics play`` steers: a model, its dataset (contexts, recorded actions) and its codec.

``load_world`` reads a Lightning checkpoint or an export folder (model/pretrained.py), finds the dataset
(the checkpoint's own, ``--data-root``, or the built-in one for an export) and its codec, and checks that
they fit the model; every problem is a ``PlayError`` of one line, raised before the server starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dreamer_dynamics.data.building.toy_env import ACTIONS
from dreamer_dynamics.data.reading.codec import Decoder, load_codec
from dreamer_dynamics.data.reading.dataset import LatentDataset
from dreamer_dynamics.data.reading.format import METADATA_FILE, DatasetError
from dreamer_dynamics.model.pretrained import CONFIG_FILE


class PlayError(ValueError):
    """A bad input of ``dreamer-dynamics play``: printed as one line before the server starts."""


@dataclass
class World:
    """The model (eval mode, model units) with the dataset and picture decoder it is played with."""

    model: nn.Module
    dataset: LatentDataset
    decode: Decoder  # latents [..., N_b, D_b] (dataset units) -> frames [..., H, W, C] in [0, 1]
    context_frames: int  # frames of each drawn context
    num_steps: int  # default K
    context_noise: float  # noise amount of committed frames (docs/design.md §5)
    source: str  # what was loaded, for the page's title

    def to_model(self, z: torch.Tensor) -> torch.Tensor:
        """Dataset units -> model units (the network's ``latent_units``, docs/training.md)."""
        return self.model.latent_units.standardize(z)

    def to_data(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.latent_units.destandardize(z)

    def step_choices(self) -> list[int]:
        """K = 1, 2, 4 and K_max (those <= K_max)."""
        k_max = self.model.config.k_max
        return sorted({k for k in (1, 2, 4) if k <= k_max} | {k_max})

    def action_spec(self) -> dict[str, Any]:
        """The dataset's actions for the page: class counts, names, continuous ranges."""
        meta = self.dataset.meta
        classes = list(meta.num_discrete_actions)
        names = meta.attributes.get("actions") if isinstance(meta.attributes, dict) else None
        named = isinstance(names, list) and len(classes) == 1 and len(names) == classes[0]
        ranges = continuous_ranges(self.dataset) if meta.num_continuous_actions else []
        return {
            "discrete": classes,
            "names": [str(n) for n in names] if named else None,
            "arrows": named and tuple(names) == ACTIONS,  # the built-in world: arrows / WASD
            "continuous": ranges,
        }


def continuous_ranges(dataset: LatentDataset, episodes: int = 32) -> list[list[float]]:
    """[lo, hi] of each continuous action component over the first `episodes` episodes (slider ranges)."""
    values = np.concatenate(
        [np.asarray(dataset[i]["actions_continuous"]) for i in range(min(episodes, len(dataset)))]
    )
    values = values[np.isfinite(values).all(1)]
    lo, hi = (
        (values.min(0), values.max(0))
        if len(values)
        else (np.full(values.shape[1], -1.0), np.ones(values.shape[1]))
    )
    return [[float(a), float(b) if b > a else float(a) + 1.0] for a, b in zip(lo, hi)]


def _load_model(source: Path, data_root: str | None) -> tuple[nn.Module, Path | None, dict | None]:
    """(model with latent_units / rollout_defaults, dataset root or None, codec spec of the export)."""
    if source.is_dir():
        from dreamer_dynamics.model import DynamicsTransformer

        if not (source / CONFIG_FILE).is_file():
            raise PlayError(f"{source}: not an export folder (no {CONFIG_FILE}; see dreamer-dynamics export)")
        try:
            model = DynamicsTransformer.from_pretrained(source)
        except (OSError, ValueError, TypeError) as err:
            raise PlayError(f"{source}: cannot load the exported model ({err})") from None
        return model, Path(data_root) if data_root else None, model.codec_spec
    from dreamer_dynamics.export import load_checkpoint_model, training_dataset_root

    try:
        model, checkpoint, _ = load_checkpoint_model(source)
    except (OSError, ValueError, RuntimeError) as err:
        raise PlayError(f"{source}: cannot load the checkpoint ({err})") from None
    root = Path(data_root) if data_root else training_dataset_root(checkpoint)
    if root is None and "toy" in (checkpoint.get("datamodule_hyper_parameters") or {}):
        root = _builtin_root(checkpoint["datamodule_hyper_parameters"])
    if root is None:
        raise PlayError(f"{source}: its training dataset is not on this machine; pass --data-root")
    return model, root, None


def _builtin_root(data: dict[str, Any] | None) -> Path:
    """The built-in dataset a checkpoint's DataModule settings describe (generated on first use)."""
    from dreamer_dynamics.data.building.worlds import builtin_dataset_root, toy_config

    data = data or {}
    config = toy_config(data.get("world") or "deterministic", data.get("toy"))
    return builtin_dataset_root(config, data.get("cache_dir"))


def _check_fits(model: nn.Module, dataset: LatentDataset) -> None:
    cfg, meta = model.config, dataset.meta
    theirs = (tuple(meta.latent_shape), tuple(meta.num_discrete_actions), int(meta.num_continuous_actions))
    mine = ((cfg.latent_tokens, cfg.latent_dim), tuple(cfg.num_discrete_actions), cfg.num_continuous_actions)
    if theirs != mine:
        raise PlayError(
            f"{dataset.root}: latents {list(theirs[0])}, discrete {theirs[1]}, {theirs[2]} continuous "
            f"do not fit the model (latents {list(mine[0])}, discrete {mine[1]}, {mine[2]} continuous)"
        )


def load_world(source: str | os.PathLike, *, data_root: str | None = None, context_frames: int = 4) -> World:
    """Everything ``play`` needs from a checkpoint / export `source`; PlayError (one line) on bad input."""
    source = Path(source)
    if not source.exists():
        raise PlayError(f"{source}: no such checkpoint file or export folder")
    model, root, codec = _load_model(source, data_root)
    if root is None:
        root = _builtin_root(None)  # an export names no dataset: the built-in world, if it fits
    if not (Path(root) / METADATA_FILE).is_file():
        raise PlayError(f"{root}: no dataset here (missing {METADATA_FILE})")
    try:
        dataset = LatentDataset(root)
    except DatasetError as err:
        raise PlayError(str(err)) from None
    _check_fits(model, dataset)
    spec = codec or dataset.meta.codec
    if spec is None:
        raise PlayError(f"{root}: the dataset names no codec, so its latents cannot be shown as pictures")
    try:
        decode = Decoder(load_codec(spec, root))
    except DatasetError as err:
        raise PlayError(str(err)) from None
    longest = int(dataset.episode_lengths.max(initial=0))
    if not 1 <= context_frames < longest:
        raise PlayError(f"--context-frames {context_frames}: must be in [1, {longest - 1}] for {root}")
    defaults = model.rollout_defaults
    return World(
        model=model,
        dataset=dataset,
        decode=decode,
        context_frames=context_frames,
        num_steps=min(defaults.num_steps, model.config.k_max),
        context_noise=defaults.context_noise,
        source=str(source),
    )
