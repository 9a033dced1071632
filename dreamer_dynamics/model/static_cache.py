"""A fixed-shape KV cache: a CUDA graph replays the decode step at every position (docs/design.md §5).

``TimeKVCache`` grows to C - 1 frames and then drops the oldest: new tensors every frame, which a captured
graph cannot follow. Once it is full, ``StaticKVCache`` holds the same C - 1 frames in fixed buffers as a
ring, the frame at position p in slot p mod (C - 1), written in place. Attention does not depend on the order
of its keys (each key carries its position in its rotation), and every cached frame lies inside the window of
the next one, so a decode step reads the ring as it stands: fixed shapes, no mask, the position a tensor.

    ring = StaticKVCache(cache.layers, next_position)          # a full TimeKVCache
    x1_hat, _ = model.forward_frames(z, tau, d, past_kv=ring.layers, start=ring.position, ...)
    _, kv = model.forward_frames(committed, ..., past_kv=ring.layers, start=ring.position, ...)
    ring.write(kv)                                             # in place; the position advances
"""

from __future__ import annotations

import torch

from .attention import KV


class StaticKVCache:
    """The keys/values of the last C - 1 frames in fixed buffers (B, S*Hkv, C-1, E), a pair per time layer."""

    def __init__(self, layers: list[KV], next_position: int) -> None:
        """``layers``: a full ``TimeKVCache``'s (oldest frame first); ``next_position``: the next frame's."""
        frames = layers[0][0].shape[2] if layers else 0
        if frames < 1 or next_position < frames:
            raise ValueError(
                f"StaticKVCache: needs at least one cached frame before position {next_position}, "
                f"got {frames}"
            )
        self.frames = frames
        shift = (next_position - frames) % frames  # the slot of the oldest cached frame
        self.layers = [
            (k.roll(shift, dims=2).contiguous(), v.roll(shift, dims=2).contiguous()) for k, v in layers
        ]
        self.position = torch.tensor(next_position, device=layers[0][0].device)  # 0-d long, advanced in place

    def write(self, new_kv: list[KV]) -> None:
        """Store the keys/values of the frame at ``position`` (each (B, S*Hkv, 1, E)) over the oldest frame's,
        in place, and advance ``position``."""
        slot = (self.position % self.frames).view(1)
        for (keys, values), (new_keys, new_values) in zip(self.layers, new_kv):
            keys.index_copy_(2, slot, new_keys)
            values.index_copy_(2, slot, new_values)
        self.position += 1
