"""``from-video``: video files (mp4, webm, gif, anything FFmpeg reads) or folders of PNG/JPEG frames -> a
latent dataset, one episode per video, through a codec (docs/data.md, "Your own video").

Videos are read with PyAV (FFmpeg bindings), an optional extra: ``pip install 'dreamer_dynamics[video]'``.
Frames are centre-cropped to a square and resized to ``image_size``, then encoded. Actions come from one
``.npy`` / ``.csv`` file per video (integers: discrete, floats: continuous), aligned by ``align_actions``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dreamer_dynamics.errors import require_extra

from ..reading.format import DatasetError
from .convert import Source, read_action_file, resize_frames

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


def _natural_key(path: Path) -> list:
    """frame_2.png before frame_10.png."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def read_frame_folder(folder: Path, image_size: int | None, bar: Any = None) -> np.ndarray:
    """Every PNG/JPEG in `folder` in natural order -> float32 [T, S, S, 3] in [0, 1]."""
    from PIL import Image

    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
    if not files:
        raise DatasetError(folder, f"no frames: the folder holds no {'/'.join(FRAME_SUFFIXES)} files")
    frames = []
    for index, file in enumerate(files):
        try:
            with Image.open(file) as image:
                pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
        except Exception as err:
            raise DatasetError(file, f"cannot read frame {index}: {err}") from None
        frames.append(resize_frames(pixels[None], image_size)[0])
        if bar is not None:
            bar.update(1)
    try:
        return np.stack(frames)
    except ValueError:
        raise DatasetError(folder, "frames differ in size; pass --image-size to resize them") from None


def read_video(path: Path, image_size: int | None, bar: Any = None) -> np.ndarray:
    """All frames of the first video stream -> float32 [T, S, S, 3] in [0, 1]."""
    av = require_extra("av", "video", "reading video")
    frames, index = [], 0
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise DatasetError(path, f"cannot open video: {err}") from None
    with container:
        if not container.streams.video:
            raise DatasetError(path, "no video stream")
        try:
            for frame in container.decode(video=0):
                frames.append(resize_frames(frame.to_ndarray(format="rgb24")[None], image_size)[0])
                index += 1
                if bar is not None:
                    bar.update(1)
        except (av.FFmpegError, OSError, ValueError) as err:
            raise DatasetError(path, f"cannot decode frame {index}: {err}") from None
    if not frames:
        raise DatasetError(path, "the video has no frames")
    return np.stack(frames)


def video_sources(
    videos: Sequence[str | os.PathLike],
    actions: Sequence[str | os.PathLike] | None,
    image_size: int | None,
    continuous: bool = False,
) -> list[Source]:
    """One Source per video file or frame folder; `actions` (one file per video) in the same order."""
    if actions and len(actions) != len(videos):
        raise DatasetError(
            "--actions",
            f"{len(actions)} action files for {len(videos)} videos; give one per video, in the same order",
        )
    paths = [Path(video).resolve() for video in videos]
    for video, path in zip(videos, paths):
        if not path.exists():
            raise DatasetError(video, "no such video file or frame folder")
    if any(path.is_file() for path in paths):
        require_extra("av", "video", "reading video")  # before anything is written
    sources = []
    for i, (video, path) in enumerate(zip(videos, paths)):
        action_file = actions[i] if actions else None

        def load(bar: Any, _path: Path = path) -> tuple[str, np.ndarray]:
            if _path.is_dir():
                return "frames", read_frame_folder(_path, image_size, bar)
            return "frames", read_video(_path, image_size, bar)

        def load_actions(_file=action_file) -> dict[str, np.ndarray | None]:
            if _file is None:
                return {}
            rows = read_action_file(_file)
            if continuous or not np.issubdtype(rows.dtype, np.integer):
                return {"continuous": rows.astype(np.float32)}
            return {"discrete": rows}

        sources.append(Source(str(path), str(video), load, load_actions))
    return sources
