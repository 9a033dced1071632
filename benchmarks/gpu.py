"""GPU figures: bf16 model-FLOP utilisation of a >= 100M-parameter training step, and rollout frames/s of the
paper-scale `DynamicsConfig.minecraft()` model at K = 4 (the paper: 21 FPS on one H100 at 2B parameters).

    python -m benchmarks.gpu                       # needs CUDA; ~3 minutes on an H100
    python -m benchmarks.gpu --compile             # torch.compile every block (slower start, faster steps)
    python -m benchmarks.gpu --smoke               # tiny configs on CPU in fp32: checks the logic only

MFU = achieved model FLOP/s (benchmarks.common.forward_flops: 3x forward for the student, + 2 teacher
forwards on the rows with a bootstrap frame) over (a) the dense bf16 matmul peak measured in the same run and
(b) the vendor's nominal dense bf16 peak when `--nominal-tflops` is given (H100 SXM: 989).
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
    time_fn,
)
from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer, rollout
from dreamer_dynamics.objective import sample_signal_and_step, shortcut_forcing_loss
from dreamer_dynamics.parallelize import parallelize_model


def mfu_config(smoke: bool, compile_blocks: bool) -> DynamicsConfig:
    if smoke:
        return DynamicsConfig.debug(num_continuous_actions=0, num_discrete_actions=(17,))
    # ~150M parameters: Minecraft latent layout (512x16 packed to 256x32), width 1024, depth 12.
    return DynamicsConfig.minecraft(
        dim=1024,
        depth=12,
        heads=16,
        kv_heads=4,
        context_length=64,
        num_discrete_actions=(17,),
        activation_checkpointing=False,
        compile_blocks=compile_blocks,
    )


def measure_mfu(args, device, dtype) -> dict:
    config = mfu_config(args.smoke, args.compile)
    batch, frames = (2, 8) if args.smoke else (args.batch, args.frames)
    torch.manual_seed(0)
    model = parallelize_model(DynamicsTransformer(config)).to(device).train()  # compile per block if asked
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(batch, frames, config.latent_tokens, config.latent_dim, generator=gen).to(device)
    acts = torch.randint(0, 17, (batch, frames, 1), generator=gen).to(device)
    tau, d = sample_signal_and_step(batch, frames, config.k_max, generator=gen, device=device)
    rows = (d > config.d_min).any(1).float().mean().item()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = shortcut_forcing_loss(model, z1, tau, d, d_min=config.d_min, actions_discrete=acts)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timing = time_fn(step, repeat=args.repeat, warmup=1 if args.smoke else 3, device=device)
    with peak_memory(device) as memory:
        step()
    flops = (3 + 2 * rows) * forward_flops(config, batch, frames)["total"]
    achieved = flops / timing.best
    peak = matmul_peak(device, dtype, sizes=(256,) if args.smoke else (4096, 8192), repeat=3)
    result = {
        "params": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "frames": frames,
        "config": config_dict(config),
        "step_seconds_best": timing.best,
        "step_seconds_median": timing.median,
        "step_flops": flops,
        "achieved_flops_per_s": achieved,
        "matmul_peak": peak,
        "mfu_vs_measured_peak": achieved / peak["flops"],
        "peak_memory": memory,
    }
    if args.nominal_tflops:
        result["mfu_vs_nominal_peak"] = achieved / (args.nominal_tflops * 1e12)
    return result


def measure_rollout(args, device, dtype) -> dict:
    if args.smoke:
        config = DynamicsConfig.debug(num_continuous_actions=0, num_discrete_actions=(17,))
    else:
        config = DynamicsConfig.minecraft(num_discrete_actions=(17,), compile_blocks=args.compile)
    torch.manual_seed(0)
    model = parallelize_model(DynamicsTransformer(config)).to(device).eval()
    if dtype != torch.float32:
        model = model.to(dtype)  # inference weights in bf16: half the memory traffic
    context_frames, horizon = (2, 3) if args.smoke else (args.context_frames, args.horizon)
    context = torch.randn(
        1, context_frames, config.latent_tokens, config.latent_dim, device=device, dtype=dtype
    )
    acts = torch.randint(0, 17, (1, context_frames + horizon, 1), device=device)

    def generate():
        rollout(
            model,
            context,
            horizon,
            actions_discrete=acts,
            num_steps=4,
            generator=torch.Generator(device).manual_seed(0),
        )

    timing = time_fn(generate, repeat=1 if args.smoke else 2, warmup=1, device=device)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "config": config_dict(config),
        "num_steps": 4,
        "context_frames": context_frames,
        "horizon": horizon,
        "batch": 1,
        "seconds_best": timing.best,
        "frames_per_s": horizon / timing.best,
        "paper_frames_per_s": 21.0,
    }


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if args.smoke else args.device)
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("benchmarks/gpu.py: no CUDA device; use --smoke to check the logic on CPU")
    threads = pin_threads(args.threads)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    report = {
        "benchmark": "gpu",
        "machine": machine_info(device, threads),
        "smoke": args.smoke,
        "dtype": str(dtype).split(".")[-1],
        "compile": args.compile,
    }
    report["mfu"] = measure_mfu(args, device, dtype)
    report["rollout"] = measure_rollout(args, device, dtype)
    return report


def print_report(report: dict) -> None:
    m, r = report["mfu"], report["rollout"]
    nominal = f", {m['mfu_vs_nominal_peak']:.1%} of nominal" if "mfu_vs_nominal_peak" in m else ""
    print(f"gpu ({report['machine'].get('gpu', report['machine']['device'])}, {report['dtype']}):")
    print(
        f"  training step {m['params'] / 1e6:.0f}M params, {m['batch']}x{m['frames']} frames: "
        f"{m['step_seconds_best']:.3f} s, {m['achieved_flops_per_s'] / 1e12:.2f} TFLOP/s = "
        f"{m['mfu_vs_measured_peak']:.1%} of the measured matmul peak{nominal}"
    )
    print(
        f"  rollout {r['params'] / 1e9:.2f}B params, K=4: {r['frames_per_s']:.1f} frames/s "
        f"(paper: {r['paper_frames_per_s']} at 2B on an H100)"
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--context-frames", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--nominal-tflops", type=float, default=None, help="vendor dense bf16 peak (H100: 989)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every block")
    return parse_benchmark_args(parser, argv)


def main(argv=None) -> dict:
    return run_benchmark("gpu", parse_args, run, print_report, argv)


if __name__ == "__main__":
    main()
