"""The codec protocol: frames <-> latents, and how a dataset names its codec (docs/data.md, "Codecs").

A codec is any object with

    encode(frames)  -> latents   # frames float32 [T, H, W, C] in [0, 1] (numpy) -> [T, N_b, D_b]
    decode(latents) -> frames    # latents float32 [T, N_b, D_b] (numpy)          -> [T, H, W, C] in ~[0, 1]

returning numpy arrays or torch tensors. The built-in :class:`PatchCodec` is one; a frozen learned tokenizer
wrapped in a small class is another. A dataset names its codec in ``metadata.json`` as
``"codec": {"class_path": "package.module.Class", "init_args": {...}}`` (the jsonargparse / LightningCLI
convention), so rollout pictures, the notebook and ``predict`` can decode any dataset whose codec class is
importable.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .format import DatasetError, DatasetMetadata


@runtime_checkable
class Codec(Protocol):
    """frames [T, H, W, C] in [0, 1] <-> latents [T, N_b, D_b] (both float32 numpy on the way in)."""

    def encode(self, frames: np.ndarray) -> Any: ...

    def decode(self, latents: np.ndarray) -> Any: ...


def class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def codec_spec(codec: Codec, init_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuilds `codec`; init_args default to a dataclass's fields."""
    if init_args is None:
        init_args = dataclasses.asdict(codec) if dataclasses.is_dataclass(codec) else {}
    return {"class_path": class_path(codec), "init_args": dict(init_args)}


def import_class(path: str, where: Any = None, what: str = "codec class") -> Any:
    """``"package.module.Name"`` -> the object; a DatasetError naming `where` and `what` if it cannot be
    imported."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise DatasetError(where, f"{what} path {path!r} must look like 'package.module.Class'")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise DatasetError(where, f"cannot import {what} {path!r}: {err}") from None


def load_codec(spec: dict[str, Any], where: Any = None) -> Codec:
    """A codec from its ``{"class_path", "init_args"}`` spec."""
    if not isinstance(spec, dict):
        raise DatasetError(where, f"codec spec must be a JSON object, got {spec!r}")
    if "class_path" not in spec:
        raise DatasetError(where, f"codec spec needs a 'class_path', got keys {sorted(spec)}")
    cls = import_class(str(spec["class_path"]), where)
    try:
        codec = cls(**dict(spec.get("init_args") or {}))
    except Exception as err:  # a user class: any constructor error is reported with the spec
        raise DatasetError(
            where, f"cannot build codec {spec['class_path']} from {spec.get('init_args')}: {err}"
        ) from None
    for method in ("encode", "decode"):
        if not callable(getattr(codec, method, None)):
            raise DatasetError(where, f"codec {spec['class_path']} has no {method}() method")
    return codec


class Decoder:
    """Picture decoder for logging: latents [..., N_b, D_b] -> images [..., H, W, C] clipped to [0, 1].

    Accepts numpy or torch (any number of leading dims) and returns the same kind; the codec itself only
    ever sees float32 numpy [M, N_b, D_b].
    """

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def __call__(self, latents: Any) -> Any:
        is_torch = isinstance(latents, torch.Tensor)
        z = latents.detach().float().cpu().numpy() if is_torch else np.asarray(latents, dtype=np.float32)
        lead = z.shape[:-2]
        frames = self.codec.decode(np.ascontiguousarray(z.reshape((-1,) + z.shape[-2:])))
        frames = frames.detach().float().cpu().numpy() if isinstance(frames, torch.Tensor) else frames
        frames = np.clip(np.asarray(frames, dtype=np.float32), 0.0, 1.0)
        frames = frames.reshape(lead + frames.shape[1:])  # (..., H, W, C)
        return torch.from_numpy(frames).to(latents.device) if is_torch else frames


def decoder_for(dataset: Any) -> Callable[[Any], Any] | None:
    """The picture decoder of a dataset (a ``LatentDataset`` or its metadata): None if it names no codec, or
    (with a warning) if its codec cannot be imported -- training does not need pictures."""
    meta = dataset if isinstance(dataset, DatasetMetadata) else dataset.meta
    spec = meta.codec
    if spec is None:
        return None
    try:
        return Decoder(load_codec(spec, getattr(dataset, "root", None)))
    except DatasetError as err:
        warnings.warn(f"no rollout pictures: {err}", stacklevel=2)
        return None


__all__ = [
    "Codec",
    "Decoder",
    "codec_spec",
    "decoder_for",
    "import_class",
    "load_codec",
]
