"""The CUDA paths (docs/design.md §4-5): compiled FlexAttention forward and backward, bf16 autocast training
steps and KV-cached rollouts on a GPU agree with the fp32 reference paths. Skipped without a CUDA device."""

import pytest
import torch

from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer, TimeKVCache, rollout
from dreamer_dynamics.model.attention import HAS_FLEX, AttentionMask, attend
from dreamer_dynamics.model.static_cache import StaticKVCache
from dreamer_dynamics.model.transformer import time_attention_mask
from dreamer_dynamics.objective import sample_signal_and_step, shortcut_forcing_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    """fp32 comparisons need fp32 matmuls (TF32 rounds to 10 mantissa bits); restored after each test."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def qkv(n, hq, hkv, length, e, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(n, hq, length, e), (n, hkv, length, e), (n, hkv, length, e)]
    return [(3 * torch.randn(s, generator=g)).to(CUDA).requires_grad_() for s in shapes]


@pytest.mark.skipif(not HAS_FLEX, reason="FlexAttention needs torch >= 2.5")
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_compiled_flex_matches_math_forward_and_backward(softcap):
    """The training path on a GPU: torch.compile'd FlexAttention with the soft-cap score_mod and the causal
    window / image-row block mask, against the plain masked softmax, values and gradients."""
    t, window = 16, 5
    pos = torch.arange(t, device=CUDA)
    dense = time_attention_mask(pos, pos, window, torch.tensor([True, False, False, True], device=CUDA))
    results = {}
    for backend in ("flex", "math"):
        q, k, v = qkv(n=4, hq=8, hkv=2, length=t, e=32)
        out = attend(q, k, v, mask=AttentionMask(dense), softcap=softcap, backend=backend)
        out.square().sum().backward()
        results[backend] = (out.detach(), q.grad, k.grad, v.grad)
    for got, want in zip(results["flex"], results["math"]):  # the kernels sum in different orders
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


def model_and_batch(backend, softcap=5.0):
    torch.manual_seed(0)  # head_dim 16: the narrowest heads the compiled FlexAttention kernel takes
    cfg = DynamicsConfig.debug(heads=2, kv_heads=1, attention_softcap=softcap, attention_backend=backend)
    model = DynamicsTransformer(cfg).to(CUDA)
    g = torch.Generator().manual_seed(1)
    b, t = 4, 8  # t > context_length: the window mask is active
    z1 = torch.randn(b, t, cfg.latent_tokens, cfg.latent_dim, generator=g).to(CUDA)
    tau, d = sample_signal_and_step(b, t, cfg.k_max, generator=g)
    z0 = torch.randn(z1.shape, generator=g).to(CUDA)
    acts = torch.stack([torch.randint(0, n, (b, t), generator=g) for n in cfg.num_discrete_actions], -1)
    cont = torch.randn(b, t, cfg.num_continuous_actions, generator=g)
    cond = {"actions_discrete": acts.to(CUDA), "actions_continuous": cont.to(CUDA)}
    return model, (z1, tau.to(CUDA), d.to(CUDA)), z0, cond


def loss_and_grads(backend, dtype):
    model, (z1, tau, d), z0, cond = model_and_batch(backend)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out = shortcut_forcing_loss(model, z1, tau, d, d_min=model.config.d_min, z0=z0, **cond)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out.loss.detach(), grads


def test_training_step_flex_matches_math_and_bf16_tracks_fp32():
    """The whole shortcut-forcing step (student, bootstrap teacher passes, backward) on the GPU: flex and math
    give the same loss and gradients in fp32; under bf16 autocast both stay within bf16 error of fp32."""
    loss_math, grads_math = loss_and_grads("math", torch.float32)
    loss_flex, grads_flex = loss_and_grads("flex" if HAS_FLEX else "math", torch.float32)
    torch.testing.assert_close(loss_flex, loss_math, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads_flex, grads_math, atol=1e-4, rtol=1e-3)
    for backend in ("math", "flex") if HAS_FLEX else ("math",):
        loss_bf16, grads_bf16 = loss_and_grads(backend, torch.bfloat16)
        assert torch.isfinite(grads_bf16).all()
        assert abs(loss_bf16.item() - loss_math.item()) < 0.05 * loss_math.item()
        cosine = torch.nn.functional.cosine_similarity(grads_bf16.float(), grads_math, dim=0)
        assert cosine > 0.98, (backend, cosine.item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_rollout_on_gpu_equals_recomputation(dtype):
    """KV-cached rollouts on the GPU (the single-query decode path) match full recomputation, in fp32 and in
    bf16 weights (the inference setting of benchmarks/gpu.py). The debug model's 8-wide heads are narrower
    than the compiled FlexAttention kernel takes: ``auto`` must route the recomputation to the math path."""
    torch.manual_seed(0)
    model = DynamicsTransformer(DynamicsConfig.debug(attention_softcap=5.0)).to(CUDA, dtype).eval()
    cfg = model.config
    g = torch.Generator().manual_seed(2)
    context = torch.randn(2, 3, cfg.latent_tokens, cfg.latent_dim, generator=g).to(CUDA, dtype)
    acts = torch.stack([torch.randint(0, n, (2, 12), generator=g) for n in cfg.num_discrete_actions], -1)
    cont = torch.randn(2, 12, cfg.num_continuous_actions, generator=g)
    runs = []
    for use_cache in (True, False):
        with torch.no_grad():
            runs.append(
                rollout(
                    model,
                    context,
                    9,
                    actions_discrete=acts.to(CUDA),
                    actions_continuous=cont.to(CUDA, dtype),
                    num_steps=4,
                    use_cache=use_cache,
                    generator=torch.Generator(CUDA).manual_seed(7),
                ).float()
            )
    assert torch.isfinite(runs[0]).all()
    tol = 1e-4 if dtype == torch.float32 else 0.1  # bf16: different kernel sums round differently
    torch.testing.assert_close(runs[0], runs[1], atol=tol, rtol=tol)


def test_decode_step_replays_as_a_cuda_graph():
    """The per-frame decode step (one new frame against a full KV cache, benchmarks/decode_speed.py) holds no
    host sync, so it captures as one CUDA graph (the space attention through the compiled FlexAttention kernel
    with it); replays with new inputs copied into the captured ones equal the eager step."""
    torch.manual_seed(0)  # head_dim 16: space attention takes the compiled FlexAttention kernel
    cfg = DynamicsConfig.debug(heads=2, kv_heads=1, attention_softcap=5.0, check_inputs=False)
    model = DynamicsTransformer(cfg).to(CUDA).eval()
    past, g = cfg.context_length - 1, torch.Generator().manual_seed(3)

    def frames(t):  # latents, tau, d, discrete and continuous actions of t frames, batch 2
        z = torch.randn(2, t, cfg.latent_tokens, cfg.latent_dim, generator=g)
        tau = torch.randint(0, cfg.k_max, (2, t), generator=g) / cfg.k_max
        d = torch.full((2, t), cfg.d_min)
        acts = torch.stack([torch.randint(0, n, (2, t), generator=g) for n in cfg.num_discrete_actions], -1)
        cont = torch.randn(2, t, cfg.num_continuous_actions, generator=g)
        return [x.to(CUDA) for x in (z, tau, d, acts, cont)]

    def step(z, tau, d, acts, cont, cache):
        return model.forward_frames(
            z, tau, d, actions_discrete=acts, actions_continuous=cont, past_kv=cache, start=past
        )[0]

    with torch.no_grad():
        z, tau, d, acts, cont = frames(past)
        _, cache = model.forward_frames(z, tau, d, actions_discrete=acts, actions_continuous=cont)
        static = frames(1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: compiles the kernel, fills the allocator's pools
            for _ in range(3):
                step(*static, cache)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step(*static, cache)
        for _ in range(2):
            new = frames(1)
            for buffer, value in zip(static, new):
                buffer.copy_(value)
            graph.replay()
            torch.testing.assert_close(out, step(*new, cache), atol=1e-5, rtol=1e-5)


def test_ring_cache_decode_replays_as_one_cuda_graph_at_every_position():
    """One captured graph (a denoiser call, the commit of a frame, its write into the StaticKVCache ring, the
    position's advance) replayed frame after frame gives what the growing TimeKVCache gives eagerly."""
    torch.manual_seed(0)
    cfg = DynamicsConfig.debug(heads=2, kv_heads=1, attention_softcap=5.0, check_inputs=False)
    model = DynamicsTransformer(cfg).to(CUDA).eval()
    g = torch.Generator().manual_seed(4)
    context, total = cfg.context_length - 1, cfg.context_length + 6
    z = torch.randn(2, total, cfg.latent_tokens, cfg.latent_dim, generator=g).to(CUDA)
    noise = torch.randn(2, total, cfg.latent_tokens, cfg.latent_dim, generator=g).to(CUDA)
    acts = torch.stack([torch.randint(0, n, (2, total), generator=g) for n in cfg.num_discrete_actions], -1)
    acts = acts.to(CUDA)
    level, d = torch.full((2, 1), 0.875, device=CUDA), torch.full((2, 1), cfg.d_min, device=CUDA)
    with torch.no_grad():
        lv, dv = level.expand(2, context), d.expand(2, context)
        _, kv = model.forward_frames(z[:, :context], lv, dv, actions_discrete=acts[:, :context])
        cache = TimeKVCache(cfg.context_length)
        cache.append(kv)
        ring = StaticKVCache([(k.clone(), v.clone()) for k, v in cache.layers], context)
        static = [noise[:, context : context + 1].clone(), z[:, context : context + 1].clone()]
        static.append(acts[:, context : context + 1].clone())

        def step():  # denoise the noise frame, then commit the clean one
            x1_hat = model.forward_frames(
                static[0], level * 0, d, past_kv=ring.layers, start=ring.position, actions_discrete=static[2]
            )[0]
            _, new = model.forward_frames(
                static[1], level, d, past_kv=ring.layers, start=ring.position, actions_discrete=static[2]
            )
            ring.write(new)
            return x1_hat

        def rewind():  # the ring as it was before any step, in the buffers the graph reads and writes
            for (keys, values), (k0, v0) in zip(ring.layers, StaticKVCache(cache.layers, context).layers):
                keys.copy_(k0)
                values.copy_(v0)
            ring.position.fill_(context)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: compiles the space attention kernel
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
        rewind()
        for p in range(context, total):
            frame = {"actions_discrete": acts[:, p : p + 1]}
            for buffer, value in zip(static, (noise[:, p : p + 1], z[:, p : p + 1], acts[:, p : p + 1])):
                buffer.copy_(value)
            graph.replay()
            want = model.forward_frames(
                noise[:, p : p + 1], level * 0, d, past_kv=cache.layers, start=p, **frame
            )
            torch.testing.assert_close(out, want[0], atol=1e-5, rtol=1e-5)
            cache.append(
                model.forward_frames(z[:, p : p + 1], level, d, past_kv=cache.layers, start=p, **frame)[1]
            )
    assert int(ring.position) == total
