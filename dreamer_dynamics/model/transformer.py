"""The dynamics transformer: an x-predicting denoiser over (B, T, N_b, D_b) latents (paper Sec. 3.2, 3.4)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dreamer_dynamics.units import LatentUnits

from .attention import KV, AttentionMask, FactorizedAttention
from .config import DynamicsConfig
from .embeddings import ActionEmbedding, ShortcutEmbedding
from .layers import RMSNorm, SwiGLU, grid_rope_tables, rope_tables
from .rollout import (
    RolloutConfig,
    check_context_shape,
    rollout,
    rollout_actions,
)


class Block(nn.Module):
    """Pre-RMSNorm transformer block: x + attn(norm(x)), then x + SwiGLU(norm(x))."""

    def __init__(self, config: DynamicsConfig, is_time: bool) -> None:
        super().__init__()
        self.is_time = is_time
        self.attn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.attn = FactorizedAttention(config, "time" if is_time else "space")
        self.mlp_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.mlp_hidden)

    def forward(
        self,
        x: torch.Tensor,
        freqs: torch.Tensor,
        mask: AttentionMask | None,
        past_kv: KV | None = None,
    ) -> tuple[torch.Tensor, KV | None]:
        attn_out, new_kv = self.attn(self.attn_norm(x), freqs, mask, past_kv)
        x = residual_add(x, attn_out)
        return residual_add(x, self.mlp(self.mlp_norm(x))), new_kv


def residual_add(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + branch. Without autograd (teacher passes, rollouts) the sum is accumulated into the branch's fresh
    output instead of a new (B, T, S, D) tensor, where that keeps the result dtype (under bf16 autocast a bf16
    branch plus the fp32 stream must stay fp32); a + b == b + a exactly, so bitwise equal
    (tests/test_perf_equivalence.py).
    """
    if torch.is_grad_enabled() or branch.dtype != torch.promote_types(x.dtype, branch.dtype):
        return x + branch
    return branch.add_(x)


def time_attention_mask(
    query_pos: torch.Tensor, key_pos: torch.Tensor, context_length: int, image_rows: torch.Tensor | None
) -> AttentionMask | None:
    """Causal window over frames: frame t sees t-C+1..t; image rows see only their own frame.

    query_pos (Lq,), key_pos (Lk,) absolute frame indices; image_rows (B,) bool or None. None if all allowed.
    """
    delta = query_pos[:, None] - key_pos[None, :]  # (Lq, Lk)
    allowed = ((delta >= 0) & (delta < context_length))[None]  # (1, Lq, Lk)
    if image_rows is not None:
        allowed = torch.where(image_rows[:, None, None], (delta == 0)[None], allowed)  # (B, Lq, Lk)
    if bool(allowed.all()):
        return None
    return allowed


