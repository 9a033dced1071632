"""Configuration of the dynamics transformer (paper Sec. 3.2 / 3.4, docs/design.md §4 and §9)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.field_docs import document_fields
from dreamer_dynamics.objective.sampling import is_power_of_two

AttentionBackend = Literal["auto", "math", "sdpa", "flex"]


def softcap_problem(backend: str, softcap: float | None) -> str | None:
    """Why ``backend`` cannot run with ``softcap`` (SDPA has no hook for logit soft-capping), or None."""
    if backend == "sdpa" and softcap is not None:
        return (
            f"attention_backend='sdpa' cannot soft-cap logits (attention_softcap={softcap}): set "
            "attention_softcap=None or use 'auto', 'flex' or 'math'"
        )
    return None


@document_fields  # the field comments below become the --help text
@dataclass
class DynamicsConfig:
    """Every size of the dynamics transformer (field names: docs/design.md §9); presets are starting points.

    The latent shape and the action spec describe the data and are normally linked from the DataModule
    (`DynamicsDataModule.latent_tokens` etc.), so pointing at a new dataset changes nothing here.
    """

    # --- data description (linked from the dataset) ---
    latent_tokens: int = 16  # N_b: tokens per frame produced by the frozen tokenizer
    latent_dim: int = 32  # D_b: width of each tokenizer token
    pack_factor: int = 1  # p: consecutive tokenizer tokens packed into one spatial token (S_z = N_b / p)
    num_discrete_actions: tuple[int, ...] = ()  # class count of each categorical action component
    num_continuous_actions: int = 0  # number of continuous action components
    token_grid: tuple[int, int] | None = None  # (rows, cols) of the N_b tokens, row-major: 2-D space RoPE

    # --- transformer sizes (our choice: the paper gives only the 1.6B total, docs/design.md §8, §10) ---
    # The defaults are the quickstart model (CPU-trainable in minutes); larger presets live in the packaged
    # YAML configs (dreamer_dynamics/configs/*.yaml, read by `DynamicsConfig.preset`).
    dim: int = 96  # model width
    depth: int = 4  # number of blocks (space + time)
    heads: int = 6  # query heads; head_dim = dim / heads
    kv_heads: int = 2  # key/value heads for grouped-query attention (heads % kv_heads == 0)
    mlp_ratio: float = 4.0  # SwiGLU hidden = 2/3 * mlp_ratio * dim (same FLOPs as a GELU MLP of this ratio)
    mlp_multiple_of: int = 64  # round the SwiGLU hidden width up to a multiple of this (kernel friendly)
    time_every: int = 4  # every time_every-th block is a causal time block (paper Sec. 3.4: 4)
    context_length: int = 16  # C: a time layer sees frames t-C+1..t (paper Minecraft: 192)
    num_registers: int = 2  # S_r: learned register tokens per frame
    action_tokens: int = 1  # S_a: tokens per frame carrying the action (learned embedding where unlabelled)

    # --- diffusion grid (docs/design.md §2) ---
    k_max: int = 64  # K_max: finest number of sampling steps; d_min = 1/k_max, tau on the grid i/k_max

    # --- numerics / kernels ---
    attention_softcap: float | None = 50.0  # logit soft-cap c*tanh(s/c) (Gemma-2 style); None = off
    rope_base: float = 10_000.0  # RoPE frequency base for both the space and the time axis
    norm_eps: float = 1e-6  # epsilon of every RMSNorm
    init_std: float = 0.02  # std of the normal init of linear / embedding weights
    zero_init_output: bool = False  # zero the output head: x1_hat starts at 0 (standardised data's mean)
    attention_backend: AttentionBackend = "auto"  # auto: flex on CUDA w/ soft-cap, sdpa w/o, else math
    check_inputs: bool = True  # validate shapes, tau/d grids and action ids (one host sync per forward)

    # --- scale options (off on CPU): flags only, applied by dreamer_dynamics.parallelize ---
    activation_checkpointing: bool = False  # recompute each block in backward to save activation memory
    compile_blocks: bool = False  # torch.compile every block separately (fast compile, shared graph)

    # ------------------------------------------------------------------ derived
    def __post_init__(self) -> None:
        self.num_discrete_actions = tuple(int(n) for n in self.num_discrete_actions)
        problems = []
        if self.latent_tokens % self.pack_factor:
            problems.append(
                f"latent_tokens={self.latent_tokens} not divisible by pack_factor={self.pack_factor}"
            )
        if self.dim % self.heads:
            problems.append(f"dim={self.dim} not divisible by heads={self.heads}")
        elif (self.dim // self.heads) % 2:
            problems.append(f"head_dim={self.dim // self.heads} must be even for RoPE")
        if self.token_grid is not None:
            self.token_grid = tuple(int(n) for n in self.token_grid)
            problems += self._token_grid_problems()
        if self.heads % self.kv_heads:
            problems.append(f"heads={self.heads} not divisible by kv_heads={self.kv_heads}")
        if not is_power_of_two(self.k_max):
            problems.append(f"k_max={self.k_max} must be a power of two")
        if self.time_every < 1 or self.context_length < 1 or self.action_tokens < 1:
            problems.append("time_every, context_length and action_tokens must be >= 1")
        if any(n < 1 for n in self.num_discrete_actions) or self.num_continuous_actions < 0:
            problems.append(f"bad action spec {self.num_discrete_actions}, {self.num_continuous_actions}")
        if self.attention_softcap is not None and self.attention_softcap <= 0:
            problems.append(f"attention_softcap={self.attention_softcap} must be > 0 or None")
        if self.attention_backend not in ("auto", "math", "sdpa", "flex"):
            problems.append(f"attention_backend={self.attention_backend!r} not in auto|math|sdpa|flex")
        elif softcap_problem(self.attention_backend, self.attention_softcap):
            problems.append(softcap_problem(self.attention_backend, self.attention_softcap))
        if problems:
            raise ConfigError("DynamicsConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def spatial_tokens(self) -> int:  # S_z
        return self.latent_tokens // self.pack_factor

    @property
    def space_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the S_z packed spatial tokens: p consecutive tokens of a grid row pack into one."""
        if self.token_grid is None:
            return None
        rows, cols = self.token_grid
        return rows, cols // self.pack_factor

    def _token_grid_problems(self) -> list[str]:
        grid = self.token_grid
        if len(grid) != 2 or grid[0] < 1 or grid[1] < 1 or grid[0] * grid[1] != self.latent_tokens:
            return [
                f"token_grid={grid} must be (rows, cols) with rows * cols = "
                f"latent_tokens={self.latent_tokens}"
            ]
        problems = []
        if grid[1] % self.pack_factor:
            problems.append(f"pack_factor={self.pack_factor} must divide the token_grid columns {grid[1]}")
        if self.dim % self.heads == 0 and (self.dim // self.heads) % 4:
            problems.append(f"head_dim={self.dim // self.heads} must be a multiple of 4 for a token_grid")
        return problems

    @property
    def tokens_per_frame(self) -> int:  # S = S_z + S_r + 1 shortcut token + S_a
        return self.spatial_tokens + self.num_registers + 1 + self.action_tokens

    @property
    def mlp_hidden(self) -> int:
        hidden = int(2 * self.mlp_ratio * self.dim / 3)
        return -(-hidden // self.mlp_multiple_of) * self.mlp_multiple_of

    @property
    def d_min(self) -> float:  # the finest step size 1/K_max: flow frames; every tau lies on its grid
        return 1.0 / self.k_max

    @property
    def num_step_sizes(self) -> int:  # d in {1, 1/2, ..., 1/k_max}
        return int(math.log2(self.k_max)) + 1

    def is_time_layer(self, index: int) -> bool:
        """Block `index` (0-based) is a time block when (index + 1) % time_every == 0 (paper Sec. 3.4)."""
        return (index + 1) % self.time_every == 0

    def with_changes(self, **changes) -> DynamicsConfig:
        return replace(self, **changes)

    # ------------------------------------------------------------------ presets
    @classmethod
    def debug(cls, **overrides) -> DynamicsConfig:
        """Tiny model for CPU unit tests (a forward takes milliseconds); exercises every feature."""
        base = dict(
            latent_tokens=8,
            latent_dim=4,
            pack_factor=2,
            dim=32,
            depth=4,
            heads=4,
            kv_heads=2,
            time_every=2,
            context_length=6,
            num_registers=2,
            action_tokens=2,
            k_max=8,
            num_discrete_actions=(5, 3),
            num_continuous_actions=2,
            attention_softcap=5.0,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides) -> DynamicsConfig:
        """The model of the packaged config ``name`` (``dreamer-dynamics fit --config NAME``): the dataclass
        defaults updated by the YAML's ``model.model`` section, then by ``overrides``. The YAML is the one
        source of every preset, so Python and the CLI build the same network (tested)."""
        from dreamer_dynamics.configs import preset_model_fields  # lazy: YAML parsing only when asked

        return cls(**{**preset_model_fields(name), **overrides})

    @classmethod
    def quickstart(cls, **overrides) -> DynamicsConfig:
        """CPU-trainable model for the built-in environment (minutes): ``preset("quickstart")``. The latent
        shape and actions are linked from the data at run time; the values here are the built-in data's."""
        return cls.preset(
            "quickstart", **{"latent_tokens": 16, "latent_dim": 48, "token_grid": (4, 4), **overrides}
        )

    @classmethod
    def minecraft(cls, **overrides) -> DynamicsConfig:
        """Paper scale (Sec. 3.4, docs/design.md §8): 512x16 latents packed to 256x32, C = 192, K_max = 64,
        ``preset("minecraft")``. Width/depth are our choice to land at the paper's ~1.6B parameters."""
        return cls.preset("minecraft", **{"latent_tokens": 512, "latent_dim": 16, **overrides})


__all__ = ["DynamicsConfig", "AttentionBackend", "softcap_problem"]
