"""Where a checkpoint's rollouts of the built-in world go wrong: accuracy per object and per generated frame.

The validation figures (``val/rollout_es_ratio_k4``, ``val/object_accuracy_k4``) say how good rollouts are;
this says why they are not better. For one checkpoint it rolls out ``--contexts`` held-out windows (4 context
frames, 8 generated, ``--samples`` samples each, the generator seeded) and reports, for each K:

* the ES ratio (energy score ÷ copy-last), the share of the error that is sample spread, and the object
  accuracy overall, per generated frame (does it fall with the horizon: compounding errors) and per object
  (the steered sprite, then each ball);
* the one-step accuracy: each frame predicted from the true frames before it (no compounding);
* for each ball, how far the one-step prediction lands from the truth and from the previous frame, in
  pixels (Chebyshev): "1 from the previous frame, 2 from the truth" is a ball moved one pixel the wrong way
  (its velocity misread); large distances are a ball lost;
* against the world's oracle (samples of the true future, docs/data.md): its own ES (the floor), the ES of its
  mean (the blur baseline) and each K's excess, (ES - oracle ES) / (copy-last ES - oracle ES), in the ES
  units (dataset units, like the validation figures). Pass ``--world stochastic`` for a checkpoint trained
  there (the held-out windows are then that world's).

    python -m benchmarks.rollout_errors runs/quickstart/tensorboard/version_0/checkpoints/last.ckpt
    python -m benchmarks.rollout_errors CKPT --contexts 64 --steps 1 4 16
    python -m benchmarks.rollout_errors CKPT --fresh-episodes 64 --contexts 320 --steps 4   # ~1 minute
    python -m benchmarks.rollout_errors CKPT --world stochastic
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import parse_benchmark_args, pin_threads, run_benchmark
from dreamer_dynamics.data import DynamicsDataModule
from dreamer_dynamics.data.building.worlds import ToyDatasetConfig, builtin_datamodule
from dreamer_dynamics.model import rollout
from dreamer_dynamics.module import DynamicsModule
from dreamer_dynamics.training.evaluation import sample_rollouts
from dreamer_dynamics.training.scores import energy_score, oracle_scores

CONTEXT, HORIZON = 4, 8


def run(args: argparse.Namespace) -> dict:
    pin_threads(args.threads)
    device = torch.device(args.device)
    module = DynamicsModule.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=True)
    module.eval().model.to(device)  # rollouts on `device`; units, decoding and scoring on the CPU
    fresh = {}  # --fresh-episodes: contexts from new episodes of another seed, all of them held out
    if args.fresh_episodes:
        fresh = dict(
            toy=ToyDatasetConfig(episodes=args.fresh_episodes, seed=args.fresh_seed), val_fraction=0.0
        )
    settings = dict(
        val_length=CONTEXT + HORIZON,
        val_batch_size=args.contexts,
        val_batches=1,
        standardize=False,  # dataset units; the checkpoint's own statistics make model units
        **fresh,
    )
    if args.root:
        data = DynamicsDataModule(root=args.root, **settings)
    else:
        data = builtin_datamodule(args.world, **settings)
    references = data.references  # the object locator and oracle its description names
    locate = references.object_locator
    if locate is None:
        raise SystemExit(f"{data.root}: not the built-in world (no object locator)")
    batch = next(iter(data.val_dataloader()))
    latent_units = module.model.latent_units
    z = latent_units.standardize(batch["latents"])
    actions = {k: v for k, v in batch.items() if k.startswith("actions")}
    context, target = z[:, :CONTEXT], z[:, CONTEXT:]
    units = latent_units.destandardize
    truth = locate(units(target))  # (B, H, objects, 2)
    copy_last = (units(target) - units(context[:, -1:])).flatten(2).norm(dim=-1).mean()
    generator = torch.Generator(device).manual_seed(args.seed)

    def roll(ctx: torch.Tensor, horizon: int, k: int, acts: dict) -> torch.Tensor:
        noise = module.hparams.rollout.context_noise
        acts = {name: a.to(device) for name, a in acts.items()}
        return rollout(
            module.model,
            ctx.to(device),
            horizon,
            num_steps=k,
            context_noise=noise,
            generator=generator,
            **acts,
        ).cpu()

    report = {"benchmark": "rollout_errors", "checkpoint": str(args.checkpoint), "contexts": len(z), "k": {}}
    oracle = None
    if references.oracle is not None:  # the floor and the blur baseline, on the same frames and units
        figures = oracle_scores(references.oracle, batch, CONTEXT, units(target), args.samples)
        oracle = {name: float(value.mean()) for name, value in figures.items()}
        report["oracle"] = oracle
    with torch.no_grad():
        on_device = {name: a.to(device) for name, a in actions.items()}
        noise = module.hparams.rollout.context_noise
        sampled = sample_rollouts(
            module.model, context.to(device), HORIZON, on_device, args.steps, args.samples, generator, noise
        )
        for k, samples in sampled.items():  # (S, B, H, N_b, D_b)
            samples = samples.cpu()
            error, spread = energy_score(units(samples), units(target))
            hits = (locate(units(samples)) - truth).abs().amax(-1) <= 1  # (S, B, H, objects)
            report["k"][k] = {
                "es_ratio": float((error - spread).mean() / copy_last),
                "es": float((error - spread).mean()),
                "spread_share": float(spread.mean() / error.mean()),
                "object_accuracy": float(hits.all(-1).float().mean()),
                "accuracy_per_frame": hits.all(-1).float().mean((0, 1)).tolist(),
                "accuracy_per_object": hits.float().mean((0, 1, 2)).tolist(),
            }
            if oracle is not None:
                floor = oracle["oracle_es"]
                report["k"][k]["excess"] = (report["k"][k]["es"] - floor) / max(
                    float(copy_last) - floor, 1e-12
                )
        one_step = {}  # K -> positions [B, H, objects, 2] of frames predicted from the true frames before
        for k in args.steps:
            one_step[k] = torch.stack(
                [
                    locate(units(roll(z[:, :t], 1, k, {n: a[:, : t + 1] for n, a in actions.items()})))[:, 0]
                    for t in range(CONTEXT, CONTEXT + HORIZON)
                ],
                1,
            )
            hits = (one_step[k] - truth).abs().amax(-1) <= 1  # (B, H, objects)
            report["k"][k]["one_step_accuracy"] = float(hits.all(-1).float().mean())
            report["k"][k]["one_step_per_object"] = hits.float().mean((0, 1)).tolist()
        moved = one_step[max(args.steps)]
        previous = locate(units(z[:, CONTEXT - 1 : -1]))
        to_truth, to_previous = ((moved - p).abs().amax(-1).clamp(max=5) for p in (truth, previous))
        report["ball_distances"] = {
            f"ball_{i}": {
                "to_truth": torch.bincount(to_truth[..., i].flatten(), minlength=6).tolist(),
                "to_previous": torch.bincount(to_previous[..., i].flatten(), minlength=6).tolist(),
            }
            for i in range(1, truth.shape[-2])
        }
    return report


def print_report(report: dict) -> None:
    print(f"{report['checkpoint']}: {report['contexts']} held-out contexts")
    oracle = report.get("oracle")
    if oracle:
        print(
            f"oracle ES {oracle['oracle_es']:.3f} (the floor)  "
            f"ES of its mean {oracle['oracle_mean_es']:.3f} (blur)"
        )
    for k, r in report["k"].items():
        excess = f"  excess {r['excess']:.3f}" if "excess" in r else ""
        print(
            f"K={k:<3} ES {r['es']:.3f}  ES ratio {r['es_ratio']:.3f}{excess}  "
            f"spread/error {r['spread_share']:.2f}  object acc {r['object_accuracy']:.1%}  "
            f"one-step {r['one_step_accuracy']:.1%}"
        )
        print("      per frame  " + " ".join(f"{v:.2f}" for v in r["accuracy_per_frame"]))
        print("      per object " + " ".join(f"{v:.2f}" for v in r["accuracy_per_object"]))
    for ball, d in report["ball_distances"].items():
        print(f"{ball} one-step distance 0..5+ px: to truth {d['to_truth']}  to previous {d['to_previous']}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--root", default=None, help="dataset root (default: the built-in world)")
    parser.add_argument(
        "--world",
        default="deterministic",
        choices=["deterministic", "stochastic"],
        help="the built-in world (docs/data.md), when --root is not given",
    )
    parser.add_argument("--contexts", type=int, default=64, help="held-out windows")
    parser.add_argument("--samples", type=int, default=4, help="rollout samples per context")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 16], help="K values")
    parser.add_argument(
        "--fresh-episodes",
        type=int,
        default=0,
        help="score contexts from this many newly generated episodes (5 contexts each) instead of the "
        "held-out split (~100 contexts)",
    )
    parser.add_argument("--fresh-seed", type=int, default=12345, help="seed of the fresh episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the rollouts run (cuda: a GPU)")
    return parse_benchmark_args(parser, argv, smoke=False)


def main(argv=None) -> dict:
    return run_benchmark("rollout_errors", parse_args, run, print_report, argv)


if __name__ == "__main__":
    main()