class DynamicsTransformer(nn.Module):
    """Denoiser f(z_tilde, tau, d, a) -> x1_hat (x-prediction, docs/design.md §2), factorised space/time.

    Tokens per frame (order): S_z packed latent tokens, S_r registers, 1 shortcut token, S_a action tokens.
    """

    def __init__(self, config: DynamicsConfig) -> None:
        super().__init__()
        self.config = config
        packed = config.pack_factor * config.latent_dim
        self.latent_in = nn.Linear(packed, config.dim)
        self.registers = nn.Parameter(torch.zeros(config.num_registers, config.dim))
        self.shortcut = ShortcutEmbedding(config)
        self.actions = ActionEmbedding(config)
        self.blocks = nn.ModuleList(Block(config, config.is_time_layer(i)) for i in range(config.depth))
        self.out_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.latent_out = nn.Linear(config.dim, packed)
        # What `rollout` and an export need besides the weights; set by DynamicsModule from its
        # hyper-parameters, or by from_pretrained (model/pretrained.py) from an export.
        self.latent_units = LatentUnits.identity(config.latent_dim)  # the data's units <-> the model's
        self.codec_spec: dict | None = None  # {"class_path", "init_args"} of the data's codec
        self.rollout_defaults = RolloutConfig()  # K and context noise of `rollout`
        self.reset_parameters()
        # activation_checkpointing / compile_blocks are applied by dreamer_dynamics.parallelize, not here.

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        # Residual branches scaled by depth (GPT-2 / Radford et al. 2019) so the stream variance stays O(1).
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, std=std / math.sqrt(2 * self.config.depth))
            nn.init.normal_(block.mlp.down.weight, std=std / math.sqrt(2 * self.config.depth))
        if self.config.zero_init_output:  # start as the data mean; every block still gets gradient through it
            nn.init.zeros_(self.latent_out.weight)
        nn.init.normal_(self.registers, std=std)
        nn.init.normal_(self.actions.base, std=std)

    def forward(
        self,
        z_tilde: torch.Tensor,
        tau: torch.Tensor,
        d: torch.Tensor,
        *,
        actions_discrete: torch.Tensor | None = None,
        actions_continuous: torch.Tensor | None = None,
        image_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z_tilde (B, T, N_b, D_b); tau, d float (B, T) on their grids; actions (B, T, n).

        Returns x1_hat (B, T, N_b, D_b), the clean-latent estimate (x-prediction).
        """
        x1_hat, _ = self.forward_frames(
            z_tilde,
            tau,
            d,
            actions_discrete=actions_discrete,
            actions_continuous=actions_continuous,
            image_rows=image_rows,
        )
        return x1_hat

    def forward_frames(
        self,
        z_tilde: torch.Tensor,
        tau: torch.Tensor,
        d: torch.Tensor,
        *,
        actions_discrete: torch.Tensor | None = None,
        actions_continuous: torch.Tensor | None = None,
        image_rows: torch.Tensor | None = None,
        past_kv: Sequence[KV] | None = None,
        start: int | torch.Tensor = 0,
    ) -> tuple[torch.Tensor, list[KV]]:
        """`forward` for frames start..start+T-1 after cached frames (KV-cached rollouts, docs/design.md §5).

        past_kv: one (keys, values) pair per time layer, each (B, S*Hkv, L_past, E), for the L_past frames
        just before `start` (L_past <= start), in any order (keys carry their positions in their rotation).
        start: an int, or a 0-d integer tensor on the model's device (a CUDA graph of a decode step replays at
        every position by updating it in place). Returns (x1_hat, this call's (keys, values) per time layer).
        """
        cfg = self.config
        b, t = self._check_shapes(z_tilde, tau, d, image_rows)
        s_z = cfg.spatial_tokens
        # Packing (docs/design.md §4): p consecutive tokenizer tokens -> one spatial token of width p*D_b.
        packed = z_tilde.reshape(b, t, s_z, cfg.pack_factor * cfg.latent_dim)
        x = torch.cat(
            (
                self.latent_in(packed),  # (B, T, S_z, D)
                self.registers.to(packed.dtype).expand(b, t, -1, -1),  # (B, T, S_r, D)
                self.shortcut(tau, d),  # (B, T, 1, D)
                self.actions(b, t, actions_discrete, actions_continuous),  # (B, T, S_a, D)
            ),
            dim=2,
        )  # (B, T, S, D)

        device = x.device
        past_len = 0 if past_kv is None else past_kv[0][0].shape[2]
        if isinstance(start, int) and past_len > start:
            raise ValueError(f"forward_frames: {past_len} cached frames but start={start}")
        if past_len and image_rows is not None:
            raise ValueError("forward_frames: image_rows cannot be combined with cached frames")
        space_freqs = self.space_rope(device)
        query_pos = torch.arange(t, device=device) + start  # (T,)
        time_freqs = rope_tables(query_pos, cfg.head_dim, cfg.rope_base)
        if t == 1 and image_rows is None and past_len < cfg.context_length:
            time_mask = None  # one new frame sees every cached frame: no mask to build, and no host sync
        else:
            key_pos = torch.arange(-past_len, t, device=device) + start  # (L_past + T,)
            dense = time_attention_mask(query_pos, key_pos, cfg.context_length, image_rows)
            time_mask = None if dense is None else AttentionMask(dense)

        new_kv: list[KV] = []
        time_index = 0
        for block in self.blocks:
            if block.is_time:
                args = (time_freqs, time_mask, None if past_kv is None else past_kv[time_index])
                time_index += 1
            else:
                args = (space_freqs, None, None)
            x, kv = block(x, *args)
            if kv is not None:
                new_kv.append(kv)
        out = self.latent_out(self.out_norm(x[:, :, :s_z]))  # (B, T, S_z, p*D_b)
        return out.reshape(b, t, cfg.latent_tokens, cfg.latent_dim), new_kv

    def space_rope(self, device: torch.device) -> torch.Tensor:
        """Rotary angles of the tokens of one frame (S, E/2, 2): 2-D over the spatial grid where the data
        has one (``token_grid``), else 1-D over the token index."""
        cfg = self.config
        if cfg.space_grid is not None:
            extra = cfg.tokens_per_frame - cfg.spatial_tokens
            return grid_rope_tables(cfg.space_grid, extra, cfg.head_dim, cfg.rope_base, device)
        return rope_tables(torch.arange(cfg.tokens_per_frame, device=device), cfg.head_dim, cfg.rope_base)

    # ------------------------------------------------------------------ export / inference (pretrained.py)
    def save_pretrained(
        self,
        directory,
        *,
        latent_units: LatentUnits | None = None,
        codec: dict | None = None,
        rollout: RolloutConfig | dict | None = None,
    ):
        """Write config.json + model.safetensors to `directory` (docs/model.md, "Export"); latent_units,
        codec and rollout default to the model's ``latent_units``, ``codec_spec``, ``rollout_defaults``."""
        from .pretrained import save_pretrained

        return save_pretrained(self, directory, latent_units=latent_units, codec=codec, rollout=rollout)

    @classmethod
    def from_pretrained(cls, directory, *, device="cpu", **overrides) -> DynamicsTransformer:
        """Load an export (eval mode) with its latent units, codec and rollout defaults; no Lightning."""
        from .pretrained import load_pretrained

        return load_pretrained(cls, directory, device=device, **overrides)

    @torch.no_grad()
    def rollout(
        self,
        context,
        horizon: int,
        *,
        actions_discrete=None,
        actions_continuous=None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        unconditional: bool = False,
    ):
        """Generate `horizon` frames after `context` [B, T_ctx, N_b, D_b] -> [B, horizon, N_b, D_b], both in
        the dataset's units (``latent_units``; KV-cached, docs/design.md §5).

        Tensors or numpy arrays on any device; the result is a numpy array when `context` is one, else a
        tensor on the model's device. Actions cover T_ctx + horizon frames; discrete actions may be [B, T]
        for one categorical component. A model trained with actions needs them: ``unconditional=True`` rolls
        out with the learned "no action" embedding instead. Runs in eval mode (the mode is restored).
        ``num_steps``: K Euler steps per frame (default ``rollout_defaults``); ``generator``: the noise.
        """
        as_numpy = isinstance(context, np.ndarray)
        device = self.latent_in.weight.device
        context = torch.as_tensor(context, device=device, dtype=torch.float32)
        check_context_shape(context, self.config)  # before standardising: the shapes, not a broadcast error
        actions = rollout_actions(self.config, device, actions_discrete, actions_continuous, unconditional)
        was_training = self.training
        self.eval()
        try:
            generated = rollout(
                self,
                self.latent_units.standardize(context),
                horizon,
                num_steps=num_steps or self.rollout_defaults.num_steps,
                context_noise=self.rollout_defaults.context_noise,
                generator=generator,
                **actions,
            )
        finally:
            self.train(was_training)
        generated = self.latent_units.destandardize(generated)
        return generated.cpu().numpy() if as_numpy else generated

    def _check_shapes(
        self, z_tilde: torch.Tensor, tau: torch.Tensor, d: torch.Tensor, image_rows: torch.Tensor | None
    ) -> tuple[int, int]:
        cfg = self.config
        if z_tilde.dim() != 4 or tuple(z_tilde.shape[2:]) != (cfg.latent_tokens, cfg.latent_dim):
            raise ValueError(
                "DynamicsTransformer: z_tilde must have shape "
                f"(B, T, latent_tokens={cfg.latent_tokens}, latent_dim={cfg.latent_dim}), "
                f"got {tuple(z_tilde.shape)}"
            )
        b, t = z_tilde.shape[:2]
        for name, value in (("tau", tau), ("d", d)):
            if tuple(value.shape) != (b, t):
                raise ValueError(
                    f"DynamicsTransformer: {name} must have shape (B, T) = {(b, t)}, got {tuple(value.shape)}"
                )
        if image_rows is not None and (tuple(image_rows.shape) != (b,) or image_rows.dtype != torch.bool):
            raise ValueError(
                f"DynamicsTransformer: image_rows must be a bool tensor of shape (B,) = ({b},), "
                f"got {image_rows.dtype} {tuple(image_rows.shape)}"
            )
        return b, t
