"""KV-cached rollouts (docs/design.md §5): cache == recomputation, sampling conventions, bounded cache."""

import pytest
import torch

from dreamer_dynamics.model import (
    DynamicsConfig,
    RolloutConfig,
    RolloutStepper,
    TimeKVCache,
    context_signal_level,
    rollout,
)
from tests.conftest import make_debug_model

pytestmark = pytest.mark.usefixtures("single_thread")
make = make_debug_model


def episode(cfg, b=2, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, t, cfg.latent_tokens, cfg.latent_dim, generator=g)
    discrete = torch.stack([torch.randint(-1, n, (b, t), generator=g) for n in cfg.num_discrete_actions], -1)
    continuous = torch.randn(b, t, cfg.num_continuous_actions, generator=g)
    continuous[0, 4, 1] = float("nan")  # one missing label
    return latents, discrete, continuous


@pytest.mark.parametrize("context_length,t_ctx,num_steps", [(6, 3, 4), (6, 8, 2), (1, 2, 1), (3, 0, 8)])
def test_cached_rollout_equals_full_recomputation(context_length, t_ctx, num_steps):
    """Horizons beyond C exercise cache trimming; C = 1 (no time context) and no context are edge cases."""
    model = make(context_length=context_length)
    latents, discrete, continuous = episode(model.config)
    horizon = 12 - t_ctx
    runs = []
    for use_cache in (True, False):
        runs.append(
            rollout(
                model,
                latents[:, :t_ctx],
                horizon,
                actions_discrete=discrete,
                actions_continuous=continuous,
                num_steps=num_steps,
                use_cache=use_cache,
                generator=torch.Generator().manual_seed(7),
            )
        )
    assert runs[0].shape == (2, horizon, model.config.latent_tokens, model.config.latent_dim)
    torch.testing.assert_close(runs[0], runs[1], atol=1e-5, rtol=1e-5)


def _step_through(model, latents, discrete, continuous, t_ctx, use_cache, schedule=None, drop=()):
    """A RolloutStepper fed one frame's actions at a time; frames in `drop` get none (missing labels)."""
    stepper = RolloutStepper(
        model,
        latents[:, :t_ctx],
        actions_discrete=discrete[:, :t_ctx],
        actions_continuous=continuous[:, :t_ctx],
        use_cache=use_cache,
        generator=torch.Generator().manual_seed(11),
    )
    frames = []
    for i, t in enumerate(range(t_ctx, discrete.shape[1])):
        assert stepper.position == t
        if schedule is not None:
            stepper.num_steps = schedule[i]
        acts = (
            {} if t in drop else {"actions_discrete": discrete[:, t], "actions_continuous": continuous[:, t]}
        )
        frames.append(stepper.step(**acts))
    return torch.stack(frames, 1)


def test_cached_stepper_equals_recomputation_far_past_the_window():
    """15 frames with C = 3: the cache slides five times over; frames without actions take missing labels."""
    model = make(context_length=3)
    latents, discrete, continuous = episode(model.config, t=17)
    runs = [
        _step_through(model, latents, discrete, continuous, 2, use_cache, drop=(6, 7, 12))
        for use_cache in (True, False)
    ]
    assert runs[0].shape == (2, 15, model.config.latent_tokens, model.config.latent_dim)
    torch.testing.assert_close(runs[0], runs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_cache", [True, False])
def test_rollout_is_the_stepper_one_frame_at_a_time(use_cache):
    model = make(context_length=4)
    latents, discrete, continuous = episode(model.config)
    stepped = _step_through(model, latents, discrete, continuous, 3, use_cache)
    whole = rollout(
        model,
        latents[:, :3],
        9,
        actions_discrete=discrete,
        actions_continuous=continuous,
        use_cache=use_cache,
        generator=torch.Generator().manual_seed(11),
    )
    assert torch.equal(stepped, whole)


def test_num_steps_may_change_between_steps():
    """Each frame is sampled with the K set before its step (d = 1/K); cache == recomputation."""
    model = make(context_length=4)
    latents, discrete, continuous = episode(model.config, t=8)
    schedule = [4, 1, 2, 8, 2]
    step_sizes = []
    model.register_forward_pre_hook(lambda m, args: step_sizes.append(args[2][0, -1].item()))
    reference = _step_through(model, latents, discrete, continuous, 3, False, schedule)
    assert step_sizes == [1 / k for k in schedule for _ in range(k)]
    cached = _step_through(model, latents, discrete, continuous, 3, True, schedule)
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)
    fixed = _step_through(model, latents, discrete, continuous, 3, True)  # K = 4 throughout
    assert torch.equal(cached[:, 0], fixed[:, 0]) and (cached[:, 1] - fixed[:, 1]).abs().max() > 1e-4


