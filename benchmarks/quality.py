"""Rollout quality against the sampling steps K (the paper's Fig. 8), on the stochastic built-in world.

Few-step sampling only shows where the future is uncertain: a perfect x-predictor of a deterministic world
outputs the true next frame from pure noise, and then one Euler step is as good as many. On the stochastic
world (``--data.world stochastic``: balls turn at random) a flow-only model's one-step sample is the blurred
mean of the possible futures, while a shortcut model learns to jump to one of them.

For each seed, a pair of models is trained by the quickstart recipe (``lightning_configs/quickstart.yaml``)
at equal training compute:

* **shortcut**: the recipe (shortcut forcing, docs/design.md §3);
* **flow-only**: every frame at d_min, no bootstrap term (plain diffusion forcing). Its steps are cheaper (no
  teacher passes), so it trains ``warmup + (steps - warmup) * c`` steps, where c is the cost of a shortcut
  step over a flow-only step, timed round-robin on this machine before training. It never saw another step
  size, so it is sampled with the d_min label at every K.

Both models of a pair share their initial weights, data order and noise stream (``seed_everything``); seeds
differ in those, never in the data. Each model then rolls out held-out contexts from newly generated
episodes of the same world (``--contexts``, 4 context frames, ``--samples`` samples each) over the whole
horizon with K = 1, 2, 4, ..., K_max, scored with the energy score over the first 8 frames and over all of
them, against the oracle (``data/building/oracle.py``): its own ES (the floor), the excess (0 = the oracle,
1 = copy-last), and the blur baseline (the mean of 32 oracle samples as a point forecast).

    python -m benchmarks.quality                   # 3 seeds x 2 models; time: docs/benchmarks.md
    python -m benchmarks.quality --seeds 0         # one pair
    python -m benchmarks.quality --combine a.json b.json c.json   # one report from per-seed runs
    python -m benchmarks.quality --smoke           # seconds: checks the logic only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

from benchmarks.common import (
    RESULTS_DIR,
    machine_info,
    parse_benchmark_args,
    pin_threads,
    run_benchmark,
    time_interleaved,
)
from dreamer_dynamics.cli import DynamicsCLI
from dreamer_dynamics.data import DynamicsDataModule
from dreamer_dynamics.data.building.worlds import ToyDatasetConfig, builtin_datamodule
from dreamer_dynamics.module import DynamicsModule
from dreamer_dynamics.objective import shortcut_forcing_loss
from dreamer_dynamics.training.evaluation import in_data_units, sample_rollouts
from dreamer_dynamics.training.optim import parameter_groups
from dreamer_dynamics.training.scores import RolloutScores, oracle_scores

QUICKSTART = Path(__file__).resolve().parent.parent / "lightning_configs" / "quickstart.yaml"
FLOW_ONLY = ["--model.objective.d_min_share=1.0", "--model.objective.bootstrap_warmup_steps=0"]
CONTEXT = 4  # context frames of every evaluated rollout
SHORT_HORIZON = 8  # frames of the short figure (the first frames of the long rollouts)
TARGETS = {  # paper Fig. 8, on this world
    "shortcut_k1_over_kmax": 1.10,  # at most
    "shortcut_k4_over_kmax": 1.05,  # at most
    "flow_k1_over_kmax": 1.25,  # at least
}


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


def build(
    args: argparse.Namespace, overrides: list[str], root: Path, seed: int, steps: int | None
) -> DynamicsCLI:
    """The real CLI stack (config, data links, callbacks) for one model, not yet fitted."""
    cli_args = [
        f"--config={args.config}",
        f"--seed_everything={seed}",
        f"--data.world={args.world}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=0",
        *([f"--trainer.max_steps={steps}"] if steps else []),
        *args.extra,
        *overrides,
    ]
    with mock.patch.object(
        sys, "argv", sys.argv[:1]
    ):  # LightningCLI reads only `args`, not this script's flags
        return DynamicsCLI(args=cli_args, run=False)


def step_cost_ratio(cli: DynamicsCLI, repeat: int) -> float:
    """Seconds of a shortcut-forcing training step over a flow-only one (every frame at d_min, no teacher) of
    the same model, optimiser and batches, timed round-robin (best of ``repeat``)."""
    module, data = cli.model, cli.datamodule
    data.setup("fit")
    batches = iter(data.train_dataloader())
    batch = next(batches)
    optimizer = module.optimizer_factory(parameter_groups(module.model))
    generator = torch.Generator().manual_seed(0)

    def step(flow_only: bool) -> None:
        tau, d = module.sample_signal_and_step(
            batch, generator
        )  # a generator given: the schedule after warm-up
        if flow_only:
            d = torch.full_like(d, module.config.d_min)
        output = shortcut_forcing_loss(
            module.model,
            batch["latents"],
            tau,
            d,
            d_min=module.config.d_min,
            z0=module.sample_noise(batch, generator),
            weight=module.loss_weight,
            image_rows=module.sample_image_rows(batch, generator),
            **module.conditioning(batch),
        )
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timing = time_interleaved({"shortcut": lambda: step(False), "flow": lambda: step(True)}, repeat=repeat)
    return timing["shortcut"].best / timing["flow"].best


def fit(cli: DynamicsCLI) -> tuple[DynamicsModule, float]:
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.model.eval(), time.perf_counter() - start


def evaluation_data(args: argparse.Namespace, horizon: int) -> DynamicsDataModule:
    """Contexts from newly generated episodes of the trained world (all held out), in the dataset's units."""
    return builtin_datamodule(
        args.world,
        ToyDatasetConfig(episodes=args.contexts, seed=args.eval_data_seed),
        val_fraction=0.0,
        val_length=CONTEXT + horizon,
        val_batch_size=args.contexts,
        val_batches=1,
        standardize=False,  # each module's own statistics make its model units
    )


