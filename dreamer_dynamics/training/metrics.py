"""Validation metrics as torchmetrics objects (synchronised across ranks by Lightning when logged).

* ``val/flow_loss_tau{lo}_{hi}``: per-frame flow loss ||x1_hat - z1||^2 at the finest step d_min, bucketed by
  the signal level tau of the frame (tau = 0 pure noise, tau = 1 clean; docs/design.md §2): where along the
  path the model is weak; low tau (mostly noise) is the hardest.
* ``val/bootstrap_loss``: mean per-frame bootstrap loss (Eq. 7) over frames with d > d_min.
* ``val/loss``: the ramp-weighted shortcut-forcing loss (docs/design.md §3.6), not normalised.
* ``val/rollout_*``: K-step rollouts scored with the energy score over several samples (``scores.py``), next
  to the copy-last and context-mean baselines; logged at epoch end by ``Evaluator.epoch_figures``.
* ``val/oracle_es``, ``val/oracle_mean_es``, ``val/rollout_excess_k{K}``: the same frames against the built-in
  world's oracle (``scores.oracle_scores``), where the data have one.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchmetrics import MeanMetric

from dreamer_dynamics.training.scores import RolloutScores


def bucket_names(num_buckets: int) -> list[str]:
    """Metric-name suffixes of equal-width tau buckets, e.g. ``tau0.00_0.25``."""
    edges = [i / num_buckets for i in range(num_buckets + 1)]
    return [f"tau{edges[i]:.2f}_{edges[i + 1]:.2f}" for i in range(num_buckets)]


def _masked_mean_update(metric: MeanMetric, values: Tensor, mask: Tensor) -> None:
    """Update with the masked entries; an empty mask still counts as an update (weight 0) so that every rank
    logs the same set of metrics and the cross-rank sync never waits on a rank that had no such frame."""
    values = values.detach().float().flatten()
    metric.update(values, weight=mask.flatten().to(values.dtype))


class ValidationMetrics(nn.Module):
    """Every validation (or test) metric: ``as_dict()`` gives the loss metrics ``{log name: Metric}`` for
    ``log_dict``; ``rollout`` holds the rollout scores (logged from their ``compute()`` at epoch end)."""

    def __init__(self, rollout_steps: list[int], num_tau_buckets: int = 4) -> None:
        super().__init__()
        if num_tau_buckets < 1:
            raise ValueError(f"num_tau_buckets must be >= 1, got {num_tau_buckets}")
        self.num_tau_buckets = num_tau_buckets
        self.rollout_steps = sorted(set(int(k) for k in rollout_steps))
        self.loss = MeanMetric()
        self.bootstrap_loss = MeanMetric()
        self.flow_loss = nn.ModuleList(MeanMetric() for _ in range(num_tau_buckets))
        self.rollout = RolloutScores(self.rollout_steps)

    def update_losses(self, loss: Tensor, per_frame: Tensor, bootstrap: Tensor) -> None:
        """loss: scalar; per_frame: [B, T] unweighted L_t; bootstrap: [B, T] bool (frames with d > d_min)."""
        self.loss.update(loss.detach())
        _masked_mean_update(self.bootstrap_loss, per_frame, bootstrap)

    def update_flow_buckets(self, per_frame: Tensor, tau: Tensor) -> None:
        """per_frame, tau: [B, T] from a pass with d = d_min everywhere; tau in [0, 1)."""
        index = (tau * self.num_tau_buckets).floor().long().clamp(0, self.num_tau_buckets - 1)  # (B, T)
        for i, metric in enumerate(self.flow_loss):
            _masked_mean_update(metric, per_frame, index == i)

    def as_dict(self, prefix: str = "val") -> dict[str, object]:
        """Metrics that received data in this epoch, keyed by their log name."""
        named: dict[str, object] = {f"{prefix}/loss": self.loss}
        named[f"{prefix}/bootstrap_loss"] = self.bootstrap_loss
        for name, metric in zip(bucket_names(self.num_tau_buckets), self.flow_loss):
            named[f"{prefix}/flow_loss_{name}"] = metric
        return {name: metric for name, metric in named.items() if metric.update_called}
