"""Context files for ``dreamer-dynamics predict --data.predict_context FILE``: roll out from your own frames.

A ``.npy`` holds context latents [B, T_ctx, N_b, D_b] (or one sequence [T_ctx, N_b, D_b]). A ``.npz`` holds
``context`` (or ``latents``) like that, plus optional ``actions_discrete`` [B, T, n] (or [B, T] for one
component) and ``actions_continuous`` [B, T, c] covering T_ctx + horizon frames (docs/data.md: ``actions[t]``
led from frame t-1 to frame t).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .format import DatasetError


def load_context_file(
    path: str | os.PathLike, latent_shape: tuple[int, int], num_discrete: int, num_continuous: int
) -> list[dict[str, torch.Tensor]]:
    """One dict per sequence: "context" float32 [T_ctx, N_b, D_b] and the actions present ."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "context file does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(path, f"cannot read context file ({err})") from None
    if isinstance(loaded, np.ndarray):
        arrays = {"context": loaded}
    else:
        arrays = {k: loaded[k] for k in loaded.files}
        if "context" not in arrays and "latents" in arrays:
            arrays["context"] = arrays.pop("latents")
        if "context" not in arrays:
            raise DatasetError(path, f"npz needs a 'context' array, found {sorted(arrays)}")
    context = arrays["context"]
    if context.ndim == 3:
        arrays = {k: v[None] for k, v in arrays.items()}
        context = arrays["context"]
    if context.ndim != 4 or tuple(context.shape[2:]) != tuple(latent_shape):
        raise DatasetError(
            path,
            f"context must be [B, T_ctx, {latent_shape[0]}, {latent_shape[1]}] like the "
            f"checkpoint's data, got {list(context.shape)}",
        )
    if not np.isfinite(context).all():
        raise DatasetError(path, "context latents contain NaN/inf")
    discrete = arrays.get("actions_discrete")
    if discrete is not None and discrete.ndim == 2:
        discrete = discrete[..., None]  # [B, T] = one categorical component
    for name, value, width in (
        ("actions_discrete", discrete, num_discrete),
        ("actions_continuous", arrays.get("actions_continuous"), num_continuous),
    ):
        if value is None:
            continue
        if value.ndim != 3 or value.shape[0] != context.shape[0] or value.shape[2] != width:
            expected = f"[B={context.shape[0]}, T, {width}]"
            raise DatasetError(path, f"{name} must be {expected}, got {list(value.shape)}")
        if value.shape[1] < context.shape[1]:
            raise DatasetError(
                path,
                f"{name} cover {value.shape[1]} frames, fewer than the {context.shape[1]} context frames",
            )
        arrays[name] = value
    out = []
    for b in range(context.shape[0]):
        item = {"context": torch.as_tensor(np.asarray(context[b], dtype=np.float32))}
        if discrete is not None:
            item["actions_discrete"] = torch.as_tensor(np.asarray(discrete[b], dtype=np.int64))
        if arrays.get("actions_continuous") is not None:
            item["actions_continuous"] = torch.as_tensor(
                np.asarray(arrays["actions_continuous"][b], dtype=np.float32)
            )
        out.append(item)
    return out


__all__ = ["load_context_file"]