@torch.no_grad()
def evaluate(module: DynamicsModule, data: DynamicsDataModule, args, horizon: int, flow_only: bool) -> dict:
    """Scores per K over the first ``SHORT_HORIZON`` frames and over all ``horizon`` frames (data units)."""
    steps = [2**i for i in range(module.config.k_max.bit_length())]  # 1, 2, 4, ..., K_max
    net = StepLabel(module.model, module.config.d_min) if flow_only else module.model
    batch = next(iter(data.val_dataloader()))
    units = module.model.latent_units
    z = units.standardize(batch["latents"])
    context, target = z[:, :CONTEXT], z[:, CONTEXT:]
    cond = module.conditioning(batch)
    generator = torch.Generator().manual_seed(args.eval_seed)
    noise = module.hparams.rollout.context_noise
    generated = sample_rollouts(net, context, horizon, cond, steps, args.samples, generator, noise)
    ctx_units, target_units, generated_units = in_data_units(units, context, target, generated)
    oracle = oracle_scores(
        data.references.oracle, batch, CONTEXT, target_units, args.samples, seed=args.eval_seed
    )
    out = {}
    for length in sorted({min(SHORT_HORIZON, horizon), horizon}):
        scores = RolloutScores(steps)
        scores.update(
            ctx_units,
            target_units[:, :length],
            {k: g[:, :, :length] for k, g in generated_units.items()},
            oracle={name: value[:, :length] for name, value in oracle.items()},
        )
        out[f"h{length}"] = {name: float(value) for name, value in scores.compute().items()}
    return out


def over_kmax(scores: dict, k: int, k_max: int) -> float:
    return scores[f"es_k{k}"] / scores[f"es_k{k_max}"]


def combine(paths: list[Path]) -> dict:
    """One report from the reports of runs over disjoint seeds (e.g. one process per seed)."""
    reports = [json.loads(Path(path).read_text()) for path in paths]
    report = {**reports[0], "seeds": {}, "cost_ratio": [r["cost_ratio"] for r in reports], "combined": paths}
    for part in reports:
        report["seeds"].update(part["seeds"])
    report["summary"] = summary(report)
    return report