def test_stepper_refuses_bad_steps():
    model = make()
    latents, discrete, _ = episode(model.config)
    with pytest.raises(ValueError, match="cover the T_ctx = 3 context frames"):
        RolloutStepper(model, latents[:, :3], actions_discrete=discrete)
    stepper = RolloutStepper(model, latents[:, :3])
    with pytest.raises(ValueError, match="one frame's actions"):
        stepper.step(actions_discrete=discrete[:, :1])
    stepper.num_steps = 3
    with pytest.raises(ValueError, match="num_steps"):
        stepper.step()


def test_context_signal_level_is_snapped_noise_amount():
    assert context_signal_level(0.1, 64) == round(0.9 * 64) / 64 == 58 / 64
    assert context_signal_level(0.1, 8) == 7 / 8
    assert context_signal_level(0.0, 8) == 7 / 8  # never 1: the cleanest level training draws
    assert context_signal_level(0.1, 4) == 3 / 4 and context_signal_level(0.1, 1) == 0.0
    with pytest.raises(ValueError, match="context_noise"):
        context_signal_level(1.5, 8)


@pytest.mark.parametrize("k_max", [1, 2, 4, 16, 64])
@pytest.mark.parametrize("context_noise", [0.0, 0.1])
def test_rollout_context_labels_are_the_training_prefix_labels(k_max, context_noise):
    """The labels a rollout gives its context frames (read where the real network embeds them) are those the
    training context prefix gives its first frames, and below 1: tau = 1 is never a training level."""
    from dreamer_dynamics.module import DynamicsModule
    from dreamer_dynamics.training.config import ObjectiveConfig

    module = DynamicsModule(
        DynamicsConfig.debug(k_max=k_max),
        objective=ObjectiveConfig(context_prefix_frames=2),
        rollout=RolloutConfig(context_noise=context_noise),
    )
    batch = {"latents": torch.zeros(4, 6, 8, 4)}
    train_tau, train_d = module.sample_signal_and_step(batch, torch.Generator().manual_seed(0))
    prefix = set(zip(train_tau[:, :2].flatten().tolist(), train_d[:, :2].flatten().tolist()))
    assert len(prefix) == 1 and next(iter(prefix))[0] < 1

    model = module.model.eval()
    latents, _, _ = episode(model.config, t=5)
    for use_cache in (True, False):
        calls = []
        hook = model.shortcut.register_forward_pre_hook(lambda m, args: calls.append(args))
        rollout(
            model,
            latents[:, :3],
            2,
            num_steps=1,
            context_noise=context_noise,
            use_cache=use_cache,
            generator=torch.Generator().manual_seed(0),
        )
        hook.remove()
        # cached: the first call embeds the 3 context frames; uncached: every call holds them first
        context_calls = calls[:1] if use_cache else calls
        for tau, d in context_calls:
            got = set(zip(tau[:, :3].flatten().tolist(), d[:, :3].flatten().tolist()))
            assert got == prefix, (use_cache, got, prefix)


