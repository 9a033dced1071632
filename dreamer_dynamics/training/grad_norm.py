"""Global gradient norm that is right under DDP, FSDP (flat shards) and DTensor-sharded (FSDP2) training."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _local_sum_of_squares(grads: list[Tensor]) -> Tensor:
    total = torch.zeros((), dtype=torch.float32, device=grads[0].device)
    for grad in grads:
        if hasattr(grad, "full_tensor"):  # DTensor (FSDP2 / ModelParallelStrategy): norm of the whole tensor
            grad = grad.full_tensor()
        total += grad.detach().float().square().sum()
    return total


def total_grad_norm(module: nn.Module, strategy=None) -> Tensor:
    """L2 norm of all gradients of ``module`` as if concatenated (the quantity ``gradient_clip_val`` clips).

    Under DDP every rank holds the full, already averaged gradient, so the local norm is the global one. Under
    Lightning's ``FSDPStrategy`` each rank holds a shard of every flat gradient: the squares are summed across
    ranks. Returns 0 when no parameter has a gradient.
    """
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    squares = _local_sum_of_squares(grads)
    if is_fsdp(strategy) and dist.is_available() and dist.is_initialized():
        dist.all_reduce(squares, op=dist.ReduceOp.SUM)
    return squares.sqrt()


def is_fsdp(strategy) -> bool:
    """Whether ``strategy`` is Lightning's ``FSDPStrategy`` (gradients sharded across ranks)."""
    if strategy is None:
        return False
    try:
        from lightning.pytorch.strategies import FSDPStrategy
    except ImportError:  # pragma: no cover - very old Lightning
        return False
    return isinstance(strategy, FSDPStrategy)