def run(args: argparse.Namespace) -> dict:
    if args.combine:
        report = combine(args.combine)
        if args.plot:
            plot(report, args.plot)
        return report
    threads = pin_threads(args.threads)
    if args.smoke:
        args.steps, args.contexts, args.samples, args.horizon, args.seeds, args.repeat = 4, 4, 2, 4, [0], 1
        args.extra = [
            *args.extra,
            "--data.short_batch_size=2",
            "--data.long_batch_size=1",
            "--data.toy.episodes=24",
            "--model.model.dim=16",
            "--model.model.heads=4",
            "--model.model.kv_heads=2",
            "--model.model.depth=2",
            "--model.model.k_max=4",
            "--model.model.zero_init_output=false",  # untrained outputs must depend on K
            "--model.objective.bootstrap_warmup_steps=2",
        ]
    report = {
        "benchmark": "quality",
        "machine": machine_info(torch.device("cpu"), threads),
        "smoke": args.smoke,
        "world": args.world,
        "config": str(args.config),
        "extra": args.extra,
        "samples": args.samples,
        "contexts": args.contexts,
        "horizon": args.horizon,
        "seeds": {},
    }
    data = evaluation_data(args, args.horizon)
    ratio = None
    for seed in args.seeds:
        shortcut = build(args, [], args.workdir / f"shortcut_{seed}", seed, args.steps)
        if ratio is None:
            ratio = args.cost_ratio or step_cost_ratio(
                build(args, [], args.workdir / "calibration", seed, args.steps), args.repeat
            )
            report["cost_ratio"] = round(ratio, 3)
        steps = shortcut.trainer.max_steps
        warmup = min(shortcut.model.objective.bootstrap_warmup_steps, steps)
        flow_steps = warmup + round((steps - warmup) * ratio)
        flow = build(args, FLOW_ONLY, args.workdir / f"flow_only_{seed}", seed, flow_steps)
        report["seeds"][seed] = {}
        for name, cli, flow_only in (("shortcut", shortcut, False), ("flow_only", flow, True)):
            module, seconds = fit(cli)
            start = time.perf_counter()
            scores = evaluate(module, data, args, args.horizon, flow_only)
            report["k_max"] = module.config.k_max
            report["seeds"][seed][name] = {
                "steps": module.global_step,
                "train_seconds": seconds,
                "eval_seconds": time.perf_counter() - start,
                "scores": scores,
            }
            short = scores[f"h{min(SHORT_HORIZON, args.horizon)}"]
            print(
                f"seed {seed} {name}: {module.global_step} steps in {seconds:.0f} s; "
                "ES(K)/ES(K_max) at 8 frames "
                + ", ".join(
                    f"K={k}: {over_kmax(short, k, module.config.k_max):.3f}"
                    for k in [2**i for i in range(module.config.k_max.bit_length())]
                ),
                flush=True,
            )
    report["summary"] = summary(report)
    if args.plot:
        plot(report, args.plot)
    return report


def spread(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value) of the per-seed figures."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def summary(report: dict) -> dict:
    """Per horizon: each model's ES(K)/ES(K_max) and excess at K = 1 and 4, and the per-pair differences
    (shortcut - flow-only), as mean and spread over the seeds; the targets' verdicts on the means."""
    k_max, out = report["k_max"], {}
    pairs = list(report["seeds"].values())
    for horizon in pairs[0]["shortcut"]["scores"]:
        figures: dict[str, list[float]] = {}
        for pair in pairs:
            for model in ("shortcut", "flow_only"):
                s = pair[model]["scores"][horizon]
                for k in (1, 4):
                    figures.setdefault(f"{model}_k{k}_over_kmax", []).append(over_kmax(s, k, k_max))
                    figures.setdefault(f"{model}_excess_k{k}", []).append(s[f"excess_k{k}"])
                figures.setdefault(f"{model}_excess_kmax", []).append(s[f"excess_k{k_max}"])
            a, b = pair["shortcut"]["scores"][horizon], pair["flow_only"]["scores"][horizon]
            for name, k in (("diff_es_k1", 1), ("diff_es_k4", 4), ("diff_es_kmax", k_max)):
                figures.setdefault(name, []).append(a[f"es_k{k}"] - b[f"es_k{k}"])
            figures.setdefault("oracle_es", []).append(a["oracle_es"])
            figures.setdefault("oracle_mean_es", []).append(a["oracle_mean_es"])
            figures.setdefault("es_copy_last", []).append(a["es_copy_last"])
        row = {name: spread(values) for name, values in figures.items()}
        row["targets"] = {
            "shortcut_k1_over_kmax": row["shortcut_k1_over_kmax"]["mean"] <= TARGETS["shortcut_k1_over_kmax"],
            "shortcut_k4_over_kmax": row["shortcut_k4_over_kmax"]["mean"] <= TARGETS["shortcut_k4_over_kmax"],
            "flow_k1_over_kmax": row["flow_only_k1_over_kmax"]["mean"] >= TARGETS["flow_k1_over_kmax"],
            "shortcut_k4_not_worse": row["diff_es_k4"]["mean"] <= 0,
        }
        out[horizon] = row
    return out