def test_sampling_loop_feeds_the_documented_levels():
    """Uncached path: every call sees the context labelled (tau_ctx, d_min), the new frame (i/K, 1/K)."""
    model = make()
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append((args[1].clone(), args[2].clone())))
    latents, _, _ = episode(model.config)
    rollout(
        model, latents[:, :3], 2, num_steps=4, use_cache=False, generator=torch.Generator().manual_seed(0)
    )
    tau_ctx, d_min = 7 / 8, 1 / 8  # debug config: k_max = 8, context_noise 0.1
    assert len(calls) == 2 * 4
    for i, (tau, d) in enumerate(calls):
        frames = tau.shape[1]
        assert frames == 3 + i // 4 + 1
        assert (tau[:, :-1] == tau_ctx).all() and (d[:, :-1] == d_min).all()
        assert (tau[:, -1] == (i % 4) / 4).all() and (d[:, -1] == 0.25).all()


def test_committed_frames_are_renoised_to_the_context_level():
    """A generated frame enters the context as tau_ctx * frame + (1 - tau_ctx) * fresh noise (docs/design.md
    §5), like the given context: the network never sees a clean committed frame, which training never shows
    it. The input at a committed position, minus tau_ctx times the returned frame, is that noise: N(0, 1)
    after dividing by 1 - tau_ctx, and uncorrelated with the frame."""
    model = make()
    latents, _, _ = episode(model.config, b=16)
    inputs = []
    model.register_forward_pre_hook(lambda m, args: inputs.append(args[0].clone()))
    out = rollout(
        model, latents[:, :3], 3, num_steps=1, use_cache=False, generator=torch.Generator().manual_seed(0)
    )
    tau_ctx = 7 / 8  # debug config: k_max = 8, context_noise 0.1
    committed = inputs[-1][:, 3:5]  # the last call sees frames 3 and 4 as context
    frames = out[:, :2]
    assert not torch.allclose(committed, frames, atol=1e-3), "committed frames enter the context clean"
    noise = (committed - tau_ctx * frames) / (1 - tau_ctx)
    assert noise.mean().abs() < 0.05 and 0.9 < noise.std() < 1.1  # 1024 values: +-0.03 on the mean
    correlation = torch.corrcoef(torch.stack((noise.flatten(), frames.flatten())))[0, 1]
    assert correlation.abs() < 0.1


def test_one_step_rollout_is_the_x_prediction_from_noise():
    """K = 1: the new frame is f(noise, tau=0, d=1) given the corrupted context (generator order: context
    noise, then the new frame's noise)."""
    model = make()
    latents, _, _ = episode(model.config)
    context = latents[:, :3]
    got = rollout(model, context, 1, num_steps=1, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    ctx_noise = torch.randn(context.shape, generator=g)
    tau_ctx = 7 / 8
    corrupted = (1 - tau_ctx) * ctx_noise + tau_ctx * context
    z0 = torch.randn(2, 1, *context.shape[2:], generator=g)
    tau = torch.tensor([[tau_ctx] * 3 + [0.0]] * 2)
    d = torch.tensor([[1 / 8] * 3 + [1.0]] * 2)
    expected = model(torch.cat((corrupted, z0), 1), tau, d)[:, -1:]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_future_actions_steer_the_rollout():
    model = make()
    latents, discrete, _ = episode(model.config)
    other = discrete.clone()
    other[:, 5:, 0] = (other[:, 5:, 0] + 1) % model.config.num_discrete_actions[0]
    a, b = (
        rollout(
            model, latents[:, :3], 4, actions_discrete=acts[:, :7], generator=torch.Generator().manual_seed(0)
        )
        for acts in (discrete, other)
    )
    torch.testing.assert_close(a[:, :2], b[:, :2])  # frames 3, 4: actions unchanged so far
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-4


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_each_generated_frame_is_conditioned_on_its_own_action(use_cache, kind):
    """actions[t] led from frame t-1 to frame t (docs/design.md §6), so it is fed with frame t: changing only
    the action of frame 5 leaves frames 3 and 4 unchanged and changes frame 5 itself (an action fed one frame
    late would first change frame 6; one fed early would change frame 4)."""
    model = make()
    latents, discrete, continuous = episode(model.config, t=8)
    actions = (discrete if kind == "discrete" else continuous.nan_to_num())[:, :7]
    other = actions.clone()
    if kind == "discrete":
        other[:, 5, 0] = (other[:, 5, 0] + 1) % model.config.num_discrete_actions[0]
    else:
        other[:, 5] += 3.0
    a, b = (
        rollout(
            model,
            latents[:, :3],
            4,
            use_cache=use_cache,
            generator=torch.Generator().manual_seed(0),
            **{f"actions_{kind}": acts},
        )
        for acts in (actions, other)
    )  # frames 3, 4, 5, 6
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=0, rtol=0)
    assert (a[:, 2] - b[:, 2]).abs().max() > 1e-4, "frame 5 does not see its own action"


