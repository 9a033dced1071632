"""Rollout speed with and without the time-attention KV cache (docs/design.md §5).

With the cache every new frame costs num_steps + 1 single-frame forwards whose time attention reads at most
C - 1 cached frames, so the cost per frame stays flat as the horizon grows; without it every Euler step
recomputes the whole sequence and the cost per frame grows linearly with the horizon.

    python -m benchmarks.rollout_speed                      # debug-size model on CPU, < 2 minutes
    python -m benchmarks.rollout_speed --device cuda --config medium --context-length 64

Prints a table and writes benchmarks/results/rollout_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from benchmarks.common import medium_config
from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer, rollout

# medium = the train_step model (fixed in benchmarks/common.py); quickstart = the packaged preset
PRESETS = {
    "debug": DynamicsConfig.debug,
    "quickstart": DynamicsConfig.quickstart,
    "medium": medium_config,
    "minecraft": DynamicsConfig.minecraft,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(PRESETS), default="debug", help="DynamicsConfig preset")
    parser.add_argument(
        "--context-length", type=int, default=16, help="override C (window of time attention)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (0 = torch default); tiny models are dispatch-bound and one thread "
        "avoids OpenMP spin-wait contention on shared machines",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--context-frames", type=int, default=4)
    parser.add_argument("--num-steps", type=int, default=4, help="Euler steps per frame (K)")
    parser.add_argument("--horizons", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument(
        "--max-uncached-horizon",
        type=int,
        default=256,
        help="skip the O(H^2) uncached run above this horizon",
    )
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parent / "results" / "rollout_speed.json"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="horizons 2 and 4 only: checks the logic (tests)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.horizons, args.context_frames = [2, 4], 2
    return args


def timed_rollout(model, context, horizon, actions, num_steps, use_cache, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    rollout(
        model,
        context,
        horizon,
        num_steps=num_steps,
        use_cache=use_cache,
        generator=torch.Generator(device).manual_seed(0),
        **actions,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = PRESETS[args.config](context_length=args.context_length)
    torch.manual_seed(0)
    model = DynamicsTransformer(config).to(device).eval()
    dtype = getattr(torch, args.dtype)
    context = torch.randn(
        args.batch, args.context_frames, config.latent_tokens, config.latent_dim, device=device
    )

    def actions_for(horizon: int) -> dict:
        total = args.context_frames + horizon
        acts = {}
        if config.num_discrete_actions:
            acts["actions_discrete"] = torch.stack(
                [
                    torch.randint(0, n, (args.batch, total), device=device)
                    for n in config.num_discrete_actions
                ],
                -1,
            )
        if config.num_continuous_actions:
            acts["actions_continuous"] = torch.randn(
                args.batch, total, config.num_continuous_actions, device=device
            )
        return acts

    results = []
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        timed_rollout(model, context, 2, actions_for(2), args.num_steps, True, device)  # warm-up
        for horizon in args.horizons:
            for use_cache in (True, False):
                if not use_cache and horizon > args.max_uncached_horizon:
                    continue
                seconds = timed_rollout(
                    model, context, horizon, actions_for(horizon), args.num_steps, use_cache, device
                )
                results.append(
                    {
                        "horizon": horizon,
                        "use_cache": use_cache,
                        "seconds": seconds,
                        "frames_per_s": args.batch * horizon / seconds,
                        "ms_per_frame": 1000 * seconds / horizon,
                    }
                )
                print(
                    f"horizon {horizon:4d}  cache {'on ' if use_cache else 'off'}  {seconds:8.2f} s  "
                    f"{results[-1]['frames_per_s']:9.1f} frames/s  "
                    f"{results[-1]['ms_per_frame']:8.2f} ms/frame",
                    flush=True,
                )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "rollout_speed",
        "device": str(device),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "batch": args.batch,
        "context_frames": args.context_frames,
        "num_steps": args.num_steps,
        "preset": args.config,
        "config": dataclasses.asdict(config),
        "results": results,
    }
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
