"""Rollout quality of shortcut forcing against flow-only training (the paper's Fig. 8) on the built-in world.

Two models with the same initial weights, data order and noise are trained for the same number of steps with a
plain loop over the objective (no Lightning): the shortcut model with the paper's step-size sampling, the
flow-only model with every frame at d_min (`d_min_share=1.0`, plain diffusion forcing). Each then rolls out the
held-out episodes from a few context frames with K = 1, 2, 4 and K_max Euler steps per frame; the figure is the
mean squared error of the generated latents against the ground truth, next to the copy-last-context-frame baseline.
Expectation (paper Fig. 8): the shortcut model at K = 4 is close to its K_max quality, the flow-only one is not.

    python benchmarks/quality.py               # ~8 minutes on 1 thread of the 2-core machine (--steps 300)
    python benchmarks/quality.py --steps 1000  # closer to converged
    python benchmarks/quality.py --smoke       # seconds: checks the logic only
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import config_dict, machine_info, medium_config, pin_threads, run_benchmark  # noqa: E402
from dreamer_dynamics.data import DynamicsDataModule  # noqa: E402
from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer, rollout  # noqa: E402
from dreamer_dynamics.objective import sample_signal_and_step, shortcut_forcing_loss  # noqa: E402


def quality_config(data: DynamicsDataModule, smoke: bool) -> DynamicsConfig:
    spec = dict(latent_tokens=data.latent_tokens, latent_dim=data.latent_dim,
                num_discrete_actions=data.num_discrete_actions, num_continuous_actions=data.num_continuous_actions)
    if smoke:
        return DynamicsConfig.debug(**spec, pack_factor=1)
    return medium_config(**spec, dim=128, depth=4, heads=4, kv_heads=2, time_every=2,
                         context_length=16, k_max=64)


def training_windows(data: DynamicsDataModule, steps: int, batch: int, length: int, seed: int) -> list:
    """Seeded (episode, start) windows of the training episodes for every step: both models see the same data."""
    rng = np.random.default_rng(seed)
    episodes = np.asarray(data.train_episodes)
    lengths = data.dataset.episode_lengths[episodes]
    plan = []
    for _ in range(steps):
        chosen = rng.integers(0, len(episodes), batch)
        starts = rng.integers(0, lengths[chosen] - length + 1)
        plan.append([(int(episodes[c]), int(s)) for c, s in zip(chosen, starts)])
    return plan


def load_batch(data: DynamicsDataModule, windows, length: int) -> dict:
    items = [data.dataset.window(e, start=s, length=length) for e, s in windows]
    return {key: torch.as_tensor(np.stack([item[key] for item in items])) for key in items[0]}


def train(config, data, plan, args, d_min_share) -> tuple:
    """Plain training loop over shortcut_forcing_loss; returns the model and the loss curve."""
    torch.manual_seed(args.seed)  # same initial weights for both variants
    model = DynamicsTransformer(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, len(plan) // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warmup, cosine decay to 10 %
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * s / len(plan))))
    gen = torch.Generator().manual_seed(args.seed + 1)  # same noise and levels draws for both variants
    d_min = 1.0 / config.k_max
    losses = []
    for windows in plan:
        batch = load_batch(data, windows, args.length)
        z1 = batch["latents"]
        tau, d = sample_signal_and_step(z1.shape[0], z1.shape[1], config.k_max, generator=gen,
                                        d_min_share=d_min_share)
        z0 = torch.randn(z1.shape, generator=gen)
        cond = {k: v for k, v in batch.items() if k.startswith("actions")}
        out = shortcut_forcing_loss(model, z1, tau, d, d_min=d_min, z0=z0, **cond)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        losses.append(out.loss.item())
    return model.eval(), losses


def evaluate(model, data, args, step_counts) -> dict:
    """Rollout MSE against ground truth per K, and the copy-last-frame baseline, on held-out windows."""
    total = args.context + args.horizon
    windows = data.fixed_windows(total, args.eval_windows, "val")
    batch = load_batch(data, [(e, s) for e, s, _ in windows], total)
    latents = batch["latents"]
    context, truth = latents[:, :args.context], latents[:, args.context:]
    cond = {k: v for k, v in batch.items() if k.startswith("actions")}
    result = {"windows": len(windows),
              "copy_last_frame": (context[:, -1:] - truth).square().mean().item()}
    for k in step_counts:
        frames = rollout(model, context, args.horizon, num_steps=k, generator=torch.Generator().manual_seed(0),
                         **cond)
        result[f"K={k}"] = (frames - truth).square().mean().item()
    return result


def run(args: argparse.Namespace) -> dict:
    threads = pin_threads(args.threads)
    if args.smoke:
        args.steps, args.batch, args.length, args.horizon, args.eval_windows = 2, 2, 8, 2, 2
    data = DynamicsDataModule(root=args.data_root, short_length=args.length, long_length=args.length,
                              val_fraction=0.1, seed=args.seed, cache_dir=args.cache_dir)
    data.setup("fit")
    config = quality_config(data, args.smoke)
    step_counts = sorted({1, 2, 4, config.k_max})
    plan = training_windows(data, args.steps, args.batch, args.length, args.seed)
    report = {"benchmark": "quality", "machine": machine_info(torch.device("cpu"), threads), "smoke": args.smoke,
              "steps": args.steps, "batch": args.batch, "length": args.length, "context": args.context,
              "horizon": args.horizon, "config": config_dict(config), "dataset": data.root, "models": {}}
    for name, share in (("shortcut", args.shortcut_d_min_share), ("flow_only", 1.0)):
        start = time.perf_counter()
        model, losses = train(config, data, plan, args, share)
        train_s = time.perf_counter() - start
        tail = losses[-max(1, len(losses) // 10):]
        report["models"][name] = {"d_min_share": share, "train_seconds": train_s,
                                  "final_loss": float(np.mean(tail)),
                                  "rollout_mse": evaluate(model, data, args, step_counts)}
        print(f"trained {name}: {args.steps} steps in {train_s:.0f} s, final loss {np.mean(tail):.4f}", flush=True)
    shortcut = report["models"]["shortcut"]["rollout_mse"]
    flow = report["models"]["flow_only"]["rollout_mse"]
    k_max = config.k_max
    report["summary"] = {
        "shortcut_K4_over_Kmax": shortcut["K=4"] / shortcut[f"K={k_max}"],
        "flow_only_K4_over_Kmax": flow["K=4"] / flow[f"K={k_max}"],
        "shortcut_K4_over_flow_only_K4": shortcut["K=4"] / flow["K=4"],
    }
    return report


def print_report(report: dict) -> None:
    models = report["models"]
    keys = [k for k in models["shortcut"]["rollout_mse"] if k.startswith("K=")]
    print(f"quality: {report['steps']} steps x batch {report['batch']} x {report['length']} frames, rollout "
          f"{report['context']} context -> {report['horizon']} frames, "
          f"{models['shortcut']['rollout_mse']['windows']} held-out windows (latent MSE, lower is better)")
    print(f"{'model':>10} " + " ".join(f"{k:>9}" for k in keys) + f" {'copy-last':>10}")
    for name, m in models.items():
        mse = m["rollout_mse"]
        print(f"{name:>10} " + " ".join(f"{mse[k]:9.4f}" for k in keys) + f" {mse['copy_last_frame']:10.4f}")
    print("summary:", {k: round(v, 3) for k, v in report["summary"].items()})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=16, help="frames per training window")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--shortcut-d-min-share", type=float, default=None,
                        help="share of the shortcut model's frames at d_min (default: the paper's uniform-in-log2 "
                             "sampling, 1/7 of frames at K_max = 64; peers use 0.75-0.87)")
    parser.add_argument("--context", type=int, default=4, help="context frames of the evaluation rollouts")
    parser.add_argument("--horizon", type=int, default=8, help="generated frames per evaluation rollout")
    parser.add_argument("--eval-windows", type=int, default=16, help="held-out windows evaluated")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1 by default: on a shared 2-core machine 2 threads ran 3x slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="dataset (default: the built-in environment)")
    parser.add_argument("--cache-dir", default=None, help="cache of the built-in dataset")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    return run_benchmark("quality", parse_args, run, print_report, argv)


if __name__ == "__main__":
    main()
