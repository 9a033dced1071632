"""Rollout quality against the number of sampling steps K (the paper's Fig. 8) on the built-in world.

Two models are trained by the quickstart recipe (``lightning_configs/quickstart.yaml``) for the same steps
from the same initial weights, data order and noise stream: the **shortcut** model (the recipe) and a
**flow-only** model (every frame at d_min, plain diffusion forcing: ``d_min_share=1``, no bootstrap term).
Each then rolls out held-out episodes from ``val_context_frames`` context frames with K = 1, 2, 4, ..., K_max
Euler steps per frame, several samples per context, scored with the energy score
(``dreamer_dynamics.training.scores``; lower is better, 0 is perfect) next to the copy-last-frame baseline.
The flow-only model never saw a step size other than d_min, so it is sampled with the d_min label at every K
(what a diffusion-forcing model without shortcut conditioning does).

Expectation (paper Fig. 8): the shortcut model at K = 4 is close to its K_max quality; the flow-only one is
not. That gap needs an uncertain future: a perfect x-predictor of a deterministic world outputs the true next
frame from pure noise, and then one Euler step is as good as many. With the actions given, the built-in world
is deterministic; with them hidden (``--actions hidden``: both models train and roll out without actions,
through the module's ``conditioning`` hook), the sprite follows the random policy and each frame has several
possible successors, as the paper's Minecraft frames do. The default runs both worlds (four models).

    python -m benchmarks.quality                 # four models; time: docs/benchmarks.md
    python -m benchmarks.quality --actions given # the two action-conditioned models only
    python -m benchmarks.quality --smoke         # seconds: checks the logic only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import torch

from benchmarks.common import RESULTS_DIR, machine_info, parse_benchmark_args, pin_threads, run_benchmark
from dreamer_dynamics.cli import DynamicsCLI
from dreamer_dynamics.module import DynamicsModule
from dreamer_dynamics.training.scores import RolloutScores

QUICKSTART = Path(__file__).resolve().parent.parent / "lightning_configs" / "quickstart.yaml"
FLOW_ONLY = ["--model.d_min_share=1.0", "--model.bootstrap_warmup_steps=0"]


class StepLabel(torch.nn.Module):
    """The network with every step-size label replaced by ``d``: how a model trained at one step size is
    sampled."""

    def __init__(self, model: torch.nn.Module, d: float) -> None:
        super().__init__()
        self.model, self.config, self.d = model, model.config, d

    def forward(self, z, tau, d, **kwargs):
        return self.model(z, tau, torch.full_like(d, self.d), **kwargs)

    def forward_frames(self, z, tau, d, **kwargs):
        return self.model.forward_frames(z, tau, torch.full_like(d, self.d), **kwargs)


def no_actions(batch: dict) -> dict:
    """``conditioning`` of a model that never sees the actions: its world is stochastic (random policy)."""
    return {}


def train(
    args: argparse.Namespace, overrides: list[str], root: Path, hide_actions: bool = False
) -> tuple[DynamicsModule, object, float]:
    """Fit one model through the real CLI stack (config, data links, callbacks); returns it in eval mode.
    ``hide_actions``: train (and later roll out) without the actions, through the ``conditioning`` hook."""
    steps = [f"--trainer.max_steps={args.steps}"] if args.steps else []  # None: the config's max_steps
    cli_args = [
        f"--config={args.config}",
        *steps,
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=0",
        f"--data.val_batches={args.eval_batches}",
        *args.extra,
        *overrides,
    ]
    with mock.patch.object(
        sys, "argv", sys.argv[:1]
    ):  # LightningCLI reads only `args`, not this script's flags
        cli = DynamicsCLI(args=cli_args, run=False)
    if hide_actions:
        cli.model.conditioning = no_actions
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.model.eval(), cli.datamodule, time.perf_counter() - start


@torch.no_grad()
def evaluate(module: DynamicsModule, data, args: argparse.Namespace, flow_only: bool) -> dict:
    """Energy score per K over the held-out windows (the dataset's units), S samples per context."""
    steps = [2**i for i in range(module.config.k_max.bit_length())]  # 1, 2, 4, ..., K_max
    scores = RolloutScores(steps)
    net = StepLabel(module.model, module.config.d_min) if flow_only else module.model
    ctx, samples = module.hparams.val_context_frames, args.samples
    generator = torch.Generator().manual_seed(args.seed)
    for batch in data.val_dataloader():
        z1 = batch["latents"]
        context, target = z1[:, :ctx], z1[:, ctx:]
        cond = module.conditioning(batch)
        generated = module.sample_rollouts(
            context, target.shape[1], cond, steps, samples, generator, model=net
        )
        scores.update(*module.score_units(context, target, generated), module.object_hits(generated, target))
    return {name: float(value) for name, value in scores.compute().items()}


def run(args: argparse.Namespace) -> dict:
    threads = pin_threads(args.threads)
    if args.smoke:
        args.steps, args.eval_batches, args.samples = 3, 1, 2
        args.extra = [
            *args.extra,
            "--data.short_batch_size=2",
            "--data.long_batch_size=1",
            "--data.val_batch_size=2",
            "--model.model.dim=16",
            "--model.model.heads=4",
            "--model.model.kv_heads=2",
            "--model.model.depth=2",
            "--model.model.k_max=4",
            "--model.model.zero_init_output=false",
        ]  # untrained outputs must depend on K
    report = {
        "benchmark": "quality",
        "machine": machine_info(torch.device("cpu"), threads),
        "smoke": args.smoke,
        "steps": args.steps,
        "samples": args.samples,
        "config": str(args.config),
        "extra": args.extra,
        "actions": args.actions,
        "models": {},
    }
    root = args.workdir
    worlds = {"given": [False], "hidden": [True], "both": [False, True]}[args.actions]
    for hide in worlds:
        for kind, overrides in (("shortcut", []), ("flow_only", FLOW_ONLY)):
            name = kind + ("_no_actions" if hide else "")
            module, data, seconds = train(args, overrides, root / name, hide_actions=hide)
            start = time.perf_counter()
            scores = evaluate(module, data, args, flow_only=kind == "flow_only")
            report["steps"] = module.global_step
            report["models"][name] = {
                "overrides": overrides,
                "actions_hidden": hide,
                "train_seconds": seconds,
                "eval_seconds": time.perf_counter() - start,
                "k_max": module.config.k_max,
                "scores": scores,
            }
            print(
                f"{name}: {module.global_step} steps in {seconds:.0f} s; ES ratio "
                + ", ".join(f"{k}: {v:.3f}" for k, v in scores.items() if k.startswith("es_ratio")),
                flush=True,
            )
    report["summary"] = summary(report)
    if args.plot:
        plot(report, args.plot)
    return report


def summary(report: dict) -> dict:
    out = {}
    for name, model in report["models"].items():
        s, k_max = model["scores"], model["k_max"]
        out[f"{name}_es_K4_over_Kmax"] = s["es_k4"] / s[f"es_k{k_max}"] if "es_k4" in s else None
    return out


def plot(report: dict, path: Path) -> None:
    """ES ratio (ES / copy-last ES) against K, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, model in report["models"].items():
        ks = sorted(int(k[len("es_ratio_k") :]) for k in model["scores"] if k.startswith("es_ratio_k"))
        style = "--" if model.get("actions_hidden") else "-"
        ax.plot(ks, [model["scores"][f"es_ratio_k{k}"] for k in ks], style, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampling steps K per frame")
    ax.set_ylabel("ES / ES(copy-last)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def print_report(report: dict) -> None:
    print(
        f"quality: {report['steps']} steps per model, {report['samples']} samples per context "
        "(energy score of the rollouts / ES of copy-last; lower is better)"
    )
    for name, model in report["models"].items():
        s = model["scores"]
        ks = sorted(int(k[len("es_ratio_k") :]) for k in s if k.startswith("es_ratio_k"))
        print(
            f"{name:>10}: "
            + "  ".join(f"K={k}: {s[f'es_ratio_k{k}']:.3f}" for k in ks)
            + (f"  object acc K=4: {s['object_accuracy_k4']:.2f}" if "object_accuracy_k4" in s else "")
        )
    print("summary:", {k: round(v, 3) for k, v in report["summary"].items() if v is not None})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per model (default: the config's)"
    )
    parser.add_argument("--samples", type=int, default=4, help="rollout samples per context (energy score)")
    parser.add_argument(
        "--eval-batches", type=int, default=4, help="held-out batches of val_batch_size windows"
    )
    parser.add_argument("--config", type=Path, default=QUICKSTART)
    parser.add_argument("--extra", nargs="*", default=[], help="more CLI overrides for both models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation noise")
    parser.add_argument(
        "--actions",
        choices=("given", "hidden", "both"),
        default="both",
        help="train and roll out with the actions (a deterministic world), without them (the random policy "
        "makes the future uncertain), or both",
    )
    parser.add_argument("--workdir", type=Path, default=RESULTS_DIR / "quality_runs")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "quality.png")
    return parse_benchmark_args(parser, argv)


def main(argv=None) -> dict:
    return run_benchmark("quality", parse_args, run, print_report, argv)


if __name__ == "__main__":
    main()
