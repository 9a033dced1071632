"""Shared helpers of the benchmarks: timing, the matmul peak, peak memory, analytic FLOP counts, JSON output.

Timing rules (the CPU machines are shared and noisy): every figure is the best (and median) of N repeats after
a warm-up, threads are pinned with `torch.set_num_threads`, and the figures that matter are ratios of variants
timed in the same run (achieved FLOP/s over the fp32 matmul peak measured in the same process, shortcut step
over flow-only step, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from dreamer_dynamics.model import DynamicsConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The benchmarks' reference model (6.1 M parameters at 16 x 48 latents), fixed here so the published figures
# stay comparable when the quickstart preset (DynamicsConfig defaults) is retuned.
MEDIUM = dict(
    latent_tokens=16,
    latent_dim=48,
    pack_factor=1,
    dim=256,
    depth=8,
    heads=4,
    kv_heads=2,
    time_every=4,
    context_length=16,
    num_registers=4,
    action_tokens=1,
    k_max=64,
)


def medium_config(**overrides) -> DynamicsConfig:
    """The benchmarks' reference model (``MEDIUM``) with ``overrides``."""
    return DynamicsConfig(**{**MEDIUM, **overrides})


def step_config(smoke: bool, medium: dict | None = None, **both) -> DynamicsConfig:
    """The step benchmarks' network, one 5-way action: debug for ``smoke``, else ``medium_config`` at 16 x 32
    latents with ``medium``; ``both`` goes to either."""
    if smoke:
        return DynamicsConfig.debug(num_continuous_actions=0, num_discrete_actions=(5,), **both)
    return medium_config(latent_tokens=16, latent_dim=32, num_discrete_actions=(5,), **(medium or {}), **both)


