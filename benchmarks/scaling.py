"""Step time against sequence length T at a fixed number of frames per batch (B * T constant).

With the time layers' causal window of C frames (paper Sec. 3.4) the useful attention work per frame is
bounded by C, so at fixed frames per batch a step should cost the same for every T beyond C; full causal
attention (C >= T) grows with T. Both variants share the weights; only `context_length` differs.

    python -m benchmarks.scaling              # width 128, depth 4, time layer every 2nd block, C = 16; ~2 min
    python -m benchmarks.scaling --smoke      # tiny config (tests)

Timed: student forward + flow loss + backward (no optimizer: it does not depend on T), best of --repeat,
variants round-robin. Reported next to the analytic attention FLOPs (dense as computed by the math/SDPA
kernels, and windowed: the pairs inside C).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import (
    config_dict,
    forward_flops,
    machine_info,
    parse_benchmark_args,
    pin_threads,
    run_benchmark,
    step_config,
    time_interleaved,
)
from dreamer_dynamics.model import DynamicsTransformer

SCALING_MODEL = dict(dim=128, depth=4, heads=2, kv_heads=1, time_every=2)  # the medium run's network


def run(args: argparse.Namespace) -> dict:
    threads = pin_threads(args.threads)
    lengths = [4, 8, 16] if args.smoke else args.lengths
    frames_per_batch = max(lengths)
    window = 4 if args.smoke else args.context_length
    windowed_cfg = step_config(args.smoke, SCALING_MODEL, context_length=window)
    full_cfg = windowed_cfg.with_changes(context_length=frames_per_batch)
    torch.manual_seed(0)
    windowed = DynamicsTransformer(windowed_cfg).train()
    full = DynamicsTransformer(full_cfg).train()
    full.load_state_dict(windowed.state_dict())  # same weights: only the window differs
    gen = torch.Generator().manual_seed(0)
    rows = []
    for t in lengths:
        if frames_per_batch % t:
            raise ValueError(f"scaling: T={t} does not divide the frames per batch {frames_per_batch}")
        b = frames_per_batch // t
        z = torch.randn(b, t, windowed_cfg.latent_tokens, windowed_cfg.latent_dim, generator=gen)
        tau = torch.randint(0, windowed_cfg.k_max, (b, t), generator=gen) / windowed_cfg.k_max
        d = torch.full((b, t), windowed_cfg.d_min)
        acts = torch.randint(0, 5, (b, t, 1), generator=gen)

        def fwd_bwd(model):
            def call():
                model(z, tau, d, actions_discrete=acts).square().mean().backward()
                model.zero_grad(set_to_none=True)

            return call

        timings = time_interleaved(
            {"windowed": fwd_bwd(windowed), "full": fwd_bwd(full)}, repeat=args.repeat, warmup=1
        )
        flops_w, flops_f = forward_flops(windowed_cfg, b, t), forward_flops(full_cfg, b, t)
        rows.append(
            {
                "T": t,
                "batch": b,
                "seconds_windowed": timings["windowed"].best,
                "seconds_full": timings["full"].best,
                "attention_time_flops_dense": flops_w["attention_time_dense"],
                "attention_time_flops_windowed": flops_w["attention_time_windowed"],
                "attention_time_flops_full_causal": flops_f["attention_time_windowed"],
                "matmul_flops": flops_w["matmul"],
            }
        )
    base = rows[0]["seconds_windowed"]
    for row in rows:
        row["windowed_relative"] = row["seconds_windowed"] / base
        row["full_relative"] = row["seconds_full"] / rows[0]["seconds_full"]
    return {
        "benchmark": "scaling",
        "machine": machine_info(torch.device("cpu"), threads),
        "smoke": args.smoke,
        "frames_per_batch": frames_per_batch,
        "context_length": window,
        "config": config_dict(windowed_cfg),
        "rows": rows,
    }


def print_report(report: dict) -> None:
    print(
        f"scaling: {report['frames_per_batch']} frames per batch, window C = {report['context_length']}, "
        f"{report['machine']['threads']} threads (fwd+bwd, best)"
    )
    print(
        f"{'T':>5} {'B':>4} {'window s':>9} {'rel':>6} {'full s':>8} {'rel':>6} "
        f"{'time-attn GF dense':>19} {'windowed':>9} {'matmul GF':>10}"
    )
    for r in report["rows"]:
        print(
            f"{r['T']:5d} {r['batch']:4d} {r['seconds_windowed']:9.3f} {r['windowed_relative']:6.2f} "
            f"{r['seconds_full']:8.3f} {r['full_relative']:6.2f} "
            f"{r['attention_time_flops_dense'] / 1e9:19.3f} "
            f"{r['attention_time_flops_windowed'] / 1e9:9.3f} {r['matmul_flops'] / 1e9:10.2f}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: stable timings on a shared machine)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--context-length", type=int, default=16, help="window C of the windowed variant")
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[16, 32, 64, 128, 256],
        help="sequence lengths T; the largest sets the frames per batch",
    )
    return parse_benchmark_args(parser, argv)


def main(argv=None) -> dict:
    return run_benchmark("scaling", parse_args, run, print_report, argv)


if __name__ == "__main__":
    main()
