"""Training-step throughput: latent tokens/s, achieved FLOP/s against the measured fp32 matmul peak, peak
memory, the shortcut-forcing step against a flow-only step, and the teacher passes against a student
forward+backward.

Config: width 256, depth 8, 16 latent tokens x 32 dims, one discrete action (5 classes), C = 64;
short batches 4 x 32 frames (T1 < C) and long batches 1 x 128 frames (T2 > C, same frames per step).

    python -m benchmarks.train_step                 # 1 thread, ~3 minutes on the 2-core CPU machine
    python -m benchmarks.train_step --smoke         # tiny config, seconds (tests)
    python -m benchmarks.train_step --compile       # torch.compile per block (inductor fuses elementwise ops)
    python -m benchmarks.train_step --device cuda --dtype bfloat16

Variants, timed round-robin in one process (best of --repeat):
  shortcut_step   shortcut_forcing_loss with the paper's (tau, d) sampling + backward + AdamW step
  flow_step       the same with every frame at d_min (d_min_share=1.0): no teacher passes
  student_fwd_bwd the student forward + flow loss + backward alone (no optimizer)
  teacher         the two no-grad teacher passes of Eq. 7 on the rows holding a bootstrap frame
Targets: shortcut_step / flow_step <= 1.7 (docs/design.md §3.7), teacher / student_fwd_bwd <= 0.7, and
achieved FLOP/s >= 40 % of the fp32 matmul peak on CPU.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import (
    config_dict,
    forward_flops,
    machine_info,
    matmul_peak,
    parse_benchmark_args,
    peak_memory,
    pin_threads,
    run_benchmark,
    step_config,
    time_interleaved,
)
from dreamer_dynamics.model import DynamicsTransformer
from dreamer_dynamics.objective import sample_signal_and_step, shortcut_forcing_loss
from dreamer_dynamics.objective.flow import corrupt
from dreamer_dynamics.objective.shortcut import bootstrap_velocity_target
from dreamer_dynamics.parallelize import parallelize_model

TARGETS = {"shortcut_over_flow": 1.7, "teacher_over_student": 0.7, "cpu_fraction_of_peak": 0.4}


def measure_length(
    model, optimizer, config, batch, frames, *, repeat, device, dtype, peak_probe_size, seed=0
) -> dict:
    """Time every variant on (batch, frames) latents; returns figures and ratios."""
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch, frames, config.latent_tokens, config.latent_dim, generator=gen).to(device)
    z0 = torch.randn(z1.shape, generator=gen).to(device)
    cond = {
        "actions_discrete": torch.randint(
            0, config.num_discrete_actions[0], (batch, frames, 1), generator=gen
        ).to(device)
    }
    d_min = config.d_min
    tau_s, d_s = sample_signal_and_step(batch, frames, config.k_max, generator=gen, device=device)
    tau_f, d_f = sample_signal_and_step(
        batch, frames, config.k_max, generator=gen, d_min_share=1.0, device=device
    )
    bootstrap = d_s > d_min
    rows = bootstrap.any(1).nonzero().squeeze(1)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(tau, d):
        with autocast:
            out = shortcut_forcing_loss(model, z1, tau, d, d_min=d_min, z0=z0, **cond)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def student_fwd_bwd():
        with autocast:
            x1_hat = model(corrupt(z1, z0, tau_s), tau_s, d_s, **cond)
        (x1_hat.float() - z1).square().mean().backward()
        model.zero_grad(set_to_none=True)

    z_tilde = corrupt(z1, z0, tau_s)
    rows_cond = {k: v[rows] for k, v in cond.items()}

    def teacher():
        with autocast:
            bootstrap_velocity_target(
                model, z_tilde[rows], tau_s[rows], d_s[rows], bootstrap[rows], **rows_cond
            )

    def forward_only():
        with torch.no_grad(), autocast:
            model(z_tilde, tau_s, d_s, **cond)

    # The matmul peak is probed in the same rounds, so it sees the same machine load as the variants.
    n = peak_probe_size
    a, b = (torch.randn(n, n, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    timings = time_interleaved(
        {
            "shortcut_step": lambda: step(tau_s, d_s),
            "flow_step": lambda: step(tau_f, d_f),
            "student_fwd_bwd": student_fwd_bwd,
            "teacher": teacher,
            "forward_no_grad": forward_only,
            "matmul_peak_probe": lambda: a @ b,
        },
        repeat=repeat,
        warmup=1,
        device=device,
    )
    peak_probe = 2 * n**3 / timings.pop("matmul_peak_probe").best
    with peak_memory(device) as memory:
        step(tau_s, d_s)

    flops = forward_flops(config, batch, frames)
    teacher_share = rows.numel() / batch  # teacher passes run on this share of the rows
    step_flops = {"flow_step": 3 * flops["total"], "shortcut_step": (3 + 2 * teacher_share) * flops["total"]}
    latent_tokens = batch * frames * config.latent_tokens
    best = {name: t.best for name, t in timings.items()}
    figures = {
        "batch": batch,
        "frames": frames,
        "latent_tokens_per_step": latent_tokens,
        "bootstrap_frame_share": bootstrap.float().mean().item(),
        "teacher_row_share": teacher_share,
        "seconds_best": best,
        "seconds_median": {k: t.median for k, t in timings.items()},
        "matmul_peak_probe_flops": peak_probe,
        "flops_forward": flops,
        "flops_step": step_flops,
        "peak_memory": memory,
    }
    for name in ("shortcut_step", "flow_step"):
        figures[f"{name}_latent_tokens_per_s"] = latent_tokens / best[name]
        figures[f"{name}_flops_per_s"] = step_flops[name] / best[name]
    figures["shortcut_over_flow"] = best["shortcut_step"] / best["flow_step"]
    figures["teacher_over_student"] = best["teacher"] / best["student_fwd_bwd"]
    return figures


def profile_step(model, optimizer, config, batch, frames, device, rows: int = 15) -> list:
    """Top ops (self time) of one shortcut step, for the docs' profile where a target is missed."""
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(1)
    z1 = torch.randn(batch, frames, config.latent_tokens, config.latent_dim, generator=gen).to(device)
    acts = torch.randint(0, config.num_discrete_actions[0], (batch, frames, 1), generator=gen).to(device)
    tau, d = sample_signal_and_step(batch, frames, config.k_max, generator=gen, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        out = shortcut_forcing_loss(model, z1, tau, d, d_min=config.d_min, actions_discrete=acts)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {
            "op": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:rows]
    ]


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    threads = pin_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    config = step_config(args.smoke, {"context_length": 64}, compile_blocks=args.compile)
    torch.manual_seed(0)
    model = parallelize_model(DynamicsTransformer(config)).to(device).train()  # compile per block if asked
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    peak = matmul_peak(
        device, dtype, sizes=(128, 256) if args.smoke else (1024, 1536, 2048), repeat=2 if args.smoke else 5
    )
    lengths = [("short", 2, 8), ("long", 1, 16)] if args.smoke else [("short", 4, 32), ("long", 1, 128)]
    report = {
        "benchmark": "train_step",
        "machine": machine_info(device, threads),
        "dtype": args.dtype,
        "compile_blocks": args.compile,
        "smoke": args.smoke,
        "config": config_dict(config),
        "params": sum(p.numel() for p in model.parameters()),
        "matmul_peak": peak,
        "targets": TARGETS,
        "lengths": {},
    }
    for name, batch, frames in lengths:
        report["lengths"][name] = measure_length(
            model,
            optimizer,
            config,
            batch,
            frames,
            repeat=args.repeat,
            device=device,
            dtype=dtype,
            peak_probe_size=128 if args.smoke else 2048,
        )
    # Peak = the best sgemm seen anywhere in the run (up-front sweep or the probes between the variants).
    peak["flops"] = max([peak["flops"]] + [f["matmul_peak_probe_flops"] for f in report["lengths"].values()])
    for figures in report["lengths"].values():
        figures["shortcut_step_fraction_of_peak"] = figures["shortcut_step_flops_per_s"] / peak["flops"]
        figures["flow_step_fraction_of_peak"] = figures["flow_step_flops_per_s"] / peak["flops"]
    if args.profile:
        _, batch, frames = lengths[0]
        report["profile_short_shortcut_step"] = profile_step(model, optimizer, config, batch, frames, device)
    short = report["lengths"]["short"]
    report["targets_met"] = {
        "shortcut_over_flow": all(
            f["shortcut_over_flow"] <= TARGETS["shortcut_over_flow"] for f in report["lengths"].values()
        ),
        "teacher_over_student": all(
            f["teacher_over_student"] <= TARGETS["teacher_over_student"] for f in report["lengths"].values()
        ),
        "cpu_fraction_of_peak": short["shortcut_step_fraction_of_peak"] >= TARGETS["cpu_fraction_of_peak"],
    }
    return report


