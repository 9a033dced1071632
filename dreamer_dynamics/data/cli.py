"""``dreamer-dynamics-data``: inspect, validate, and create latent datasets (docs/data.md).

    dreamer-dynamics-data info ROOT [--json]
    dreamer-dynamics-data validate ROOT [--quick] [--repair [--force]]
    dreamer-dynamics-data make-toy ROOT [--episodes 200 --length 64 --seed 0]
    dreamer-dynamics-data record-crafter ROOT [--episodes 10 --length 256 --policy random --seed 0]

Exit status 0 = fine, 1 = the dataset has a problem (printed as ``error: FILE: PROBLEM``).
"""

from __future__ import annotations

import argparse
import json
import sys

from .dataset import LatentDataset
from .default import ToyDatasetConfig, generate_toy_dataset
from .format import DatasetError
from .lock import WriterLock
from .repair import find_leftovers, remove_leftovers


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
        "decoder": ds.meta.decoder,
        "attributes": ds.meta.attributes,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    for key, value in summary.items():
        print(f"{key:>22}: {value}")


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
        raise DatasetError(path, f"{what}; `dreamer-dynamics-data validate --repair {args.root}` removes the "
                                 f"{len(leftovers)} leftover file(s)")
    ds.validate(deep=not args.quick)
    if len(ds) == 0:
        raise DatasetError(ds.root, "dataset has no episodes")
    print(
        f"ok: {len(ds)} episodes, {ds.num_frames} frames, latents {list(ds.latent_shape)} "
        f"({'headers and sizes' if args.quick else 'all values'} checked)"
    )


def _make_toy(args: argparse.Namespace) -> None:
    config = ToyDatasetConfig(episodes=args.episodes, length=args.length, seed=args.seed)
    generate_toy_dataset(args.root, config)
    print(f"wrote {config.episodes} toy episodes to {args.root}")


def _record_crafter(args: argparse.Namespace) -> None:
    from .crafter_recorder import CrafterRecordingConfig, record_crafter

    config = CrafterRecordingConfig(
        episodes=args.episodes, length=args.length, policy=args.policy, seed=args.seed
    )
    record_crafter(args.root, config)
    print(f"recorded {config.episodes} Crafter episodes into {args.root}")


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
    validate.add_argument("--repair", action="store_true",
                          help="first remove leftovers of killed writers (temporary and uncommitted files)")
    validate.add_argument("--force", action="store_true",
                          help="with --repair: take over a lock held from another host (its writer is gone)")
    validate.set_defaults(run=_validate)
    toy = commands.add_parser("make-toy", help="write (or append) built-in toy-environment episodes")
    toy.add_argument("root")
    toy.add_argument("--episodes", type=int, default=200)
    toy.add_argument("--length", type=int, default=64)
    toy.add_argument("--seed", type=int, default=0)
    toy.set_defaults(run=_make_toy)
    crafter = commands.add_parser("record-crafter", help="record Crafter episodes (needs the crafter extra)")
    crafter.add_argument("root")
    crafter.add_argument("--episodes", type=int, default=10)
    crafter.add_argument("--length", type=int, default=256)
    crafter.add_argument("--policy", choices=("random", "explore"), default="random")
    crafter.add_argument("--seed", type=int, default=0)
    crafter.set_defaults(run=_record_crafter)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
