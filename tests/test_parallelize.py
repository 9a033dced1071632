"""``dreamer_dynamics.parallelize``: activation checkpointing really recomputes blocks in backward (and only
in training with autograd), leaves names and types alone, survives the deep copy EMA makes, is idempotent."""

from __future__ import annotations

import copy

import torch

from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer
from dreamer_dynamics.model.transformer import Block
from dreamer_dynamics.parallelize import apply_activation_checkpointing, is_checkpointed, parallelize_model


def inputs(cfg: DynamicsConfig):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, cfg.latent_tokens, cfg.latent_dim, generator=g)
    return z, torch.full((2, 3), 0.5), torch.full((2, 3), 1 / cfg.k_max)


def test_checkpointed_blocks_recompute_in_backward_only_when_training_with_grad():
    cfg = DynamicsConfig.debug(num_discrete_actions=(), num_continuous_actions=0)
    model = parallelize_model(DynamicsTransformer(cfg.with_changes(activation_checkpointing=True))).train()
    assert all(isinstance(b, Block) and is_checkpointed(b) for b in model.blocks)
    mlp_calls = [0]
    for block in model.blocks:
        block.mlp.register_forward_pre_hook(lambda *_: mlp_calls.__setitem__(0, mlp_calls[0] + 1))
    loss = model(*inputs(cfg)).square().mean()
    assert mlp_calls[0] == cfg.depth
    loss.backward()
    assert mlp_calls[0] == 2 * cfg.depth  # every block ran again in backward
    with torch.no_grad():  # teacher passes and rollouts: no checkpoint frames
        model(*inputs(cfg))
    model.eval()
    model(*inputs(cfg)).sum().backward()
    assert mlp_calls[0] == 4 * cfg.depth  # eval: once forward, no recompute


def test_checkpointing_is_idempotent_and_a_deep_copy_uses_its_own_weights():
    cfg = DynamicsConfig.debug(num_discrete_actions=(), num_continuous_actions=0)
    model = DynamicsTransformer(cfg).train()
    plain_out = model(*inputs(cfg))
    apply_activation_checkpointing(model)
    wrapped = [b.__dict__["forward"] for b in model.blocks]
    parallelize_model(model, activation_checkpointing=True)
    assert [b.__dict__["forward"] for b in model.blocks] == wrapped  # not wrapped twice
    twin = copy.deepcopy(model)  # what EMAWeightAveraging does
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    torch.testing.assert_close(model(*inputs(cfg)), plain_out)  # the original is untouched by the copy
    assert (twin(*inputs(cfg)) - plain_out).abs().max() > 1e-3  # the copy runs its own (halved) weights
    assert all(b.__dict__["forward"].forward.__self__ is b for b in twin.blocks)


def test_flags_off_leave_the_model_alone():
    model = parallelize_model(DynamicsTransformer(DynamicsConfig.debug()))
    assert not any(is_checkpointed(b) for b in model.blocks)
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in model.blocks)