def plot(report: dict, path: Path) -> None:
    """Excess (0 = oracle, 1 = copy-last) against K at both horizons, one line per model and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizons = list(next(iter(report["seeds"].values()))["shortcut"]["scores"])
    fig, axes = plt.subplots(1, len(horizons), figsize=(4.6 * len(horizons), 3.4), squeeze=False)
    colours = {"shortcut": "tab:blue", "flow_only": "tab:orange"}
    for ax, horizon in zip(axes[0], horizons):
        for seed, pair in report["seeds"].items():
            for name, model in pair.items():
                s = model["scores"][horizon]
                ks = sorted(int(k[len("excess_k") :]) for k in s if k.startswith("excess_k"))
                label = name if seed == next(iter(report["seeds"])) else None
                ax.plot(
                    ks,
                    [s[f"excess_k{k}"] for k in ks],
                    marker="o",
                    color=colours[name],
                    alpha=0.7,
                    label=label,
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps K per frame")
        ax.set_ylabel("excess over the oracle (1 = copy-last)")
        ax.set_title(f"{horizon[1:]} generated frames")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def print_report(report: dict) -> None:
    k_max = report["k_max"]
    print(
        f"quality on the {report['world']} world: {len(report['seeds'])} seed(s), "
        f"{report['contexts']} contexts x "
        f"{report['samples']} samples; flow-only trains {report['cost_ratio']}x the shortcut model's "
        "post-warm-up steps (equal compute)"
    )
    for horizon, row in report["summary"].items():
        print(
            f"{horizon[1:]} frames: oracle ES {row['oracle_es']['mean']:.3f}, blur (oracle mean) "
            f"{row['oracle_mean_es']['mean']:.3f}, copy-last {row['es_copy_last']['mean']:.3f}"
        )
        for name in ("shortcut", "flow_only"):
            k1, k4 = row[f"{name}_k1_over_kmax"], row[f"{name}_k4_over_kmax"]
            print(
                f"  {name:>9}: ES(1)/ES({k_max}) {k1['mean']:.3f} ± {k1['sd']:.3f}, "
                f"ES(4)/ES({k_max}) {k4['mean']:.3f} ± {k4['sd']:.3f}, excess K=1 "
                f"{row[f'{name}_excess_k1']['mean']:.3f}, K=4 {row[f'{name}_excess_k4']['mean']:.3f}, "
                f"K={k_max} {row[f'{name}_excess_kmax']['mean']:.3f}"
            )
        print(
            "  shortcut - flow-only ES per pair: "
            + ", ".join(
                f"{name[len('diff_es_') :]}: {row[name]['mean']:+.4f} ± {row[name]['sd']:.4f}"
                for name in ("diff_es_k1", "diff_es_k4", "diff_es_kmax")
            )
        )
        print("  targets met:", row["targets"])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one model pair per seed")
    parser.add_argument(
        "--steps", type=int, default=None, help="shortcut training steps (default: the config's)"
    )
    parser.add_argument("--world", choices=("stochastic", "deterministic"), default="stochastic")
    parser.add_argument("--samples", type=int, default=4, help="rollout samples per context (energy score)")
    parser.add_argument("--contexts", type=int, default=64, help="held-out contexts, one per new episode")
    parser.add_argument("--horizon", type=int, default=32, help="generated frames (scored at 8 and at this)")
    parser.add_argument("--repeat", type=int, default=10, help="timed steps per variant for the cost ratio")
    parser.add_argument(
        "--cost-ratio",
        type=float,
        default=None,
        help="a shortcut step's cost over a flow-only step (default: timed here; give one measured on a "
        "quiet machine when seeds run side by side)",
    )
    parser.add_argument("--config", type=Path, default=QUICKSTART)
    parser.add_argument("--extra", nargs="*", default=[], help="more CLI overrides for both models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the rollout and oracle noise")
    parser.add_argument("--eval-data-seed", type=int, default=1, help="seed of the evaluation episodes")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        help="report the seeds of these JSON reports together",
    )
    parser.add_argument("--workdir", type=Path, default=RESULTS_DIR / "quality_runs")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "quality.png")
    return parse_benchmark_args(parser, argv)


def main(argv=None) -> dict:
    return run_benchmark("quality", parse_args, run, print_report, argv)


if __name__ == "__main__":
    main()
