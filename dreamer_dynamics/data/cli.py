"""``dreamer-dynamics-data``: inspect, validate, and create latent datasets (docs/data.md).

    dreamer-dynamics-data info ROOT [--json]
    dreamer-dynamics-data validate ROOT [--quick] [--repair [--force]]
    dreamer-dynamics-data stats ROOT
    dreamer-dynamics-data make-toy ROOT [--episodes 200 --length 64 --seed 0 --world deterministic
                                         --turn-probability P]
    dreamer-dynamics-data record-crafter ROOT [--episodes 10 --length 256 --policy random --seed 0]
    dreamer-dynamics-data from-video OUT VIDEO [VIDEO ...] [--actions FILE [FILE ...]] [--codec CLASS_PATH]
                                     [--codec-args JSON] [--image-size 64]
    dreamer-dynamics-data from-npz OUT FILE [FILE ...] (--frames KEY | --latents KEY) [--actions-discrete KEY]
    dreamer-dynamics-data from-hdf5 OUT FILE [FILE ...] (--frames KEY | --latents KEY) [--episodes GROUP]

Exit status 0 = fine, 1 = the dataset has a problem (printed as ``error: FILE: PROBLEM``) or an optional
extra is missing (``error: ... pip install ...``); ``DREAMER_DYNAMICS_TRACEBACK=1`` shows the full traceback.
Missing latent statistics are a warning (``warning: FILE: ...``, exit status 0); stale ones are an error.
"""

from __future__ import annotations

import argparse
import json
import sys

from dreamer_dynamics.errors import ConfigError, MissingExtraError, show_traceback

from .building.repair import find_leftovers, remove_leftovers
from .building.worlds import WORLDS, ToyDatasetConfig, generate_toy_dataset, toy_config
from .reading.dataset import LatentDataset
from .reading.format import METADATA_FILE, DatasetError
from .reading.lock import WriterLock
from .reading.stats import LatentStatistics, compute_latent_stats, stale_reason, write_latent_stats


