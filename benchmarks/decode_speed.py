"""Rollout speed of the paper-scale model: the ``rollout`` stage of ``benchmarks/device_run.py``.

Two kinds of figure, for `DynamicsConfig.minecraft()` in bf16 weights (`--smoke`: the debug model in fp32):

* rollouts: ``rollout()`` of ``horizon`` frames after ``context_frames`` context frames, K Euler steps per
  frame, batch B: frames/s = B x horizon / seconds, ms/frame = 1000 x seconds / horizon (the B frames of
  one time step are generated together).
* the per-frame decode step: one ``forward_frames`` call for one new frame against a full KV cache (C - 1
  frames: the steady state of a long rollout), run eagerly, replayed as a CUDA graph of the eager step, and
  compiled with ``torch.compile(mode="reduce-overhead")``. A generated frame costs K + 1 steps (K Euler steps
  and the commit of the frame to the cache), so ms/frame = (K + 1) x the step's ms.

* frames decoded against the ``StaticKVCache`` ring (dreamer_dynamics/model/static_cache.py) at advancing
  positions: K denoiser calls and the commit per frame, each replayed as a CUDA graph.

Every faster variant of the step is checked against the eager step's output, and cached rollouts against
recomputation (``use_cache=False``), as relative L2 errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from benchmarks.common import peak_memory, time_fn
from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer, rollout
from dreamer_dynamics.model.static_cache import StaticKVCache

ACTIONS = 17  # one categorical action component (the Minecraft layout of benchmarks/gpu.py)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.05}  # relative L2 error accepted as equal


def decode_config(smoke: bool) -> DynamicsConfig:
    """The measured model; no input checks, whose host syncs a CUDA graph cannot hold."""
    if smoke:
        return DynamicsConfig.debug(
            num_continuous_actions=0, num_discrete_actions=(ACTIONS,), check_inputs=False
        )
    return DynamicsConfig.minecraft(num_discrete_actions=(ACTIONS,), check_inputs=False)


def build_model(config: DynamicsConfig, device: torch.device, dtype: torch.dtype) -> DynamicsTransformer:
    torch.manual_seed(0)
    with device:  # initialised in place: 1.6B parameters are slow to initialise on the CPU
        model = DynamicsTransformer(config)
    return model.to(dtype).eval()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


def full_cache(model: DynamicsTransformer, batch: int, seed: int = 0) -> list:
    """Random keys/values of C - 1 frames for every time layer, (B, S*Hkv, C-1, E) each, marked static (a
    compiled CUDA graph reads them in place instead of copying them into its own buffers)."""
    cfg, weight = model.config, model.latent_in.weight
    shape = (batch, cfg.tokens_per_frame * cfg.kv_heads, cfg.context_length - 1, cfg.head_dim)
    gen = torch.Generator(weight.device).manual_seed(seed)
    cache = []
    for _ in range(sum(cfg.is_time_layer(i) for i in range(cfg.depth))):
        kv = tuple(torch.randn(shape, generator=gen, device=weight.device, dtype=weight.dtype) for _ in "kv")
        for tensor in kv:
            torch._dynamo.mark_static_address(tensor)
        cache.append(kv)
    return cache


def step_inputs(model: DynamicsTransformer, batch: int, seed: int = 1) -> tuple:
    """(z, tau, d, actions) of one new frame: noise at tau = 0, the first Euler step of K = 4."""
    cfg, weight = model.config, model.latent_in.weight
    gen = torch.Generator(weight.device).manual_seed(seed)
    z = torch.randn(batch, 1, cfg.latent_tokens, cfg.latent_dim, generator=gen, device=weight.device)
    tau = torch.zeros(batch, 1, device=weight.device)
    d = torch.full((batch, 1), 0.25 if cfg.k_max >= 4 else 1.0, device=weight.device)
    acts = torch.randint(0, ACTIONS, (batch, 1, 1), generator=gen, device=weight.device)
    return z.to(weight.dtype), tau, d, acts


def decode_step(model: DynamicsTransformer, cache: list) -> Callable:
    """f(z, tau, d, acts) -> x1_hat of one new frame at position C - 1, after the C - 1 cached frames."""
    position = model.config.context_length - 1

    def step(z, tau, d, acts):
        return model.forward_frames(z, tau, d, past_kv=cache, start=position, actions_discrete=acts)[0]

    return step


def cuda_graph(fn: Callable, inputs: tuple) -> Callable:
    """``fn`` captured as one CUDA graph on ``inputs`` (static: replays read them in place) -> replay()."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream: lazy inits, allocator pools, autotuning
        for _ in range(3):
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn(*inputs)

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return replay


