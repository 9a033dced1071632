"""Learning curves of the quickstart recipe and its ablations on the built-in world, scored with the energy
score.

Each variant is the README's quickstart (``lightning_configs/quickstart.yaml``) with a few CLI overrides,
trained by the real ``dreamer-dynamics fit`` in a subprocess and validated every ``--val-every`` steps. The
curve of a variant is its validation energy-score ratio (ES of K-step rollouts / ES of copying the last
context frame; 0 is perfect) and object accuracy against the optimiser step and against training wall-clock
(validation time excluded).

    python -m benchmarks.learning --variants recipe,paper_sampling  # two curves, ~15 min on 2 cores
    python -m benchmarks.learning --list                             # the variants and their overrides
    python -m benchmarks.learning --smoke                            # seconds: checks the logic only

Variants run one after another by default; ``--parallel 2 --threads 1`` runs two at once on one thread each
(the step curves are unaffected; wall-clock figures are then per thread).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import RESULTS_DIR, parse_benchmark_args, run_benchmark
from benchmarks.tensorboard_curves import read_scalars, training_seconds

QUICKSTART = Path(__file__).resolve().parent.parent / "lightning_configs" / "quickstart.yaml"

# name -> CLI overrides of the quickstart config (the recipe is the config itself).
VARIANTS: dict[str, list[str]] = {
    "recipe": [],
    "no_context_prefix": ["--model.objective.context_prefix_frames=0"],  # every frame's level drawn
    "context_prefix_4": ["--model.objective.context_prefix_frames=4"],
    "width_64": [  # a narrower model: width 64, 4 heads
        "--model.model.dim=64",
        "--model.model.heads=4",
    ],
    "flat_positions": ["--data.token_grid=[16,1]"],  # space RoPE along the token index only, not (row, col)
    "bootstrap_rows_0.5": [
        "--model.objective.bootstrap_row_share=0.5"
    ],  # half the rows train the bootstrap term
    "ramp_weighting": [
        "--model.objective.loss_weighting=ramp"
    ],  # the paper's Eq. 8 weight instead of the uniform one
    "short_windows_12": ["--data.short_length=12", "--data.short_batch_size=16"],  # shorter training windows
    "lr_2e-3": ["--model.optimizer.init_args.lr=0.002"],
    "adamw": [  # AdamW for every parameter, constant rate after the warm-up
        "--model.optimizer.class_path=torch.optim.AdamW",
        "--model.scheduler.init_args.min_lr_ratio=1.0",
    ],
    "adamw_cosine": ["--model.optimizer.class_path=torch.optim.AdamW"],  # AdamW with the recipe's decay
    "muon_lr_0.01": ["--model.optimizer.init_args.muon_lr=0.01"],
    "muon_lr_0.04": ["--model.optimizer.init_args.muon_lr=0.04"],
    "constant_lr": ["--model.scheduler.init_args.min_lr_ratio=1.0"],  # no decay after the warmup
    "bootstrap_every_row": [  # as many bootstrap frames, spread over every row (teacher passes on every row)
        "--model.objective.bootstrap_row_share=null",
        "--model.objective.d_min_share=0.75",
    ],
    "paper_sampling": [  # K uniform over the powers of two in every row (1/5 of frames at d_min)
        "--model.objective.bootstrap_row_share=null",
        "--model.objective.d_min_share=null",
    ],
    "flow_only": [
        "--model.objective.d_min_share=1.0",
        "--model.objective.bootstrap_warmup_steps=0",
    ],  # diffusion forcing alone
    "deterministic_world": ["--data.world=deterministic"],  # the balls never turn
    "no_bootstrap_warmup": ["--model.objective.bootstrap_warmup_steps=0"],
    "image_rows_0.3": [
        "--model.objective.image_row_share=0.3"
    ],  # the paper's share of rows trained as images
    "no_zero_init": ["--model.model.zero_init_output=false"],
    "lr_1e-3": ["--model.optimizer.init_args.lr=0.001"],
    "channel_std": ["--data.standardize=channel"],  # each latent channel divided by its own std
    "not_standardized": ["--data.standardize=false"],
}
CURVE_KEYS = (
    "rollout_es_ratio_k1",
    "rollout_es_ratio_k4",
    "rollout_es_ratio_kmax",
    "object_accuracy_k4",
    "flow_loss_tau0.00_0.25",
)


def run_variant(name: str, overrides: list[str], args: argparse.Namespace, workdir: Path) -> dict:
    """Train one variant through the console script and read its curves back from TensorBoard."""
    out = workdir / name
    script = Path(sys.executable).with_name("dreamer-dynamics")
    cmd = [
        str(script) if script.exists() else "dreamer-dynamics",
        "fit",
        f"--config={args.config}",
        f"--trainer.max_steps={args.steps}",
        f"--trainer.val_check_interval={args.val_every}",
        f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false",
        f"--model.evaluation.rollout_batches={args.rollout_batches}",
        *args.extra,
        *overrides,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{proc.stderr[-3000:]}")
    scalars = read_scalars(out)
    k_max = max(int(tag.rsplit("_k", 1)[1]) for tag in scalars if tag.startswith("val/rollout_es_ratio_k"))
    wall = training_seconds(scalars["train/loss_unnormalized"])
    curve = []
    for step, _, _ in scalars[f"val/rollout_es_ratio_k{k_max}"]:
        point = {"step": step + 1, "train_seconds": wall(step)}
        for key in CURVE_KEYS:
            tag = "val/" + key.replace("kmax", f"k{k_max}")
            point[key] = next((v for s, _, v in scalars.get(tag, []) if s == step), None)
        curve.append(point)
    print(
        f"{name}: {args.steps} steps in {time.perf_counter() - start:.0f} s; final "
        + ", ".join(f"{k} {v:.3f}" for k, v in curve[-1].items() if isinstance(v, float)),
        flush=True,
    )
    return {"overrides": overrides, "k_max": k_max, "curve": curve}


def run(args: argparse.Namespace) -> dict:
    if args.smoke:
        args.steps, args.val_every = 4, 2
        args.extra = [
            *args.extra,
            "--data.short_batch_size=2",
            "--data.long_batch_size=1",
            "--data.val_batches=1",
            "--model.model.dim=16",
            "--model.model.heads=4",
            "--model.model.kv_heads=2",
            "--model.model.depth=2",
            "--model.evaluation.rollout_horizon=2",
            "--model.evaluation.rollout_rows=2",
            "--model.model.k_max=4",
            "--trainer.log_every_n_steps=1",
        ]
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    workdir = Path(tempfile.mkdtemp(prefix="learning-"))
    try:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            futures = {n: pool.submit(run_variant, n, VARIANTS[n], args, workdir) for n in names}
            variants = {n: f.result() for n, f in futures.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "benchmark": "learning",
        "steps": args.steps,
        "val_every": args.val_every,
        "threads": args.threads,
        "parallel": args.parallel,
        "config": str(args.config),
        "variants": variants,
    }
    if args.plot:
        plot(report, args.plot)
    return report


def plot(report: dict, path: Path) -> None:
    """ES ratio at K = 4 against steps and against training seconds, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for name, variant in report["variants"].items():
        curve = variant["curve"]
        ratio = [p["rollout_es_ratio_k4"] for p in curve]
        axes[0].plot([p["step"] for p in curve], ratio, marker="o", label=name)
        axes[1].plot([p["train_seconds"] for p in curve], ratio, marker="o", label=name)
    axes[0].set_xlabel("optimiser step")
    axes[1].set_xlabel("training wall-clock (s)")
    axes[0].set_ylabel("ES(K=4) / ES(copy-last)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def print_report(report: dict) -> None:
    print(f"learning curves: {report['steps']} steps, validation every {report['val_every']}")
    header = f"{'variant':>20} {'step':>6} {'train s':>8} " + " ".join(f"{k:>22}" for k in CURVE_KEYS)
    print(header)
    for name, variant in report["variants"].items():
        for p in variant["curve"]:
            cells = " ".join(f"{p[k]:22.3f}" if p[k] is not None else f"{'-':>22}" for k in CURVE_KEYS)
            print(f"{name:>20} {p['step']:6d} {p['train_seconds']:8.0f} {cells}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default="recipe,paper_sampling", help="comma-separated names (--list)")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument(
        "--steps", type=int, default=1700, help="optimiser steps per variant (quickstart: 1700)"
    )
    parser.add_argument("--val-every", type=int, default=425, help="steps between validations")
    parser.add_argument(
        "--rollout-batches", type=int, default=2, help="validation batches scored with rollouts"
    )
    parser.add_argument("--config", type=Path, default=QUICKSTART)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per variant")
    parser.add_argument("--parallel", type=int, default=1, help="variants trained at once")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "learning.png", help="PNG of the curves")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every variant")
    args = parse_benchmark_args(parser, argv)
    if args.list:
        for name, overrides in VARIANTS.items():
            print(f"{name:>20}: {' '.join(overrides) or '(the quickstart config)'}")
        raise SystemExit(0)
    return args


def main(argv=None) -> dict:
    return run_benchmark("learning", parse_args, run, print_report, argv)


if __name__ == "__main__":
    main()
