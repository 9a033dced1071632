"""Generated test videos: a square moving across a plain background, as GIF (Pillow) and MP4 (PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = np.array([[20, 40, 200], [230, 200, 30]], np.uint8)  # background, square


def moving_square(frames: int, size: int = 32, square: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 [T, size, size, 3]: a square moving one pixel-step per frame (a clean, learnable motion)."""
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, size - square, 2)
    vy, vx = (2, 1) if seed % 2 == 0 else (-1, 2)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        out[t] = COLOURS[0]
        out[t, y : y + square, x : x + square] = COLOURS[1]
        if not 0 <= y + vy <= size - square:
            vy = -vy
        if not 0 <= x + vx <= size - square:
            vx = -vx
        y, x = y + vy, x + vx
    return out


def write_gif(path: Path, frames: np.ndarray) -> Path:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


def write_mp4(path: Path, frames: np.ndarray, codec: str = "mpeg4") -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"} if codec == "mpeg4" else {}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class BlockMeanCodec:
    """A stand-in for a user's own tokenizer, importable by class path: each block x block patch becomes one
    token holding its mean colour (lossy); decode repeats it. Returns torch from decode, numpy from encode."""

    def __init__(self, block: int = 4, image_size: int = 16):
        self.block, self.image_size = block, image_size

    def encode(self, frames):
        t, h, w, c = frames.shape
        b = self.block
        blocks = frames.reshape(t, h // b, b, w // b, b, c).mean((2, 4))  # (T, h/b, w/b, C)
        return blocks.reshape(t, -1, c)  # (T, N_b, C)

    def decode(self, latents):
        import torch

        g = self.image_size // self.block
        z = torch.as_tensor(latents).reshape(len(latents), g, g, -1)
        return z.repeat_interleave(self.block, 1).repeat_interleave(self.block, 2)  # (T, H, W, C)