def compiled(fn: Callable, inputs: tuple, smoke: bool) -> Callable:
    """``torch.compile(mode="reduce-overhead")`` of ``fn`` as one graph (a graph break fails: a CUDA graph
    cannot hold a host sync) -> call(). On CPU, for the plumbing only: dynamo with the eager backend."""
    if smoke:
        step = torch.compile(fn, backend="eager", dynamic=False, fullgraph=True)
    else:
        step = torch.compile(fn, mode="reduce-overhead", dynamic=False, fullgraph=True)

    def call() -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # a new step: earlier outputs may be overwritten
        return step(*inputs)

    return call


def measure_step(
    model: DynamicsTransformer, batch: int, ks: list, names: tuple, smoke: bool, repeat: int
) -> dict:
    """The decode step at ``batch`` for each variant in ``names`` (eager, cuda_graph, compiled): the step's
    ms, ms/frame and frames/s per K, the relative error against the eager step, peak memory."""
    device = model.latent_in.weight.device
    cache, inputs = full_cache(model, batch), step_inputs(model, batch)
    step = decode_step(model, cache)
    builders = {
        "eager": lambda: lambda: step(*inputs),
        "cuda_graph": lambda: cuda_graph(step, inputs),
        "compiled": lambda: compiled(step, inputs, smoke),
    }
    result: dict = {}
    with torch.no_grad():
        want = step(*inputs).clone()
        for name in names:
            figures: dict = {"batch": batch, "cache_frames": model.config.context_length - 1}
            result[name] = figures
            try:
                start = time.perf_counter()
                fn = builders[name]()
                figures["error"] = relative_error(fn().clone(), want)  # the first call compiles / records
                figures["setup_s"] = time.perf_counter() - start
                with peak_memory(device) as memory:
                    timing = time_fn(fn, repeat=repeat, warmup=1, device=device)
                figures.update(step_ms=1000 * timing.best, step_ms_median=1000 * timing.median, memory=memory)
                for k in ks:
                    ms = (k + 1) * figures["step_ms"]
                    figures[f"k{k}"] = {"ms_per_frame": ms, "frames_per_s": 1000 * batch / ms}
            except Exception as error:  # noqa: BLE001 - a failed variant is reported; the others still run
                figures["failed"] = f"{type(error).__name__}: {error}"[:2000]
    return result


def measure_ring(model: DynamicsTransformer, batch: int, ks: list, repeat: int) -> dict:
    """Frames decoded against the ``StaticKVCache`` ring at advancing positions: per frame K denoiser calls
    and the commit (its forward and the ring's write), each one CUDA graph (on CPU the plain calls, for the
    plumbing); ms/frame and frames/s per K, the first denoiser call's error against the growing cache."""
    device = model.latent_in.weight.device
    layers = full_cache(model, batch)
    z, tau, d, acts = step_inputs(model, batch)
    want = decode_step(model, layers)(z, tau, d, acts)  # position C - 1 after the same C - 1 frames
    ring = StaticKVCache(layers, model.config.context_length - 1)
    del layers
    level = torch.full_like(tau, 1.0 - 1.0 / 8)  # committed frames at tau_ctx (on the grid for k_max >= 8)
    d_min = torch.full_like(d, model.config.d_min)

    def denoise() -> torch.Tensor:
        return model.forward_frames(
            z, tau, d, past_kv=ring.layers, start=ring.position, actions_discrete=acts
        )[0]

    def commit() -> None:
        kv = model.forward_frames(
            z, level, d_min, past_kv=ring.layers, start=ring.position, actions_discrete=acts
        )
        ring.write(kv[1])

    result: dict = {"batch": batch}
    try:
        with torch.no_grad():
            if device.type == "cuda":
                denoise = cuda_graph(denoise, ())
                result["error"] = relative_error(denoise().clone(), want)  # before any commit moved the ring
                commit = cuda_graph(commit, ())
            else:
                result["error"] = relative_error(denoise(), want)
            for k in ks:
                with peak_memory(device) as memory:
                    timing = time_fn(
                        lambda: [denoise() for _ in range(k)] + [commit()], repeat=repeat, device=device
                    )
                ms = 1000 * timing.best
                result[f"k{k}"] = {"ms_per_frame": ms, "frames_per_s": 1000 * batch / ms, "memory": memory}
    except Exception as error:  # noqa: BLE001 - reported; the stage goes on
        result["failed"] = f"{type(error).__name__}: {error}"[:2000]
    return result


