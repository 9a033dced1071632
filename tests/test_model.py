"""DynamicsTransformer: shapes, conditioning grids, actions, causality, window, image rows (design.md §4)."""

import pytest
import torch

from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer
from dreamer_dynamics.parallelize import is_checkpointed, parallelize_model
from tests.conftest import make_debug_model

pytestmark = pytest.mark.usefixtures("single_thread")
make = make_debug_model


def inputs(cfg, b=2, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, t, cfg.latent_tokens, cfg.latent_dim, generator=g)
    tau = torch.randint(0, cfg.k_max, (b, t), generator=g) / cfg.k_max
    d = torch.full((b, t), 1.0 / cfg.k_max)
    return z, tau, d


def test_output_shape_and_dtype():
    model = make()
    z, tau, d = inputs(model.config)
    out = model(z, tau, d)
    assert out.shape == z.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_every_training_and_inference_level_is_representable():
    """All (tau, d) pairs: tau = i/k_max for i in 0..k_max (tau = 1 included) x d = 1/K, K = 1..k_max."""
    model = make()
    cfg = model.config
    taus = torch.arange(cfg.k_max + 1) / cfg.k_max
    ds = 2.0 ** -torch.arange(cfg.num_step_sizes).float()
    tau, d = torch.meshgrid(taus, ds, indexing="ij")  # (k_max + 1, num_step_sizes): rows x frames
    z = torch.randn(tau.shape[0], tau.shape[1], cfg.latent_tokens, cfg.latent_dim)
    out = model(z, tau.contiguous(), d.contiguous(), image_rows=torch.ones(tau.shape[0], dtype=torch.bool))
    assert torch.isfinite(out).all()
    # Distinct levels hit distinct table rows: the shortcut token differs for every pair.
    tokens = model.shortcut(tau.contiguous(), d.contiguous()).flatten(0, 2)
    assert torch.cdist(tokens, tokens).add(torch.eye(len(tokens))).min() > 0


@pytest.mark.parametrize(
    "name,tau,d",
    [
        ("tau", 0.3, 1 / 8),  # not a multiple of 1/8
        ("tau", 1.125, 1 / 8),  # beyond clean data
        ("tau", -0.125, 1 / 8),
        ("d", 0.5, 1 / 3),  # not a power of two
        ("d", 0.5, 1 / 16),  # finer than d_min = 1/k_max
        ("d", 0.5, 2.0),  # K < 1
    ],
)
def test_off_grid_levels_raise(name, tau, d):
    model = make()
    z, _, _ = inputs(model.config, b=1, t=1)
    with pytest.raises(ValueError, match=f"{name} must"):
        model(z, torch.full((1, 1), tau), torch.full((1, 1), d))


