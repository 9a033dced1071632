"""Per-rank random state in checkpoints (docs/training.md, "Exact resume").

Every rank draws its own training noise (the module's generator is seeded per rank), so one rank's state
cannot stand for the others. At a checkpoint every rank collects its states and they are gathered to every
rank (the strategy writes rank 0's copy); on resume each rank restores entry ``global_rank``. Stored as
tensors, lists and ints only, so checkpoints load with ``torch.load(weights_only=True)``.

What is covered: the module's training-noise generator, the global torch CPU RNG, the CUDA RNGs, Python's
``random`` and NumPy's global RNG. DataLoader workers draw nothing random here (the windows are a pure
function of (seed, step), docs/design.md §6), so they have no state to save.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


def collect_global_rng_state() -> dict[str, Any]:
    """This process's global RNG states (torch CPU, CUDA, Python, NumPy), weights-only serialisable."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
        "numpy": [
            kind,
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
    }


def restore_global_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``collect_global_rng_state`` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if state.get("numpy") is not None:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def gather_from_ranks(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (a collective: every rank must call it);
    ``[obj]`` outside a process group. Tensors travel on the CPU and come back as CPU tensors."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, _to_cpu(obj))
    return [_to_cpu(item) for item in gathered]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


__all__ = ["collect_global_rng_state", "gather_from_ranks", "restore_global_rng_state"]