def print_report(report: dict) -> None:
    peak = report["matmul_peak"]["flops"]
    print(
        f"train_step: {report['params'] / 1e6:.2f}M params, {report['machine']['threads']} threads, "
        f"{report['dtype']} matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(
        f"{'batch':>10} {'variant':>16} {'best s':>8} {'median s':>9} "
        f"{'tok/s':>9} {'GFLOP/s':>8} {'of peak':>8}"
    )
    for name, f in report["lengths"].items():
        for variant in ("shortcut_step", "flow_step", "student_fwd_bwd", "teacher", "forward_no_grad"):
            extra = ""
            if variant in ("shortcut_step", "flow_step"):
                extra = (
                    f" {f[variant + '_latent_tokens_per_s']:9.0f} {f[variant + '_flops_per_s'] / 1e9:8.1f} "
                    f"{f[variant + '_fraction_of_peak']:8.1%}"
                )
            label = f"{name} {f['batch']}x{f['frames']}"
            print(
                f"{label:>10} {variant:>16} {f['seconds_best'][variant]:8.3f} "
                f"{f['seconds_median'][variant]:9.3f}{extra}"
            )
        mem = f["peak_memory"]
        print(
            f"{'':>10} shortcut/flow {f['shortcut_over_flow']:.2f} (<= 1.7)  teacher/student "
            f"{f['teacher_over_student']:.2f} (<= 0.7)  peak memory {mem['peak_bytes'] / 2**20:.0f} MiB "
            f"({mem['kind']})"
        )
    for row in report.get("profile_short_shortcut_step", []):
        print(f"    {row['op']:<45} {row['self_cpu_ms']:9.1f} ms {row['share']:6.1%} {row['calls']:6d} calls")
    print("targets met:", report["targets_met"])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU intra-op threads (0 = torch default); 1 by default: on a shared machine two "
        "OpenMP threads stall on each other and swing the timings up to 3x",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats per variant (best is reported)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every block (DynamicsConfig.compile_blocks); compiling takes minutes",
    )
    parser.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the torch.profiler table of one shortcut step",
    )
    return parse_benchmark_args(parser, argv)


def main(argv=None) -> dict:
    return run_benchmark("train_step", parse_args, run, print_report, argv)


if __name__ == "__main__":
    main()
