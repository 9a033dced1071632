"""Shared machinery of the converters (``from-video``, ``from-hdf5``, ``from-npz``; docs/data.md).

A converter lists its inputs as :class:`Source` objects (one episode each); :func:`write_episodes` skips the
sources a previous run already committed (their key is stored as the episode attribute ``source``, so an
interrupted conversion resumes where it stopped), infers the action spec, encodes frames through the codec
and commits each episode crash-safely through :class:`LatentDatasetWriter`. Every error names the input file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..reading.codec import Codec, import_class
from ..reading.format import METADATA_FILE, DatasetError, read_metadata
from ..reading.patch_codec import PatchCodec
from .writer import LatentDatasetWriter

ALIGNMENTS = ("led-to", "taken-at")  # how action rows relate to frames (see align_actions)
ENCODE_CHUNK = 256  # frames per codec call: bounds the codec's working memory on long videos


@dataclass
class Source:
    """One input episode."""

    key: str  # resume id stored as the episode attribute "source" (e.g. the absolute path)
    label: str  # how errors name the input (file, file:group)
    load: Callable[[Any], tuple[str, np.ndarray]]  # bar -> ("frames" [T,H,W,C] in [0,1] | "latents", array)
    actions: Callable[[], dict[str, np.ndarray | None]]  # {"discrete": [R, n] int, "continuous": [R, m]}


def build_codec(
    class_path: str | None, init_args: dict[str, Any], image_size: int | None
) -> tuple[Codec | None, dict[str, Any] | None]:
    """The converter's codec and its metadata spec. Default: the built-in PatchCodec at `image_size` with
    patch side image_size / 8 (an 8 x 8 grid of tokens) unless `init_args` says otherwise."""
    if class_path is None:
        if image_size is None:
            return None, None  # latents only, no codec
        args = {"image_size": image_size, "patch": max(1, image_size // 8), **init_args}
        codec = PatchCodec(**args)
        return codec, {
            "class_path": "dreamer_dynamics.data.reading.patch_codec.PatchCodec",
            "init_args": args,
        }
    cls = import_class(class_path, "--codec")
    try:
        codec = cls(**init_args)
    except Exception as err:
        raise DatasetError("--codec", f"cannot build {class_path}(**{init_args}): {err}") from None
    return codec, {"class_path": class_path, "init_args": dict(init_args)}


def resize_frames(frames: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 / float frames [T, H, W, C] -> float32 [T, size, size, C] in [0, 1]: centre crop to a square,
    then area-average (downscale) or bicubic (upscale) resize with Pillow. size None keeps the frames."""
    scale = 255.0 if frames.dtype == np.uint8 else 1.0
    if size is None or frames.shape[1:3] == (size, size):
        return frames.astype(np.float32) / scale
    from PIL import Image

    t, h, w, c = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = frames[:, top : top + side, left : left + side]
    method = Image.Resampling.BOX if side >= size else Image.Resampling.BICUBIC
    out = np.empty((t, size, size, c), np.float32)
    for i in range(t):
        channels = [Image.fromarray(frames[i, :, :, k].astype(np.float32)) for k in range(c)]  # mode "F"
        out[i] = np.stack([np.asarray(ch.resize((size, size), method)) for ch in channels], -1)
    return np.clip(out / scale, 0.0, 1.0)


def align_actions(rows: np.ndarray, length: int, alignment: str, missing: Any, where: Any) -> np.ndarray:
    """Action rows [R, n] -> the format's [T, n] where actions[t] led from frame t-1 to frame t.

    ``led-to``: rows already follow the format; R = T, or R = T - 1 (no action before the first frame, which
    gets the missing label). ``taken-at``: row t is the action taken AT frame t (the usual robot-data layout);
    R = T or T - 1, shifted by one so the action lands on the frame it produced (the last row has no frame).
    """
    rows = rows[:, None] if rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.shape[0] not in (length, length - 1):
        raise DatasetError(
            where,
            f"actions have shape {list(rows.shape)}; expected [T, n] or [T - 1, n] "
            f"rows for the {length} frames",
        )
    if alignment == "led-to" and rows.shape[0] == length:
        return rows
    body = rows[: length - 1]
    return np.concatenate([np.full((1, rows.shape[1]), missing, rows.dtype), body])


def read_action_file(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy`` or ``.csv`` (comma separated, optional header line) action file -> [R, n] array; CSVs whose
    values are all integers come back as int64 (discrete actions), others as float32."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "action file is missing")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            lines = path.read_text().splitlines()
            skip = 1 if lines and not _is_numeric_row(lines[0]) else 0  # a header line
            array = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip, dtype=np.float64)
            if np.isfinite(array).all() and (array == np.round(array)).all():
                array = array.astype(np.int64)
        else:
            raise DatasetError(path, "action files must be .npy or .csv")
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(path, f"cannot read actions: {err}") from None
    if array.ndim not in (1, 2):
        raise DatasetError(
            path, f"actions must be [T, n] (one row of n components per frame), got shape {list(array.shape)}"
        )
    return array[:, None] if array.ndim == 1 else array


def _is_numeric_row(line: str) -> bool:
    try:
        [float(value) for value in line.split(",")]  # "nan" (a missing label) counts as a number
    except ValueError:
        return False
    return True