def measure_rollout(
    model: DynamicsTransformer, batch: int, k: int, horizon: int, context_frames: int
) -> dict:
    """One eager ``rollout()`` after a two-frame warm-up: frames/s, ms/frame, peak memory."""
    cfg, device = model.config, model.latent_in.weight.device
    gen = torch.Generator(device).manual_seed(0)
    shape = (batch, context_frames, cfg.latent_tokens, cfg.latent_dim)
    context = torch.randn(shape, generator=gen, device=device).to(model.latent_in.weight.dtype)
    acts = torch.randint(0, ACTIONS, (batch, context_frames + horizon, 1), generator=gen, device=device)

    def generate(frames: int) -> None:
        rollout(
            model,
            context,
            frames,
            actions_discrete=acts[:, : context_frames + frames],
            num_steps=k,
            generator=torch.Generator(device).manual_seed(1),
        )

    generate(2)
    with peak_memory(device) as memory:
        timing = time_fn(lambda: generate(horizon), repeat=1, warmup=0, device=device)
    return {
        "batch": batch,
        "k": k,
        "horizon": horizon,
        "context_frames": context_frames,
        "seconds": timing.best,
        "frames_per_s": batch * horizon / timing.best,
        "ms_per_frame": 1000 * timing.best / horizon,
        "memory": memory,
    }


def cached_equals_uncached(model: DynamicsTransformer, horizon: int = 3, k: int = 2) -> dict:
    """A short rollout with the KV cache against recomputation of the whole sequence (the reference)."""
    cfg, weight = model.config, model.latent_in.weight
    gen = torch.Generator(weight.device).manual_seed(2)
    context = torch.randn(1, 4, cfg.latent_tokens, cfg.latent_dim, generator=gen, device=weight.device)
    acts = torch.randint(0, ACTIONS, (1, 4 + horizon, 1), generator=gen, device=weight.device)
    runs = [
        rollout(
            model,
            context.to(weight.dtype),
            horizon,
            actions_discrete=acts,
            num_steps=k,
            use_cache=use_cache,
            generator=torch.Generator(weight.device).manual_seed(3),
        )
        for use_cache in (True, False)
    ]
    error = relative_error(runs[0], runs[1])
    tolerance = TOLERANCE[weight.dtype]
    return {"relative_error": error, "tolerance": tolerance, "equal": error <= tolerance}


def run_stage(smoke: bool, report: dict, save: Callable[[], None]) -> None:
    """Fill ``report``, calling ``save`` after each figure (a stage stopped at its time cap keeps what it
    measured): cached vs uncached, the decode step eager and as a CUDA graph, eager rollouts, and last the
    compiled step (its compilation is the slowest part)."""
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    batches, ks = ([2], [1, 2, 4]) if smoke else ([1, 16, 8], [1, 2, 4])
    horizon, context_frames, repeat = (2, 2, 2) if smoke else (8, 8, 10)
    config = decode_config(smoke)
    model = build_model(config, device, dtype)
    report.update(
        params=sum(p.numel() for p in model.parameters()),
        dtype=str(dtype).split(".")[-1],
        context_length=config.context_length,
        cached_vs_uncached=cached_equals_uncached(model),
        steps={},
        ring={},
        rollouts=[],
    )
    save()
    plain = ("eager", "cuda_graph") if device.type == "cuda" else ("eager",)
    for batch in batches:
        report["steps"][str(batch)] = measure_step(model, batch, ks, plain, smoke, repeat)
        save()
    for batch in batches:
        report["ring"][str(batch)] = measure_ring(model, batch, ks, repeat)
        save()
    for batch in batches:
        for k in ks:
            report["rollouts"].append(measure_rollout(model, batch, k, horizon, context_frames))
            save()
    for batch in batches:
        report["steps"][str(batch)].update(measure_step(model, batch, ks, ("compiled",), smoke, repeat))
        save()
