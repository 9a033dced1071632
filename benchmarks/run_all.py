"""Run every benchmark, print a summary table and write JSON under benchmarks/results/.

    python -m benchmarks.run_all                     # CPU: ~30 minutes on 2 cores (quality ~15 of them)
    python -m benchmarks.run_all --skip quality      # the speed figures only (~8 minutes)
    python -m benchmarks.run_all --quality-steps 600
    python -m benchmarks.run_all --gpu               # on a CUDA machine: adds benchmarks/gpu.py
    python -m benchmarks.run_all --smoke             # every benchmark's smallest mode (seconds; tests)

Each benchmark also runs alone (`python -m benchmarks.<name> --help`). Results: <results>/<name>.json and
<results>/summary.json (the figures of the table below, with the machine description).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import gpu, quality, rollout_speed, scaling, train_step
from benchmarks.common import RESULTS_DIR, write_report

BENCHMARKS = ("train_step", "rollout_speed", "rollout_speed_quickstart", "scaling", "quality", "gpu")


def benchmark_argv(name: str, args: argparse.Namespace, output: Path) -> list:
    argv = ["--output", str(output)]
    threads = ["--threads", str(args.threads)]
    if name == "train_step":
        return argv + threads + (["--smoke", "--repeat", "1", "--no-profile"] if args.smoke else [])
    if name == "rollout_speed":  # debug-size model, with and without the cache, horizons 16/64/256
        return argv + threads + (["--smoke"] if args.smoke else [])
    if name == "rollout_speed_quickstart":  # the train_step model size, cached only beyond horizon 16
        return (
            argv
            + threads
            + ["--config", "medium", "--context-length", "64", "--max-uncached-horizon", "16"]
            + (["--smoke"] if args.smoke else [])
        )
    if name == "scaling":
        return argv + threads + (["--smoke", "--repeat", "1"] if args.smoke else [])
    if name == "quality":
        return (
            argv
            + ["--threads", str(args.quality_threads)]
            + (
                ["--smoke"]
                if args.smoke
                else ["--steps", str(args.quality_steps)]
                if args.quality_steps
                else []
            )
        )
    if name == "gpu":
        return argv + (["--smoke"] if args.smoke else ["--nominal-tflops", str(args.nominal_tflops)])
    raise ValueError(name)


def summary_rows(reports: dict) -> list:
    """(benchmark, figure, value, target) rows of the printed table."""
    rows = []
    if "train_step" in reports:
        r = reports["train_step"]
        peak = r["matmul_peak"]["flops"]
        rows.append(("train_step", "fp32 matmul peak GFLOP/s", f"{peak / 1e9:.1f}", ""))
        for name, f in r["lengths"].items():
            label = f"{name} {f['batch']}x{f['frames']}"
            rows += [
                ("train_step", f"{label} shortcut step s", f"{f['seconds_best']['shortcut_step']:.3f}", ""),
                (
                    "train_step",
                    f"{label} latent tokens/s",
                    f"{f['shortcut_step_latent_tokens_per_s']:.0f}",
                    "",
                ),
                (
                    "train_step",
                    f"{label} achieved / peak",
                    f"{f['shortcut_step_fraction_of_peak']:.1%}",
                    ">= 40%" if name == "short" else "",
                ),
                ("train_step", f"{label} shortcut / flow-only", f"{f['shortcut_over_flow']:.2f}", "<= 1.7"),
                ("train_step", f"{label} teacher / student", f"{f['teacher_over_student']:.2f}", "<= 0.7"),
                (
                    "train_step",
                    f"{label} peak memory MiB",
                    f"{f['peak_memory']['peak_bytes'] / 2**20:.0f}",
                    "",
                ),
            ]
    for key in ("rollout_speed", "rollout_speed_quickstart"):
        for res in reports.get(key, {}).get("results", []):
            rows.append(
                (
                    key,
                    f"H={res['horizon']} cache {'on' if res['use_cache'] else 'off'} frames/s",
                    f"{res['frames_per_s']:.1f}",
                    "",
                )
            )
    for row in reports.get("scaling", {}).get("rows", []):
        rows.append(
            (
                "scaling",
                f"T={row['T']} B={row['batch']} windowed / full (rel. to first T)",
                f"{row['windowed_relative']:.2f} / {row['full_relative']:.2f}",
                "",
            )
        )
    if "quality" in reports:
        for horizon, row in reports["quality"]["summary"].items():
            for name in ("shortcut", "flow_only"):
                figures = " ".join(f"K={k}:{row[f'{name}_k{k}_over_kmax']['mean']:.3f}" for k in (1, 4))
                target = "<= 1.10, 1.05" if name == "shortcut" else ">= 1.25 at K=1"
                rows.append(("quality", f"{name} ES(K) / ES(K_max), {horizon[1:]} frames", figures, target))
    if "gpu" in reports:
        g = reports["gpu"]
        rows.append(("gpu", "bf16 MFU vs measured peak", f"{g['mfu']['mfu_vs_measured_peak']:.1%}", ""))
        rows.append(
            ("gpu", "minecraft rollout K=4 frames/s", f"{g['rollout']['frames_per_s']:.1f}", "paper 21")
        )
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of the timing benchmarks (1: two OpenMP threads on a shared machine "
        "swing timings up to 3x)",
    )
    parser.add_argument(
        "--quality-threads",
        type=int,
        default=1,
        help="CPU threads of the quality training (1: on the shared 2-core machine 2 threads "
        "trained 3x slower per step)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=BENCHMARKS)
    parser.add_argument("--gpu", action="store_true", help="also run benchmarks/gpu.py (needs CUDA)")
    parser.add_argument("--quality-steps", type=int, default=None, help="default: the quickstart's max_steps")
    parser.add_argument("--nominal-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100: 989)")
    parser.add_argument(
        "--smoke", action="store_true", help="every benchmark's smallest mode (gpu.py on CPU)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    modules = {
        "train_step": train_step,
        "rollout_speed": rollout_speed,
        "rollout_speed_quickstart": rollout_speed,
        "scaling": scaling,
        "quality": quality,
        "gpu": gpu,
    }
    selected = [n for n in BENCHMARKS if n not in args.skip and (n != "gpu" or args.gpu or args.smoke)]
    reports, seconds = {}, {}
    for name in selected:
        print(f"=== {name}", flush=True)
        start = time.perf_counter()
        reports[name] = modules[name].main(benchmark_argv(name, args, args.results / f"{name}.json"))
        seconds[name] = time.perf_counter() - start
    rows = summary_rows(reports)
    width = max((len(r[1]) for r in rows), default=10)
    print(f"\n{'benchmark':<25} {'figure':<{width}} {'value':>30} target")
    for bench, figure, value, target in rows:
        print(f"{bench:<25} {figure:<{width}} {value:>30} {target}")
    machine = next((r["machine"] for r in reports.values() if "machine" in r), None)
    summary = {
        "benchmark": "summary",
        "machine": machine,
        "seconds": seconds,
        "smoke": args.smoke,
        "rows": [dict(zip(("benchmark", "figure", "value", "target"), r)) for r in rows],
    }
    print("wrote", write_report("summary", summary, args.results / "summary.json"))
    return summary


if __name__ == "__main__":
    main()
