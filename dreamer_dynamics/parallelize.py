"""Scale plumbing in one place, after torchtitan's ``parallelize``: activation checkpointing,
``torch.compile`` and FSDP2 sharding of a ``DynamicsTransformer``, plus gradient norms and clipping that are
right under sharding.

``model/`` stays a plain ``nn.Module``: ``DynamicsConfig.activation_checkpointing`` and ``compile_blocks``
are only flags, read here. ``DynamicsModule.configure_model`` calls ``parallelize_model`` (Lightning runs
that hook once the strategy is known, with the device mesh under ``ModelParallelStrategy``); a plain PyTorch
loop calls it itself. The order is torchtitan's: checkpointing, then compile, then sharding (docs/design.md
§4, §7).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dreamer_dynamics.model.transformer import DynamicsTransformer


# ------------------------------------------------------------------------------------------ model wrapping
class _CheckpointedForward:
    """A block's ``forward`` recomputed in backward: ``checkpoint`` only where it saves memory (training with
    autograd on); teacher passes, validation and rollouts run the plain forward.

    Installed as the block's instance ``forward``: parameter names, ``state_dict`` keys and the block's type
    stay the same (FSDP wrap policies and checkpoints see an ordinary ``Block``), and a deep copy (EMA)
    copies the bound block with it."""

    def __init__(self, forward: Any) -> None:
        self.forward = forward  # the block's bound forward method

    def __call__(self, *args: Any) -> Any:
        if self.forward.__self__.training and torch.is_grad_enabled():
            return checkpoint(self.forward, *args, use_reentrant=False)
        return self.forward(*args)


def apply_activation_checkpointing(model: DynamicsTransformer) -> None:
    """Recompute every block in backward instead of storing its activations (idempotent)."""
    for block in model.blocks:
        if not isinstance(block.__dict__.get("forward"), _CheckpointedForward):
            block.forward = _CheckpointedForward(block.forward)


def is_checkpointed(block: nn.Module) -> bool:
    return isinstance(block.__dict__.get("forward"), _CheckpointedForward)


def apply_compile(model: DynamicsTransformer) -> None:
    """``torch.compile`` every block on its own: one small graph shared by all blocks of a kind, compiled fast
    (idempotent: ``nn.Module.compile`` in place keeps parameter names)."""
    for block in model.blocks:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile()


def _fully_shard() -> tuple[Any, Any]:
    try:  # public in torch >= 2.6, the composable API before
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:  # pragma: no cover - torch 2.5
        from torch.distributed._composable.fsdp import FSDPModule, fully_shard
    return FSDPModule, fully_shard


def apply_fsdp(model: DynamicsTransformer, mesh: Any) -> None:
    """FSDP2: every block is its own ``fully_shard`` unit on the ``data_parallel`` mesh dimension (its weights
    are gathered just before it runs), then the root (embeddings, output head). Idempotent."""
    fsdp_module, fully_shard = _fully_shard()
    if isinstance(model.blocks[0], fsdp_module):  # sharded already (Lightning runs configure_model per stage)
        return
    for block in model.blocks:
        fully_shard(block, mesh=mesh["data_parallel"])
    fully_shard(model, mesh=mesh["data_parallel"])


def parallelize_model(
    model: DynamicsTransformer,
    *,
    mesh: Any = None,
    activation_checkpointing: bool | None = None,
    compile: bool | None = None,
) -> DynamicsTransformer:
    """Apply activation checkpointing, per-block compile and FSDP2 sharding in place; returns ``model``.

    ``activation_checkpointing`` / ``compile``: None = the model config's ``activation_checkpointing`` /
    ``compile_blocks``. ``mesh``: a device mesh with a ``data_parallel`` dimension (Lightning's
    ``ModelParallelStrategy``), None = no sharding. Safe to call again (each step is idempotent).
    """
    config = model.config
    if config.activation_checkpointing if activation_checkpointing is None else activation_checkpointing:
        apply_activation_checkpointing(model)
    if config.compile_blocks if compile is None else compile:
        apply_compile(model)
    if mesh is not None:
        apply_fsdp(model, mesh)
    return model


# ------------------------------------------------------------------------------------------ gradients
def is_fsdp(strategy: Any) -> bool:
    """Whether ``strategy`` is Lightning's ``FSDPStrategy`` (FSDP1: flat gradients sharded across ranks)."""
    if strategy is None:
        return False
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def _local_sum_of_squares(grads: list[Tensor]) -> Tensor:
    total = torch.zeros((), dtype=torch.float32, device=grads[0].device)
    for grad in grads:
        if hasattr(grad, "full_tensor"):  # DTensor (FSDP2 / ModelParallelStrategy): norm of the whole tensor
            grad = grad.full_tensor()
        total += grad.detach().float().square().sum()
    return total


def total_grad_norm(module: nn.Module, strategy: Any = None) -> Tensor:
    """L2 norm of all gradients of ``module`` as if concatenated (the quantity ``gradient_clip_val`` clips).

    Under DDP every rank holds the full, already averaged gradient, so the local norm is the global one. Under
    Lightning's ``FSDPStrategy`` each rank holds a shard of every flat gradient: the squares are summed across
    ranks. FSDP2 gradients are DTensors, whose ``full_tensor`` gathers them. Returns 0 when no parameter has a
    gradient.
    """
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    squares = _local_sum_of_squares(grads)
    if is_fsdp(strategy) and dist.is_available() and dist.is_initialized():
        dist.all_reduce(squares, op=dist.ReduceOp.SUM)
    return squares.sqrt()


def clip_gradients(
    module: Any,
    optimizer: torch.optim.Optimizer,
    gradient_clip_val: int | float | None = None,
    gradient_clip_algorithm: str | None = None,
) -> None:
    """The Trainer's ``gradient_clip_val`` for a LightningModule. Under ``FSDPStrategy`` clip by the norm over
    all shards through the FSDP root's ``clip_grad_norm_`` (Lightning's FSDP precision plugin refuses norm
    clipping: it has no root); everything else goes to ``LightningModule.clip_gradients``."""
    if not gradient_clip_val:
        return
    strategy = module.trainer.strategy
    if is_fsdp(strategy) and gradient_clip_algorithm in (None, "norm"):
        strategy.model.clip_grad_norm_(float(gradient_clip_val))
        return
    module.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


__all__ = [
    "apply_activation_checkpointing",
    "apply_compile",
    "apply_fsdp",
    "clip_gradients",
    "is_checkpointed",
    "is_fsdp",
    "parallelize_model",
    "total_grad_norm",
]