def _encode(codec: Codec, frames: np.ndarray, where: str) -> np.ndarray:
    chunks = []
    for i in range(0, len(frames), ENCODE_CHUNK):
        try:
            z = codec.encode(np.ascontiguousarray(frames[i : i + ENCODE_CHUNK]))
        except Exception as err:  # the user's codec: report which input and frames it refused
            raise DatasetError(
                where,
                f"the codec cannot encode frames {i}.. of shape {list(frames.shape[1:])}: "
                + " ".join(str(err).split()),  # one line, whatever the codec's message
            ) from None
        chunks.append(z.detach().cpu().numpy() if hasattr(z, "detach") else np.asarray(z))
    return np.concatenate(chunks).astype(np.float32)  # (T, N_b, D_b)


def write_episodes(
    out: str | os.PathLike,
    sources: Sequence[Source],
    *,
    codec: Codec | None,
    codec_spec: dict[str, Any] | None,
    codec_builder: Callable[[int], tuple[Codec, dict[str, Any]]] | None = None,
    alignment: str = "led-to",
    num_actions: Sequence[int] | None = None,
    attributes: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[int, int]:
    """Convert every source not yet in the dataset at `out`; returns (written, skipped).

    An error in any source leaves `out` as it was: an existing dataset byte-identical, a new one absent (so
    the corrected rerun starts clean, with an action spec inferred from the corrected inputs). An interrupted
    run (Ctrl-C) keeps the episodes it committed, and its rerun skips them.

    `codec_builder(frame_size)` makes the codec from the first episode's frames when `codec` is None."""
    if alignment not in ALIGNMENTS:
        raise DatasetError(None, f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    existing = read_metadata(out) if (Path(out) / METADATA_FILE).is_file() else None
    done = {e.attributes.get("source") for e in existing.episodes} if existing else set()
    todo = [s for s in sources if s.key not in done]
    actions = {s.key: s.actions() for s in todo}
    discrete, continuous = _action_spec(todo, actions, existing, num_actions)
    writer: LatentDatasetWriter | None = None
    bar = tqdm(desc="frames", unit="frame", disable=not progress)
    try:
        for source in todo:
            bar.set_postfix_str(source.label[-40:], refresh=False)
            kind, array = source.load(bar)
            if kind == "frames":
                if codec is None and codec_builder is not None:
                    codec, codec_spec = codec_builder(array.shape[1])
                if codec is None:
                    raise DatasetError(source.label, "frames need a codec: pass --image-size or --codec")
                array = _encode(codec, array, source.label)
            acts = actions[source.key]
            length = len(array)
            kwargs = {
                "actions_discrete": None
                if acts.get("discrete") is None
                else align_actions(acts["discrete"], length, alignment, -1, source.label),
                "actions_continuous": None
                if acts.get("continuous") is None
                else align_actions(acts["continuous"], length, alignment, np.nan, source.label),
            }
            if writer is None:
                writer = LatentDatasetWriter(
                    out,
                    latent_shape=array.shape[1:],
                    num_discrete_actions=discrete,
                    num_continuous_actions=continuous,
                    codec=codec_spec,
                    attributes=attributes,
                )
            try:
                writer.add_episode(array, **kwargs, attributes={"source": source.key})
            except DatasetError as err:  # name the input, not the episode being written
                raise DatasetError(source.label, err.problem) from None
    except Exception:
        if writer is not None:  # an error, not an interruption: leave the dataset as it was
            writer.abort()
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return len(todo), len(sources) - len(todo)


def _action_spec(todo, actions, existing, num_actions) -> tuple[tuple[int, ...], int]:
    """(class counts per discrete component, continuous components): from the existing dataset, else
    `num_actions` / the largest id + 1 over all inputs. Every input must have the same components."""
    for source in todo:
        for kind, a in actions[source.key].items():
            if a is not None and a.ndim != 2:
                raise DatasetError(
                    source.label,
                    f"{kind} actions must be [T, n] (one row of n components per frame), got shape "
                    f"{list(a.shape)}",
                )
    if existing is not None:
        return existing.num_discrete_actions, existing.num_continuous_actions
    widths: dict[str, int | None] = {}
    top: np.ndarray | None = None
    for source in todo:
        for kind in ("discrete", "continuous"):
            a = actions[source.key].get(kind)
            width = None if a is None else int(a.shape[1])
            if widths.setdefault(kind, width) != width:
                raise DatasetError(
                    source.label,
                    f"has {width or 0} {kind} action components, earlier inputs {widths[kind] or 0}",
                )
        a = actions[source.key].get("discrete")
        if a is not None:
            if not np.issubdtype(a.dtype, np.integer):
                raise DatasetError(source.label, f"discrete actions must be integers, got dtype {a.dtype}")
            top = a.max(0) if top is None else np.maximum(top, a.max(0))
    if widths.get("discrete") is None:
        discrete: tuple[int, ...] = ()
    elif num_actions:
        discrete = tuple(int(n) for n in num_actions)
        if len(discrete) != widths["discrete"]:
            raise DatasetError(
                "--num-actions",
                f"gives {len(discrete)} class counts for {widths['discrete']} discrete action components",
            )
    else:
        discrete = tuple(max(1, int(n) + 1) for n in top)
    return discrete, widths.get("continuous") or 0