def _info(args: argparse.Namespace) -> None:
    ds = LatentDataset(args.root, check_files=False)
    lengths = ds.episode_lengths
    summary = {
        "root": str(ds.root),
        "format": ds.meta.format,
        "episodes": len(ds),
        "frames": ds.num_frames,
        "latent_shape": list(ds.latent_shape),
        "latent_dtype": ds.meta.latent_dtype,
        "num_discrete_actions": list(ds.num_discrete_actions),
        "num_continuous_actions": ds.num_continuous_actions,
        "episode_length": {
            "min": int(lengths.min()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        }
        if len(ds)
        else None,
        "codec": ds.meta.codec,
        "attributes": ds.meta.attributes,
        "latent_stats": ds.latent_stats,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    stats = ds.latent_stats
    if stats is not None:  # D_b numbers each: show their range
        summary["latent_stats"] = _describe_stats(stats)
    for key, value in summary.items():
        print(f"{key:>22}: {value}")


def _describe_stats(stats: dict) -> str:
    """One line for D_b means and stds: their ranges."""
    mean, std = stats["mean"], stats["std"]
    return (
        f"count {stats['count']}, mean in [{min(mean):.4g}, {max(mean):.4g}], "
        f"std in [{min(std):.4g}, {max(std):.4g}]"
    )


def _validate(args: argparse.Namespace) -> None:
    ds = LatentDataset(args.root, check_files=False)
    if args.repair:  # under the writer lock: never delete the in-flight files of a running writer
        with WriterLock(ds.root, force=args.force, purpose="validate --repair"):
            for path in remove_leftovers(ds.root, ds.meta):
                print(f"removed {path}")
    leftovers = find_leftovers(ds.root, ds.meta)
    for path, what in leftovers[:-1]:  # one line each; the last one is raised (exit status 1)
        print(f"error: {DatasetError(path, what)}", file=sys.stderr)
    if leftovers:
        path, what = leftovers[-1]
        raise DatasetError(
            path,
            f"{what}; `dreamer-dynamics-data validate --repair {args.root}` removes the "
            f"{len(leftovers)} leftover file(s)",
        )
    recomputed = None if args.quick else LatentStatistics(ds.latent_shape[1])
    ds.validate(deep=not args.quick, stats=recomputed)  # one pass: values checked and statistics recomputed
    if args.quick and ds.latent_stats is None:  # finite recorded statistics vouch for the latents; else scan
        found = ds.find_non_finite()
        if found is not None:
            raise DatasetError(found[0], f"latents contain NaN/inf at frame {found[1]}")
    if len(ds) == 0:
        raise DatasetError(ds.root, "dataset has no episodes")
    metadata = ds.root / METADATA_FILE
    if ds.latent_stats is None:
        print(
            f"warning: {metadata}: no latent_stats (training computes them on first use; "
            f"`dreamer-dynamics-data stats {ds.root}` records them now)",
            file=sys.stderr,
        )
    reason = stale_reason(ds, ds.latent_stats, recomputed)
    if reason is not None:
        raise DatasetError(metadata, f"{reason}; rerun `dreamer-dynamics-data stats {ds.root}`")
    print(
        f"ok: {len(ds)} episodes, {ds.num_frames} frames, latents {list(ds.latent_shape)} "
        f"({'headers and sizes' if args.quick else 'all values'} checked)"
    )


def _stats(args: argparse.Namespace) -> None:
    ds = LatentDataset(args.root)  # headers and sizes checked; values are read through the memory maps
    if len(ds) == 0:
        raise DatasetError(ds.root, "dataset has no episodes")
    stats = compute_latent_stats(ds, progress=True)
    ds.check_finite_stats(stats.record())  # NaN/inf latents: their file and frame, nothing recorded
    path = write_latent_stats(ds.root, stats)
    print(f"wrote latent_stats to {path}: {_describe_stats(stats.record())}")


def _make_toy(args: argparse.Namespace) -> None:
    config = ToyDatasetConfig(
        episodes=args.episodes, length=args.length, seed=args.seed, turn_probability=args.turn_probability
    )
    generate_toy_dataset(args.root, toy_config(args.world, config))
    print(f"wrote {config.episodes} toy episodes to {args.root}")


def _record_crafter(args: argparse.Namespace) -> None:
    from .building.crafter_recorder import CrafterRecordingConfig, record_crafter

    config = CrafterRecordingConfig(
        episodes=args.episodes, length=args.length, policy=args.policy, seed=args.seed
    )
    record_crafter(args.root, config)
    print(f"recorded {config.episodes} Crafter episodes into {args.root}")


def _codec_options(args: argparse.Namespace) -> dict:
    """codec / codec_spec / codec_builder keyword arguments of the converters."""
    from .building.convert import build_codec

    try:
        init_args = json.loads(args.codec_args)
    except json.JSONDecodeError as err:
        raise DatasetError("--codec-args", f"not valid JSON: {err}") from None
    if not isinstance(init_args, dict):
        raise DatasetError("--codec-args", f"must be a JSON object, got {args.codec_args}")
    codec, spec = build_codec(args.codec, init_args, args.image_size)
    if codec is not None or args.codec is not None:
        return {"codec": codec, "codec_spec": spec}

    def builder(size: int):  # the default patch codec, sized by the first episode's frames
        return build_codec(None, init_args, size)

    return {"codec": None, "codec_spec": None, "codec_builder": builder}


def _report(out: str, written: int, skipped: int) -> None:
    print(f"wrote {written} episodes to {out}" + (f" (skipped {skipped} already there)" if skipped else ""))


def _from_video(args: argparse.Namespace) -> None:
    from .building.convert import write_episodes
    from .building.video import video_sources

    sources = video_sources(args.videos, args.actions, args.image_size, args.continuous_actions)
    written = write_episodes(
        args.out,
        sources,
        alignment=args.alignment,
        num_actions=args.num_actions,
        attributes={"source": "video"},
        **_codec_options(args),
    )
    _report(args.out, *written)


def _from_arrays(args: argparse.Namespace) -> None:
    from .building.arrays import ArrayKeys, hdf5_sources, npz_sources
    from .building.convert import write_episodes

    keys = ArrayKeys(args.frames, args.latents, args.actions_discrete, args.actions_continuous)
    if args.command == "from-npz":
        sources = npz_sources(args.files, keys, args.image_size, args.channels_first)
    else:
        sources = hdf5_sources(args.files, keys, args.episodes, args.image_size, args.channels_first)
    options = (
        _codec_options(args) if keys.frames is not None or args.codec else {"codec": None, "codec_spec": None}
    )
    written = write_episodes(
        args.out,
        sources,
        alignment=args.alignment,
        num_actions=args.num_actions,
        attributes={"source": args.command[5:]},
        **options,
    )
    _report(args.out, *written)


def _add_conversion_options(parser: argparse.ArgumentParser, image_size: int | None) -> None:
    parser.add_argument(
        "--codec",
        metavar="CLASS_PATH",
        help="codec class (default: the built-in patch codec, patch side image_size / 8)",
    )
    parser.add_argument("--codec-args", metavar="JSON", default="{}", help="codec init arguments as JSON")
    parser.add_argument(
        "--image-size",
        type=int,
        default=image_size,
        help="crop to a square and resize "
        f"frames to N x N pixels (default: {image_size or 'keep square frames as they are'})",
    )
    parser.add_argument(
        "--alignment",
        choices=("led-to", "taken-at"),
        default="led-to",
        help="led-to: actions[t] led from frame t-1 to t (the format); taken-at: actions[t] "
        "was taken at frame t (shifted by one on import)",
    )
    parser.add_argument(
        "--num-actions",
        type=int,
        nargs="+",
        metavar="N",
        help="class count per discrete action component (default: largest id + 1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamer-dynamics-data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print the dataset's spec and size")
    info.add_argument("root")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=_info)
    validate = commands.add_parser("validate", help="check every file (and every value unless --quick)")
    validate.add_argument("root")
    validate.add_argument("--quick", action="store_true", help="check headers and sizes only, not the values")
    validate.add_argument(
        "--repair",
        action="store_true",
        help="first remove leftovers of killed writers (temporary and uncommitted files)",
    )
    validate.add_argument(
        "--force",
        action="store_true",
        help="with --repair: take over a lock held from another host (its writer is gone)",
    )
    validate.set_defaults(run=_validate)
    stats = commands.add_parser(
        "stats", help="compute the per-channel latent mean/std and record them in metadata.json"
    )
    stats.add_argument("root")
    stats.set_defaults(run=_stats)
    toy = commands.add_parser("make-toy", help="write (or append) built-in toy-environment episodes")
    toy.add_argument("root")
    toy.add_argument("--episodes", type=int, default=200)
    toy.add_argument("--length", type=int, default=64)
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--world", choices=sorted(WORLDS), default="deterministic", help="docs/data.md")
    toy.add_argument(
        "--turn-probability", type=float, default=None, help="stochastic world's strength (default 0.5)"
    )
    toy.set_defaults(run=_make_toy)
    crafter = commands.add_parser("record-crafter", help="record Crafter episodes (needs the crafter extra)")
    crafter.add_argument("root")
    crafter.add_argument("--episodes", type=int, default=10)
    crafter.add_argument("--length", type=int, default=256)
    crafter.add_argument("--policy", choices=("random", "explore"), default="random")
    crafter.add_argument("--seed", type=int, default=0)
    crafter.set_defaults(run=_record_crafter)
    _add_import_commands(commands)
    return parser


def _add_import_commands(commands) -> None:
    """from-video, from-npz and from-hdf5: other data -> a dataset (data/building/convert.py)."""
    video = commands.add_parser("from-video", help="videos or frame folders -> dataset (video extra)")
    video.add_argument("out")
    video.add_argument(
        "videos",
        nargs="+",
        metavar="VIDEO",
        help="mp4/webm/gif/... files or folders of PNG/JPEG frames; one episode each",
    )
    video.add_argument("--actions", nargs="+", metavar="FILE", help="one .npy/.csv action file per video")
    video.add_argument(
        "--continuous-actions", action="store_true", help="read integer action files as continuous values"
    )
    _add_conversion_options(video, 64)
    video.set_defaults(run=_from_video)
    for name, what in (
        ("from-npz", "one episode per .npz file"),
        ("from-hdf5", "HDF5 files (needs the video extra)"),
    ):
        arrays = commands.add_parser(name, help=f"arrays of frames or latents -> dataset ({what})")
        arrays.add_argument("out")
        arrays.add_argument("files", nargs="+", metavar="FILE")
        arrays.add_argument("--frames", metavar="KEY", help="key of frames [T, H, W, C] (uint8 or [0, 1])")
        arrays.add_argument("--latents", metavar="KEY", help="key of ready latents [T, N_b, D_b]")
        arrays.add_argument("--actions-discrete", metavar="KEY", help="key of integer actions [T, n]")
        arrays.add_argument("--actions-continuous", metavar="KEY", help="key of float actions [T, m]")
        arrays.add_argument("--channels-first", action="store_true", help="frames are [T, C, H, W]")
        if name == "from-hdf5":
            arrays.add_argument(
                "--episodes",
                metavar="GROUP",
                help="every child group of GROUP is one "
                "episode (e.g. data: data/demo_0, data/demo_1, ...); default: one per file",
            )
        _add_conversion_options(arrays, None)
        arrays.set_defaults(run=_from_arrays)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DatasetError, ConfigError, MissingExtraError) as err:
        if show_traceback():
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
