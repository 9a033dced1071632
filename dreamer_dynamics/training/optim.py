"""Optimiser and learning-rate schedule defaults.

The paper does not give an optimiser (our choice, docs/design.md §10); we use the transformer-standard recipe:
AdamW(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01) with decay only on linear maps (not on norms, biases,
embedding tables or learned tokens), a linear warmup and a cosine decay to ``min_lr_ratio`` of the peak.

Both are injectable from YAML through LightningCLI's ``OptimizerCallable`` / ``LRSchedulerCallable``::

    model:
      optimizer:
        class_path: torch.optim.AdamW
        init_args: {lr: 3.0e-4, betas: [0.9, 0.95], weight_decay: 0.01}
      scheduler:
        class_path: dreamer_dynamics.training.WarmupCosineLR
        init_args: {warmup_steps: 1000}

``MuonAdamW`` (training/muon.py) is the other optimiser the package ships: Muon for the blocks' matrices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from dreamer_dynamics.training.muon import HIDDEN_MATRIX, ON_MUON

DEFAULT_LR = 3e-4
DEFAULT_BETAS = (0.9, 0.95)
DEFAULT_WEIGHT_DECAY = 0.01


def parameter_groups(module: nn.Module) -> list[dict]:
    """Split parameters into the blocks' hidden matrices, the other linear maps, and an undecayed group.

    Only the weights of ``nn.Linear`` maps are decayed. Norm gains, biases, embedding tables and learned
    tokens (``registers``, the action base token) are not: shrinking them towards zero changes what they
    represent instead of regularising a linear map. The two decayed groups carry no ``weight_decay`` key, so
    they use whatever the configured optimiser was given. Every group carries a ``hidden_matrix`` flag: True
    for the linear weights inside ``module.blocks`` (attention and MLP matrices), which ``MuonAdamW`` hands to
    Muon; AdamW and other optimisers ignore the key.
    """
    hidden_ids, linear_ids = set(), set()
    for block in getattr(module, "blocks", ()):
        hidden_ids.update(id(sub.weight) for sub in block.modules() if isinstance(sub, nn.Linear))
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            linear_ids.add(id(sub.weight))
    hidden, decay, no_decay = [], [], []
    for param in module.parameters():
        if not param.requires_grad:
            continue
        if id(param) in hidden_ids:
            hidden.append(param)
        else:
            (decay if id(param) in linear_ids else no_decay).append(param)
    return [
        {"params": hidden, HIDDEN_MATRIX: True},
        {"params": decay, HIDDEN_MATRIX: False},
        {"params": no_decay, "weight_decay": 0.0, HIDDEN_MATRIX: False},
    ]


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The logged rates: ``train/lr_adamw`` of the first group AdamW (or the configured optimiser) updates,
    ``train/lr_muon`` of the first group Muon updates (``MuonAdamW`` only)."""
    rates: dict[str, float] = {}
    for group in optimizer.param_groups:
        key = "train/lr_muon" if group.get(ON_MUON) else "train/lr_adamw"
        rates.setdefault(key, float(group["lr"]))
    return rates


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """AdamW with the package defaults (used when no ``optimizer`` is configured)."""
    return torch.optim.AdamW(params, lr=DEFAULT_LR, betas=DEFAULT_BETAS, weight_decay=DEFAULT_WEIGHT_DECAY)


class WarmupCosineLR(LambdaLR):
    """Linear warmup from 0 to the peak learning rate, then cosine decay to ``min_lr_ratio`` x peak.

    Stepped every optimiser step (``interval: step``). ``total_steps=None`` is filled in by ``DynamicsModule``
    from ``trainer.estimated_stepping_batches`` (the Trainer's ``max_steps``); when that is unknown (infinite)
    the rate stays at the peak after warmup. All state is plain numbers (weights-only loadable).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 1000,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"WarmupCosineLR: warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"WarmupCosineLR: min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, lr_lambda=self.lr_factor, last_epoch=last_epoch)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        total = self.total_steps
        if total is None or not math.isfinite(total) or total <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (total - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def state_dict(self) -> dict:
        # LambdaLR would store the bound method's __dict__; keep only plain numbers (weights-only safe).
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "lr_lambdas"})
