"""Muon for the transformer blocks' matrices, AdamW for every other parameter, as one optimiser.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks") replaces the momentum
update of a weight matrix by the nearest semi-orthogonal matrix (a Newton-Schulz iteration), so every
direction of the update moves at the same rate instead of a few dominant ones. It is meant for hidden
matrices only: the input projection, the output head, embedding tables, norm gains and biases stay on AdamW.
The quickstart uses it (its comparison with AdamW: docs/experiments.md). The paper names no optimiser; this is
our choice (docs/design.md §10).

One optimiser object, not two, so Lightning's automatic optimisation, gradient clipping, learning-rate
schedulers (which scale every group's ``lr`` by one factor: Muon's and AdamW's rates keep their ratio) and
checkpoints work unchanged. Which group is which comes from the ``hidden_matrix`` flag that
``parameter_groups`` sets::

    model:
      optimizer:
        class_path: dreamer_dynamics.training.MuonAdamW
        init_args: {lr: 3.0e-3, muon_lr: 0.02}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from dreamer_dynamics.errors import ConfigError

HIDDEN_MATRIX = "hidden_matrix"  # the parameter-group flag set by training.optim.parameter_groups
ON_MUON = "muon"  # the parameter-group flag MuonAdamW sets: True where Muon (not AdamW) updates the group


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on the groups flagged ``hidden_matrix``, ``torch.optim.AdamW`` on the others.

    Both inner optimisers work on this optimiser's own group dicts and share its ``state``, so
    ``param_groups``, ``state_dict()`` and ``load_state_dict()`` are the standard ones. Where Muon cannot run
    (torch < 2.9 has no ``torch.optim.Muon``; FSDP shards or flattens the matrices) every group uses AdamW at
    ``lr``, with a warning that says why. Each group records whether Muon updates it (``muon``), so a state
    saved with Muon is refused where Muon cannot run (and the other way round) instead of continuing with the
    other optimiser's state and rate.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 3e-3,  # AdamW's peak rate (input/output layers, embeddings, norms, biases)
        betas: tuple[float, float] = (0.9, 0.95),  # AdamW's moment decays
        weight_decay: float = 0.01,  # AdamW's decoupled weight decay (groups without their own value)
        eps: float = 1e-8,  # AdamW's epsilon
        fused: bool | None = None,  # AdamW's fused kernel (CPU and CUDA, torch >= 2.4)
        muon_lr: float = 0.02,  # Muon's peak rate: the spectral norm of one update of a square matrix
        muon_momentum: float = 0.95,  # Muon's (Nesterov) momentum
        muon_weight_decay: float = 0.01,  # Muon's decoupled weight decay
        ns_steps: int = 5,  # Newton-Schulz iterations per update
        adjust_lr_fn: str | None = None,  # torch.optim.Muon's per-shape rate scaling (None = "original")
    ) -> None:
        groups = [dict(group) if isinstance(group, dict) else group for group in params]
        if not groups or not all(isinstance(group, dict) and HIDDEN_MATRIX in group for group in groups):
            raise ValueError(
                "MuonAdamW: expects parameter groups that each carry a 'hidden_matrix' flag, as "
                "dreamer_dynamics.training.parameter_groups(model) returns them; got plain parameters or "
                "unflagged groups"
            )
        self.muon_problem = self._muon_problem(groups)
        self.muon_active = self.muon_problem is None
        if self.muon_problem is not None:
            warnings.warn(f"MuonAdamW: {self.muon_problem}; every parameter uses AdamW at lr", stacklevel=2)
        for group in groups:
            group[ON_MUON] = bool(group[HIDDEN_MATRIX] and self.muon_active)
            if group[ON_MUON]:
                group.setdefault("lr", muon_lr)
                group.setdefault("weight_decay", muon_weight_decay)
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay})
        self._muon_options = {
            "momentum": muon_momentum,
            "nesterov": True,
            "ns_steps": ns_steps,
            "adjust_lr_fn": adjust_lr_fn,
        }
        self._adamw_options = {"betas": betas, "eps": eps, "fused": fused}
        self._build_inner()

    @staticmethod
    def _muon_problem(groups: list[dict[str, Any]]) -> str | None:
        """Why Muon cannot run on the flagged groups here, or None."""
        if not hasattr(torch.optim, "Muon"):
            return f"torch {torch.__version__} has no torch.optim.Muon (torch >= 2.9)"
        hidden = [p for group in groups if group[HIDDEN_MATRIX] for p in group["params"]]
        if any(type(p).__name__ == "DTensor" or p.ndim != 2 for p in hidden):
            # FSDP shards or flattens the matrices; Newton-Schulz needs each whole matrix on one device.
            return "the blocks' matrices are sharded or flattened (FSDP); Muon needs each whole matrix"
        return None

    def _build_inner(self) -> None:
        """(Re)create the inner optimisers on this optimiser's current group dicts and shared state."""
        hidden = [g for g in self.param_groups if g[ON_MUON]]
        rest = [g for g in self.param_groups if not g[ON_MUON]]
        self._inner: list[torch.optim.Optimizer] = []
        if any(g["params"] for g in hidden):
            self._inner.append(torch.optim.Muon(hidden, **self._muon_options))
        if any(g["params"] for g in rest):
            self._inner.append(torch.optim.AdamW(rest, **self._adamw_options))
        for inner in self._inner:
            inner.state = self.state  # one state dict: the standard state_dict() saves both

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in self._inner:
            inner.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = [bool(group.get(ON_MUON)) for group in state_dict["param_groups"]]
        here = [group[ON_MUON] for group in self.param_groups]
        if len(saved) == len(here) and saved != here:  # other group counts: torch's own error
            if any(saved):
                raise ConfigError(
                    f"MuonAdamW: the optimiser state was saved with Muon on the blocks' matrices, but here "
                    f"{self.muon_problem}; resume where Muon runs (torch >= 2.9, not FSDP)"
                )
            raise ConfigError(
                "MuonAdamW: the optimiser state was saved without Muon (every group on AdamW, torch < 2.9 or "
                "FSDP), but Muon runs here; resume where it was saved"
            )
        super().load_state_dict(state_dict)  # replaces the group dicts and the state: relink the inner ones
        self._build_inner()