# ----------------------------------------------------------------------------------------------- timing
@dataclasses.dataclass
class Timing:
    """Wall-clock seconds of repeated calls."""

    best: float  # fastest repeat: the least disturbed by other processes
    median: float  # typical repeat
    repeats: list  # every repeat, in order


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1, device: torch.device = torch.device("cpu")
) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeat` times timed (synchronising CUDA around each call)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(best=min(times), median=statistics.median(times), repeats=times)


def time_interleaved(
    fns: dict, *, repeat: int = 5, warmup: int = 1, device: torch.device = torch.device("cpu")
) -> dict:
    """Time several variants round-robin (A B C A B C ...), so a noisy neighbour slows them alike; returns
    {name: Timing}. Ratios of the best times are the robust comparison on a shared machine."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: Timing(best=min(t), median=statistics.median(t), repeats=t) for name, t in times.items()}


def pin_threads(threads: int) -> int:
    """Pin intra-op CPU threads (0 = leave torch's default); returns the count in use."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------- matmul peak
def matmul_peak(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    sizes: tuple = (1024, 1536, 2048),
    repeat: int = 5,
) -> dict:
    """Best achieved FLOP/s of square matmuls (2 n^3 FLOPs each) on this device, dtype and thread count.

    This is the machine's practical ceiling for dense math: the training step's achieved FLOP/s is reported as
    a fraction of it. Best over sizes and repeats, so a noisy neighbour lowers it less than it lowers the
    step.
    """
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        timing = time_fn(lambda: a @ b, repeat=repeat, warmup=1, device=device)
        per_size[str(n)] = 2 * n**3 / timing.best
    return {"flops": max(per_size.values()), "per_size_flops": per_size, "dtype": str(dtype).split(".")[-1]}


# ------------------------------------------------------------------------------------------- peak memory
def _rss_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Measure peak memory of the enclosed code into the yielded dict (key "peak_bytes", "kind").

    CUDA: `torch.cuda.max_memory_allocated` after a reset (tensors only). CPU: the process' peak resident set
    (VmHWM) after resetting it through /proc/self/clear_refs (Linux); it includes the interpreter, libraries
    and the model, so "delta_bytes" (peak minus the resident set at entry) is the step's own working set.
    Where the reset is impossible the figure is the lifetime peak (`ru_maxrss`), flagged "resettable": False.
    """
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result.update(kind="cuda_max_memory_allocated", peak_bytes=torch.cuda.max_memory_allocated(device))
        return
    resettable = True
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # 5 = reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        resettable = False
    start = _rss_bytes("VmRSS")
    yield result
    peak = _rss_bytes("VmHWM") if resettable else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        resettable = False
    result.update(
        kind="cpu_peak_rss",
        peak_bytes=peak,
        resettable=resettable,
        delta_bytes=None if start is None else max(0, peak - start),
    )


# -------------------------------------------------------------------------------------------- FLOP count
def forward_flops(config: DynamicsConfig, batch: int, time_steps: int) -> dict:
    """Analytic FLOPs of one forward of DynamicsTransformer on (batch, time_steps) frames (multiply-add = 2).

    matmul: 2 * P * n for every Linear of P weights applied to n tokens: the blocks' linears (QKV, attention
      output, SwiGLU gate/up/down) see all B*T*S tokens (S = S_z + S_r + 1 + S_a), the latent input/output
      projections the B*T*S_z latent tokens, the shortcut projection the B*T frames.
    attention: 4 * Lq * Lk * head_dim * heads per sequence (Q K^T and P V), as computed by the kernels: space
      layers B*T sequences of S tokens (Lq = Lk = S); time layers B*S sequences of T frames, counted dense
      (Lq = Lk = T) since the math/SDPA paths compute every score and mask afterwards, and "time_windowed"
      counting only the pairs inside the causal window C (what a block-sparse kernel would compute).
    Backward = 2x forward (so a training step = 3x forward: the usual 6 * N * tokens of the matmuls).
    Norms, RoPE, softmax and other elementwise work are not counted (they are not matmul work).
    """
    cfg = config
    s, frames = cfg.tokens_per_frame, batch * time_steps
    tokens = frames * s
    hidden, e = cfg.mlp_hidden, cfg.head_dim
    block_weights = (
        cfg.dim * (cfg.heads + 2 * cfg.kv_heads) * e  # fused QKV
        + cfg.dim * cfg.dim  # attention output
        + cfg.dim * 2 * hidden
        + hidden * cfg.dim
    )  # SwiGLU gate/up + down
    packed = cfg.pack_factor * cfg.latent_dim
    matmul = 2 * tokens * block_weights * cfg.depth
    matmul += 2 * frames * cfg.spatial_tokens * packed * cfg.dim * 2  # latent_in + latent_out
    matmul += 2 * frames * 2 * cfg.dim * cfg.dim  # shortcut token projection
    time_layers = sum(cfg.is_time_layer(i) for i in range(cfg.depth))
    space_layers = cfg.depth - time_layers
    space = space_layers * frames * 4 * s * s * e * cfg.heads
    time_dense = time_layers * batch * s * 4 * time_steps * time_steps * e * cfg.heads
    window = min(cfg.context_length, time_steps)
    pairs = sum(min(t + 1, window) for t in range(time_steps))  # (query, key) pairs inside the window
    time_windowed = time_layers * batch * s * 4 * pairs * e * cfg.heads
    return {
        "matmul": matmul,
        "attention_space": space,
        "attention_time_dense": time_dense,
        "attention_time_windowed": time_windowed,
        "total": matmul + space + time_dense,
        "block_matmul_weights": block_weights * cfg.depth,
    }


# ------------------------------------------------------------------------------------------------ output
def machine_info(device: torch.device, threads: int) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor(),
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average"] = os.getloadavg()  # how busy the (shared) machine was during the run
    except OSError:
        pass
    return info


def write_report(name: str, report: dict, output: Path | None = None) -> Path:
    """Write `report` as JSON to `output` (default benchmarks/results/<name>.json); returns the path."""
    path = Path(output) if output is not None else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_jsonable))
    return path


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def config_dict(config: DynamicsConfig) -> dict:
    return dataclasses.asdict(config)


def parse_benchmark_args(
    parser: argparse.ArgumentParser, argv=None, smoke: bool = True
) -> argparse.Namespace:
    """Add the arguments every benchmark shares (``--output``, ``--smoke`` where asked) and parse ``argv``."""
    if smoke:
        parser.add_argument(
            "--smoke", action="store_true", help="tiny config and sizes: checks the logic only"
        )
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/<name>.json)")
    return parser.parse_args(argv)


def run_benchmark(name: str, parse_args: Callable, run: Callable, print_report: Callable, argv=None) -> dict:
    """The ``main`` of every benchmark script: parse, run, print the table, write ``results/<name>.json``."""
    args = parse_args(argv)
    report = run(args)
    print_report(report)
    print("wrote", write_report(name, report, args.output))
    return report
