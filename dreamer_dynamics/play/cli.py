"""``dreamer-dynamics play CKPT_OR_EXPORT_DIR``: steer the model from a browser page (docs/play.md).

    dreamer-dynamics play runs/quickstart/tensorboard/version_0/checkpoints/last.ckpt
    dreamer-dynamics play exported/ --port 8000        # over SSH: ssh -L 8000:127.0.0.1:8000 NODE

Serves on loopback (default 127.0.0.1 and a free port, printed) and opens nothing by itself.
"""

from __future__ import annotations

import argparse
import errno
import sys

import torch

from .server import PlayServer
from .world import PlayError, load_world


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dreamer-dynamics play", description=__doc__.split("\n")[0])
    parser.add_argument("source", metavar="CKPT_OR_EXPORT_DIR", help="Lightning checkpoint or export folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    parser.add_argument("--data-root", help="dataset to draw contexts from (default: the checkpoint's)")
    parser.add_argument("--context-frames", type=int, default=4, help="frames of each drawn context")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--session-timeout", type=float, default=600.0, help="seconds before an idle page's state is dropped"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the pages' contexts and noise (default: random)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        world = load_world(args.source, data_root=args.data_root, context_frames=args.context_frames)
        server = PlayServer((args.host, args.port), world, args.session_timeout, args.seed)
    except PlayError as err:
        print(f"dreamer-dynamics play: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        why = (
            "is in use (pass another --port, or 0 for a free one)"
            if err.errno == errno.EADDRINUSE
            else f"cannot be served ({err.strerror})"
        )
        print(f"dreamer-dynamics play: error: port {args.port} on {args.host} {why}", file=sys.stderr)
        return 1
    print(f"dreamer-dynamics play: serving {world.source} at {server.url} (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