def test_bad_shapes_raise_clear_errors():
    model = make()
    z, tau, d = inputs(model.config)
    with pytest.raises(ValueError, match="z_tilde must have shape"):
        model(z[..., :-1], tau, d)
    with pytest.raises(ValueError, match="tau must have shape"):
        model(z, tau[:, :-1], d)
    with pytest.raises(ValueError, match="image_rows must be a bool"):
        model(z, tau, d, image_rows=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="actions_discrete must have shape"):
        model(z, tau, d, actions_discrete=torch.zeros(2, 5, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="actions_discrete ids"):
        model(z, tau, d, actions_discrete=torch.full((2, 5, 2), 5, dtype=torch.long))  # 5 >= 5 classes
    with pytest.raises(ValueError, match="declares no such actions"):
        make(num_continuous_actions=0)(z, tau, d, actions_continuous=torch.zeros(2, 5, 1))


def test_config_validation():
    with pytest.raises(ValueError, match="pack_factor"):
        DynamicsConfig.debug(latent_tokens=7)
    with pytest.raises(ValueError, match="k_max"):
        DynamicsConfig.debug(k_max=6)
    with pytest.raises(ValueError, match="kv_heads"):
        DynamicsConfig.debug(kv_heads=3)
    with pytest.raises(ValueError, match="cannot soft-cap"):
        DynamicsConfig.debug(attention_backend="sdpa", attention_softcap=5.0)
    assert [DynamicsConfig.debug().is_time_layer(i) for i in range(4)] == [False, True, False, True]


def test_missing_action_labels_use_the_learned_embedding_only():
    model = make()
    z, tau, d = inputs(model.config)
    plain = model(z, tau, d)
    missing_discrete = torch.full((2, 5, 2), -1, dtype=torch.long)
    missing_continuous = torch.full((2, 5, 2), float("nan"))
    torch.testing.assert_close(
        model(z, tau, d, actions_discrete=missing_discrete, actions_continuous=missing_continuous), plain
    )
    # One labelled component in frame 0 changes the output there.
    labelled = missing_discrete.clone()
    labelled[:, 0, 1] = 2
    changed = model(z, tau, d, actions_discrete=labelled)
    assert (changed[:, 0] - plain[:, 0]).abs().max() > 1e-4
    partial = missing_continuous.clone()
    partial[:, 0, 0] = 0.7  # component 0 labelled, component 1 still NaN
    out = model(z, tau, d, actions_continuous=partial)
    assert torch.isfinite(out).all() and (out[:, 0] - plain[:, 0]).abs().max() > 1e-4


def test_causality_future_frames_never_change_the_past():
    model = make()
    z, tau, d = inputs(model.config, t=6)
    base = model(z, tau, d)
    z2 = z.clone()
    z2[:, 3:] = torch.randn_like(z2[:, 3:])
    out = model(z2, tau, d)
    torch.testing.assert_close(out[:, :3], base[:, :3], atol=0, rtol=0)
    assert (out[:, 3:] - base[:, 3:]).abs().max() > 1e-4


def test_window_with_one_time_layer():
    """depth 2, time_every 2: one time layer; frame t sees t-C+1..t and nothing earlier."""
    model = make(depth=2, time_every=2, context_length=3)
    z, tau, d = inputs(model.config, b=1, t=6)
    base = model(z, tau, d)
    far, near = z.clone(), z.clone()
    far[:, 2] += 1.0  # frame 2 is C = 3 steps before frame 5
    near[:, 3] += 1.0  # frame 3 is C - 1 steps before frame 5
    torch.testing.assert_close(model(far, tau, d)[:, 5], base[:, 5], atol=0, rtol=0)
    assert (model(near, tau, d)[:, 5] - base[:, 5]).abs().max() > 1e-4


def test_image_rows_are_independent_across_time():
    model = make()
    z, tau, d = inputs(model.config, b=2, t=5)
    image_rows = torch.tensor([True, False])
    out = model(z, tau, d, image_rows=image_rows)
    # Each frame of an image row equals that frame run on its own.
    alone = torch.cat([model(z[:1, i : i + 1], tau[:1, i : i + 1], d[:1, i : i + 1]) for i in range(5)], 1)
    torch.testing.assert_close(out[0], alone[0], atol=1e-5, rtol=1e-5)
    # The video row in the same batch still mixes time.
    video = model(z[1:], tau[1:], d[1:])
    torch.testing.assert_close(out[1:], video, atol=1e-5, rtol=1e-5)
    assert (
        video[0, 1:]
        - torch.cat([model(z[1:, i : i + 1], tau[1:, i : i + 1], d[1:, i : i + 1]) for i in range(1, 5)], 1)[
            0
        ]
    ).abs().max() > 1e-4


def test_gradients_reach_every_parameter_and_checkpointing_matches():
    torch.manual_seed(0)
    cfg = DynamicsConfig.debug()
    plain = DynamicsTransformer(cfg).train()
    ckpt = parallelize_model(DynamicsTransformer(cfg.with_changes(activation_checkpointing=True))).train()
    ckpt.load_state_dict(plain.state_dict())
    assert all(is_checkpointed(block) for block in ckpt.blocks)
    assert ckpt.state_dict().keys() == plain.state_dict().keys()
    z, tau, d = inputs(cfg)
    acts = torch.randint(0, 3, (2, 5, 2))
    cont = torch.randn(2, 5, 2)
    losses = [
        m(z, tau, d, actions_discrete=acts, actions_continuous=cont).square().mean() for m in (plain, ckpt)
    ]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_keeps_norms_in_fp32():
    model = make()
    z, tau, d = inputs(model.config, t=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z, tau, d)
        normed = model.blocks[0].attn_norm(torch.randn(3, model.config.dim, dtype=torch.bfloat16))
    assert torch.isfinite(out).all()
    assert normed.dtype == torch.bfloat16  # computed in fp32, handed back in the input dtype
    torch.testing.assert_close(out.float(), model(z, tau, d), atol=0.1, rtol=0.1)
    # Every norm of the network, under autocast: exactly the fp32 result rounded once to bf16 (a norm computed
    # in bf16 rounds its mean square and its scale, and differs).
    norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert norms
    x = (torch.randn(64, 2 * model.config.dim, generator=torch.Generator().manual_seed(0)) * 3).bfloat16()
    for norm in norms:
        with torch.no_grad():
            norm.weight.copy_(torch.linspace(0.5, 1.5, norm.weight.numel()))  # a non-trivial gain
        features = x[:, : norm.normalized_shape[0]]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = norm(features)
        reference = torch.nn.functional.rms_norm(
            features.float(), norm.normalized_shape, norm.weight.float(), norm.eps
        ).bfloat16()
        assert got.dtype == torch.bfloat16 and torch.equal(got, reference), norm


def test_packing_maps_token_groups_to_one_spatial_token():
    """pack_factor 2: tokenizer tokens 2j and 2j+1 form spatial token j; with a space-free model (one time
    layer, C = 1) output token pair j depends only on input pair j."""
    model = make(depth=1, time_every=1, context_length=1, num_registers=0)
    z, tau, d = inputs(model.config, b=1, t=1)
    base = model(z, tau, d)
    z2 = z.clone()
    z2[:, :, 3] += 1.0  # token 3 belongs to spatial token 1 = tokenizer tokens 2, 3
    delta = (model(z2, tau, d) - base).abs().amax(-1)[0, 0]
    assert (delta[2:4] > 1e-5).all() and (delta[[0, 1, 4, 5, 6, 7]] == 0).all()


def test_presets_and_minecraft_parameter_count():
    for preset in (DynamicsConfig.debug, DynamicsConfig.quickstart):
        DynamicsTransformer(preset())
    cfg = DynamicsConfig.minecraft()
    packed_width = cfg.pack_factor * cfg.latent_dim
    assert (cfg.spatial_tokens, packed_width, cfg.context_length, cfg.k_max) == (256, 32, 192, 64)
    with torch.device("meta"):
        model = DynamicsTransformer(cfg)
    count = sum(p.numel() for p in model.parameters())
    assert 1.5e9 < count < 1.7e9, count  # the paper's 1.6B dynamics model (docs/design.md §8)


def test_rope_is_relative_and_both_formulations_agree(monkeypatch):
    """q.k after RoPE depends only on the position difference; the compiled (real) path equals the complex."""
    from dreamer_dynamics.model import layers

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)

    def score(pos_q, pos_k):
        fq, fk = (layers.rope_tables(torch.tensor([p]), 8, 10_000.0) for p in (pos_q, pos_k))
        return (layers.apply_rope(q, fq, 0) * layers.apply_rope(k, fk, 0)).sum()

    torch.testing.assert_close(score(3, 1), score(103, 101), atol=1e-5, rtol=1e-5)
    assert (score(3, 1) - score(3, 2)).abs() > 1e-3
    x = torch.randn(2, 5, 3, 8, generator=g)
    freqs = layers.rope_tables(torch.arange(5), 8, 10_000.0)
    eager = layers.apply_rope(x, freqs, 1)
    monkeypatch.setattr(layers, "_is_compiling", lambda: True)
    torch.testing.assert_close(layers.apply_rope(x, freqs, 1), eager, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(eager.norm(dim=-1), x.norm(dim=-1))  # a rotation


@pytest.mark.slow
def test_compiled_blocks_match_eager():
    torch.manual_seed(0)
    cfg = DynamicsConfig.debug()
    eager = DynamicsTransformer(cfg)
    compiled = parallelize_model(DynamicsTransformer(cfg.with_changes(compile_blocks=True)))
    assert all(block._compiled_call_impl is not None for block in compiled.blocks)
    compiled.load_state_dict(eager.state_dict())
    z, tau, d = inputs(cfg)
    torch.testing.assert_close(compiled(z, tau, d), eager(z, tau, d), atol=1e-5, rtol=1e-5)


def test_grid_rope_sees_row_and_column_offsets():
    """2-D RoPE over a token grid: q.k depends only on the (row, col) offset, and a row wrap is not a step."""
    from dreamer_dynamics.model import layers

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, 16, generator=g), torch.randn(16, 16, generator=g)
    freqs = layers.grid_rope_tables((4, 4), 3, 16, 10_000.0, torch.device("cpu"))  # (16 + 3, 8, 2)
    assert freqs.shape == (19, 8, 2)
    rq, rk = (
        layers.apply_rope(q[:1].expand(19, 16), freqs, 0),
        layers.apply_rope(k[:1].expand(19, 16), freqs, 0),
    )

    def score(a, b):  # grid cells (row, col)
        return (rq[a[0] * 4 + a[1]] * rk[b[0] * 4 + b[1]]).sum()

    torch.testing.assert_close(score((0, 0), (1, 2)), score((2, 1), (3, 3)), atol=1e-5, rtol=1e-5)
    # flattened, (0, 3) -> (1, 0) is the same step as (0, 0) -> (0, 1); on the grid it is not
    assert (score((0, 3), (1, 0)) - score((0, 0), (0, 1))).abs() > 1e-3
    flat = layers.rope_tables(torch.arange(16), 16, 10_000.0)
    fq, fk = (
        layers.apply_rope(q[:1].expand(16, 16), flat, 0),
        layers.apply_rope(k[:1].expand(16, 16), flat, 0),
    )
    torch.testing.assert_close((fq[3] * fk[4]).sum(), (fq[0] * fk[1]).sum(), atol=1e-5, rtol=1e-5)


def test_token_grid_packs_along_rows_and_is_validated():
    cfg = DynamicsConfig.debug(token_grid=(2, 4))  # 8 tokens, pack_factor 2
    assert cfg.space_grid == (2, 2)
    model = DynamicsTransformer(cfg)
    z, tau, d = inputs(cfg)
    flat = DynamicsTransformer(cfg.with_changes(token_grid=None))
    flat.load_state_dict(model.state_dict())
    assert not torch.allclose(model(z, tau, d), flat(z, tau, d))  # the positions reach the attention
    for grid, message in (((3, 3), "rows \\* cols"), ((8, 1), "must divide")):
        with pytest.raises(Exception, match=message):
            DynamicsConfig.debug(token_grid=grid)
    with pytest.raises(Exception, match="multiple of 4"):
        DynamicsConfig.debug(token_grid=(2, 4), dim=24, heads=4, kv_heads=2)
