"""Proper scoring of sampled rollouts: the energy score, and the point-forecast baselines in the same units.

A rollout is a sample from the model's predictive distribution over the future. Judging one sample by its
squared error rewards blur: E||X - y||^2 = ||E[X] - y||^2 + tr Var X, so the blurry mean of the samples scores
better than any sharp, correct sample. The energy score (Gneiting & Raftery 2007) is strictly proper: its
expectation is minimised only by the true predictive distribution,

    ES(P, y) = E||X - y|| - 1/2 E||X - X'||,   X, X' ~ P independent,

estimated per generated frame from S >= 2 samples (Euclidean norm over all of the frame's latents). For a
point forecast x (one sample, no spread) it is ||x - y||, so copy-last and context-mean baselines are scored
in the same units. A deterministic world that is learnt exactly scores 0.

Where the data have an oracle (the built-in world, data/building/oracle.py), the oracle's own energy score is
the floor a model can reach on the same frames (0 only for a deterministic world), and ``excess`` measures a
model between that floor and copy-last: (ES_model - ES_oracle) / (ES_copy_last - ES_oracle).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


def frame_distance(a: Tensor, b: Tensor, frame_dims: int = 2) -> Tensor:
    """Euclidean distance over the last ``frame_dims`` dims (a frame's N_b x D_b latents), in float32."""
    return (a.float() - b.float()).flatten(-frame_dims).norm(dim=-1)


def energy_score(samples: Tensor, target: Tensor, frame_dims: int = 2) -> tuple[Tensor, Tensor]:
    """Energy score of S samples per frame -> (error, spread), each shaped like ``target`` without its frame
    dims.

    samples: [S, *batch, *frame]; target: [*batch, *frame]. error = mean_s ||X_s - y||; spread =
    1/2 mean_{s != s'} ||X_s - X_s'|| (the unbiased "fair" estimator over distinct pairs, so a sampler that is
    exactly the truth's distribution has zero expected bias even for small S). ES = error - spread.
    """
    num = samples.shape[0]
    if num < 2:
        raise ValueError(f"energy_score needs >= 2 samples per forecast, got {num}")
    if samples.shape[1:] != target.shape:
        raise ValueError(
            f"energy_score: samples {tuple(samples.shape)} do not match target {tuple(target.shape)}"
        )
    error = frame_distance(samples, target.unsqueeze(0), frame_dims).mean(0)
    pairs = frame_distance(
        samples.unsqueeze(0), samples.unsqueeze(1), frame_dims
    )  # (S, S, *batch); diagonal 0
    spread = 0.5 * pairs.sum((0, 1)) / (num * (num - 1))
    return error, spread


@torch.no_grad()
def oracle_scores(
    oracle: Any,
    batch: dict[str, Tensor],
    context_frames: int,
    target: Tensor,
    samples: int,
    *,
    mean_samples: int = 32,
    seed: int = 0,
) -> dict[str, Tensor]:
    """The oracle's figures on the rollouts of an evaluation batch's first rows: per frame [B, H], in the
    units of ``target``, for ``RolloutScores.update(..., oracle=...)``.

    oracle: ``EvaluationReferences.oracle`` (``sample(episode, first, actions, samples, seed)`` -> latents
    [B, S, H, N_b, D_b] in the dataset's own units); batch: the evaluation batch, whose "episode", "start" and
    "actions_discrete" locate each window; context_frames: frames given before the first predicted one;
    target: the true future [B, H, N_b, D_b] of the batch's first B rows in the dataset's own units (what
    ``score_units`` returns); samples: the model's samples per context (its ES is estimated from as many).
    Returns "oracle_es": the energy score of ``samples`` oracle samples, the floor of the model's; and
    "oracle_mean_es": ||mean of ``mean_samples`` oracle samples - y||, the blur baseline (the average of the
    possible futures, scored as a point forecast like copy-last).
    """
    rows, horizon = target.shape[:2]
    first = batch["start"][:rows] + context_frames
    actions = batch["actions_discrete"][:rows, context_frames : context_frames + horizon]
    drawn = oracle.sample(batch["episode"][:rows], first, actions, max(samples, mean_samples), seed=seed)
    drawn = drawn.to(target.device).transpose(0, 1)  # (S, B, H, N_b, D_b)
    error, spread = energy_score(drawn[:samples], target)
    mean = drawn[:mean_samples].float().mean(0)
    return {"oracle_es": error - spread, "oracle_mean_es": frame_distance(mean, target)}


class RolloutScores(Metric):
    """Sums over generated frames, synchronised across ranks (sum reduction), for each K in ``rollout_steps``.

    Per K: ``es`` (energy score), ``error`` (E||X - y||), ``spread`` (1/2 E||X - X'||), ``mean_mse`` (MSE of
    the sample mean, per latent element), ``mse`` (single-sample MSE, per latent element: a secondary figure
    that rewards blur), and ``object_hits`` (frames whose objects all sit within one pixel of the truth, per
    sample; built-in world only). Baselines: ``copy_last`` (repeat the last context frame) and
    ``context_mean`` (the mean of the context frames), each scored ||x - y||. ``compute()`` returns means
    keyed by log name suffix, plus ``es_ratio_k{K}`` = ES / copy-last ES (below 1 beats copying; 0 is
    perfect). With the oracle's figures (``oracle_scores``): ``oracle_es``, ``oracle_mean_es`` and
    ``excess_k{K}`` = (ES - oracle ES) / (copy-last ES - oracle ES) (0 = as good as the true distribution, 1 =
    no better than copying the last frame).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, rollout_steps: list[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.rollout_steps = sorted({int(k) for k in rollout_steps})
        zero = torch.tensor(0.0, dtype=torch.float64)
        for name in (
            "copy_last",
            "context_mean",
            "baseline_frames",
            "oracle_es",
            "oracle_mean_es",
            "oracle_frames",
        ):
            self.add_state(name, default=zero.clone(), dist_reduce_fx="sum")
        for k in self.rollout_steps:
            for name in (
                "es",
                "error",
                "spread",
                "mean_mse",
                "mse",
                "frames",
                "object_hits",
                "object_frames",
            ):
                self.add_state(f"{name}_k{k}", default=zero.clone(), dist_reduce_fx="sum")

    def _add(self, name: str, value: Tensor) -> None:
        setattr(self, name, getattr(self, name) + value.detach().double().sum())

    def update(
        self,
        context: Tensor,
        target: Tensor,
        samples: dict[int, Tensor],
        object_hits: dict[int, Tensor] | None = None,
        oracle: dict[str, Tensor] | None = None,
    ) -> None:
        """One batch of rollouts. context [B, T_ctx, N_b, D_b]; target [B, H, N_b, D_b]; samples: K -> the
        rollouts with K steps [S, B, H, N_b, D_b]; object_hits: K -> bool [S, B, H], every object of the
        generated frame within one pixel of the truth (data with known objects only); oracle: the oracle's
        per-frame figures on these frames (``oracle_scores``; data with an oracle only)."""
        frames = torch.tensor(float(target.shape[0] * target.shape[1]))
        if oracle is not None:
            self._add("oracle_es", oracle["oracle_es"])
            self._add("oracle_mean_es", oracle["oracle_mean_es"])
            self._add("oracle_frames", frames)
        self._add("copy_last", frame_distance(context[:, -1:].expand_as(target), target))
        self._add(
            "context_mean", frame_distance(context.float().mean(1, keepdim=True).expand_as(target), target)
        )
        self._add("baseline_frames", frames)
        for k, generated in samples.items():
            error, spread = energy_score(generated, target)  # (B, H) each
            self._add(f"es_k{k}", error - spread)
            self._add(f"error_k{k}", error)
            self._add(f"spread_k{k}", spread)
            self._add(
                f"mean_mse_k{k}", (generated.float().mean(0) - target.float()).square().flatten(2).mean(-1)
            )
            self._add(f"mse_k{k}", (generated[0].float() - target.float()).square().flatten(2).mean(-1))
            self._add(f"frames_k{k}", frames)
            hits = (object_hits or {}).get(k)
            if hits is not None:
                self._add(f"object_hits_k{k}", hits.float())
                self._add(f"object_frames_k{k}", torch.tensor(float(hits.numel())))

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if self.baseline_frames > 0:
            out["es_copy_last"] = self.copy_last / self.baseline_frames
            out["es_context_mean"] = self.context_mean / self.baseline_frames
        if self.oracle_frames > 0:
            out["oracle_es"] = self.oracle_es / self.oracle_frames
            out["oracle_mean_es"] = self.oracle_mean_es / self.oracle_frames
        for k in self.rollout_steps:
            frames = getattr(self, f"frames_k{k}")
            if frames == 0:
                continue
            for name in ("es", "spread", "mean_mse", "mse"):
                out[f"{name}_k{k}"] = getattr(self, f"{name}_k{k}") / frames
            if "es_copy_last" in out:
                out[f"es_ratio_k{k}"] = out[f"es_k{k}"] / out["es_copy_last"].clamp_min(1e-12)
            if "oracle_es" in out and "es_copy_last" in out:
                floor = out["oracle_es"]  # the oracle's ES: 0 on a deterministic world
                room = (out["es_copy_last"] - floor).clamp_min(1e-12)
                out[f"excess_k{k}"] = (out[f"es_k{k}"] - floor) / room
            object_frames = getattr(self, f"object_frames_k{k}")
            if object_frames > 0:
                out[f"object_accuracy_k{k}"] = getattr(self, f"object_hits_k{k}") / object_frames
        return {name: value.float() for name, value in out.items()}


__all__ = ["RolloutScores", "energy_score", "frame_distance", "oracle_scores"]