def test_cache_is_bounded_by_the_window():
    cache = TimeKVCache(context_length=4)
    for step in range(6):
        kv = [(torch.full((2, 1, 1, 3), float(step)), torch.full((2, 1, 1, 3), float(step)))]
        cache.append(kv)
        assert cache.num_frames == min(step + 1, 3)
    assert cache.layers[0][0][0, 0, :, 0].tolist() == [3.0, 4.0, 5.0]  # the newest C - 1 frames, in order


def test_bad_rollout_arguments_raise():
    model = make()
    latents, discrete, _ = episode(model.config)
    with pytest.raises(ValueError, match="num_steps"):
        rollout(model, latents[:, :3], 2, num_steps=3)
    with pytest.raises(ValueError, match="num_steps"):
        rollout(model, latents[:, :3], 2, num_steps=16)  # > k_max = 8
    with pytest.raises(ValueError, match="cover T_ctx"):
        rollout(model, latents[:, :3], 2, actions_discrete=discrete)
    with pytest.raises(ValueError, match="context must have shape"):
        rollout(model, latents[:, :3, :, :2], 2)


# ------------------------------------------- DynamicsTransformer.rollout (data units) ergonomics
def _module():
    from dreamer_dynamics.module import DynamicsModule

    torch.manual_seed(0)
    return DynamicsModule(DynamicsConfig.debug(num_discrete_actions=(3,), num_continuous_actions=0, k_max=4))


def test_module_rollout_accepts_numpy_and_2d_discrete_actions_in_eval_no_grad():
    import numpy as np

    module = _module().train()
    modes = []
    module.model.blocks[0].register_forward_pre_hook(
        lambda m, a: modes.append((m.training, torch.is_grad_enabled()))
    )
    context = np.random.default_rng(0).standard_normal((2, 3, 8, 4)).astype(np.float32)
    actions = np.random.default_rng(1).integers(0, 3, (2, 5))  # [B, T]: one categorical component
    out = module.model.rollout(
        context, 2, actions_discrete=actions, generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(out, np.ndarray) and out.shape == (2, 2, 8, 4)
    assert modes and set(modes) == {(False, False)}  # every network call in eval mode, without autograd
    assert module.training and module.model.training  # the caller's mode is restored
    reference = module.eval().model.rollout(
        torch.from_numpy(context),
        2,
        actions_discrete=torch.from_numpy(actions)[..., None],
        generator=torch.Generator().manual_seed(0),
    )
    assert not reference.requires_grad
    assert torch.equal(torch.from_numpy(out), reference)  # [B, T] == [B, T, 1], eval mode (no dropout etc.)


def test_module_rollout_refuses_missing_actions_unless_unconditional():
    module = _module()
    context = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="action-conditioned.*unconditional=True"):
        module.model.rollout(context, 1)
    assert module.model.rollout(context, 1, unconditional=True).shape == (1, 1, 8, 4)
