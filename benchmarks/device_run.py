"""One prepared run on one GPU within a time budget (docs/benchmarks.md, GPU): the CUDA tests, rollout speed
of the paper-scale model, the training step's MFU and the GPU quickstart, in this order.

    bash scripts/device_run.sh --out "$OUT" --budget 540    # a bare GPU machine: installs the wheels first
    python -m benchmarks.device_run --out DIR --budget 540  # where dreamer_dynamics and its needs import
    python -m benchmarks.device_run --out DIR --smoke       # every stage on CPU, tiny sizes, fp32 (tests)

Every stage runs in its own process under a time cap, so a crash, a hang or a compile error in one stage
leaves the others' figures. DIR/device_run.json is rewritten after every stage (a stage stopped at its cap
keeps what it measured), DIR/<stage>.log holds each stage's output, DIR/device_run.log the run's own.

  tests       pytest -v tests/test_cuda.py tests/test_attention.py tests/test_fsdp.py: counts and failures
  rollout     DynamicsConfig.minecraft() in bf16 (benchmarks/decode_speed.py): rollouts at K = 1, 2, 4 x batch
              1, 8, 16; the per-frame decode step eager, as a CUDA graph and compiled (reduce-overhead), each
              checked against eager; frames decoded as CUDA graphs against the StaticKVCache ring; cached
              against uncached rollouts; peak memory
  mfu         the 138M training step of benchmarks/gpu.py, compiled, against the bf16 matmul peak of this run
  quickstart  `dreamer-dynamics fit --config quickstart_gpu` for at most --train-seconds (what the budget
              leaves), its schedule fitted to that time (fit_to_time.py), then object accuracy on 320
              contexts of 64 fresh episodes (rollout_errors.py)
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("tests", "rollout", "mfu", "quickstart")
CAPS = {"tests": 100, "rollout": 120, "mfu": 70}  # seconds at most per stage; the quickstart takes the rest
SCORING_SECONDS = 45  # kept after the quickstart's training: start-up, fresh episodes, 320-context scoring
TEST_FILES = ["tests/test_cuda.py", "tests/test_attention.py", "tests/test_fsdp.py"]
FIT_TO_TIME = "benchmarks.fit_to_time.FitToTime"  # the quickstart's schedule fitted to its training time


class Clock:
    """Seconds left of the run's budget."""

    def __init__(self, budget: float) -> None:
        self.budget, self.start = budget, time.monotonic()

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


def log(out: Path, message: str) -> None:
    line = f"[device_run {time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    with open(out / "device_run.log", "a") as handle:
        handle.write(line + "\n")


def run_capped(cmd: list, seconds: float, log_path: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` (its output appended to ``log_path``) for at most ``seconds``; at the cap its whole process
    group is killed (pytest's and the trainer's children with it). -> returncode, seconds, timed_out."""
    start = time.monotonic()
    with open(log_path, "a") as out:
        out.write(f"$ {' '.join(map(str, cmd))}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            proc.wait(timeout=max(1.0, seconds))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            timed_out = True
    return {"returncode": proc.returncode, "seconds": time.monotonic() - start, "timed_out": timed_out}


def subprocess_env(smoke: bool) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if smoke:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def pytest_counts(text: str) -> dict:
    """Counts of pytest's summary line ("3 passed, 1 skipped in 2.0s"), or, where pytest was stopped before
    it, of its per-test lines (-v); the ids of failed tests and errors."""
    per_test = re.findall(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", text, re.M)
    summary = [line for line in text.splitlines() if re.fullmatch(r"=*\s*\d+ \w+.* in [\d.]+s\b.*", line)]
    counts: dict = {}
    if summary:
        for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", summary[-1]):
            counts["errors" if word.startswith("error") else word] = int(number)
    else:
        names = {"ERROR": "errors", "XFAIL": "xfailed", "XPASS": "xpassed"}
        for _, outcome in per_test:
            key = names.get(outcome, outcome.lower())
            counts[key] = counts.get(key, 0) + 1
    failed = [name for name, outcome in per_test if outcome in ("FAILED", "ERROR")]
    failed += re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
    return {"counts": counts, "complete": bool(summary), "failures": list(dict.fromkeys(failed))}


def write_json(path: Path, report: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)  # atomic: a reader (or a kill) never sees half a file


# ------------------------------------------------------------------------------------------------ stages
def stage_tests(args: argparse.Namespace, seconds: float, work: Path) -> dict:
    """The CUDA test files under pytest (smoke: test_cuda.py alone, which skips everything on a CPU)."""
    files = TEST_FILES[:1] if args.smoke else TEST_FILES
    log_path = args.out / "tests.log"
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *files]  # -v: one line a test
    result = run_capped(cmd, seconds, log_path, subprocess_env(args.smoke))
    return {"files": files, **result, **pytest_counts(log_path.read_text())}


def stage_in_process(name: str, args: argparse.Namespace, seconds: float, work: Path) -> dict:
    """Run ``--stage name`` of this script in a child process; its JSON (partial if it was stopped) back."""
    cmd = [sys.executable, "-m", "benchmarks.device_run", "--stage", name, "--work", str(work)]
    cmd += ["--out", str(args.out)] + (["--smoke"] if args.smoke else [])
    if args.nominal_tflops:
        cmd += ["--nominal-tflops", str(args.nominal_tflops)]
    result = run_capped(cmd, seconds, args.out / f"{name}.log", subprocess_env(args.smoke))
    path = work / f"{name}.json"
    return {**result, **(json.loads(path.read_text()) if path.exists() else {})}


def measure_mfu(args: argparse.Namespace, report: dict, save) -> None:
    """benchmarks/gpu.py's training step, compiled, at its reference batch (8 x 32 frames) and at twice the
    frames per step (smoke: the debug model, eager, fp32)."""
    import torch

    from benchmarks import gpu
    from benchmarks.common import machine_info

    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    report["machine"] = machine_info(device, torch.get_num_threads())
    for batch in [2] if args.smoke else [8, 16]:
        options = argparse.Namespace(
            smoke=args.smoke,
            compile=not args.smoke,
            batch=batch,
            frames=32,
            repeat=1 if args.smoke else 5,
            nominal_tflops=args.nominal_tflops,
        )
        report[f"batch_{batch}"] = {"compile": options.compile, **gpu.measure_mfu(options, device, dtype)}
        save()


def run_stage(args: argparse.Namespace) -> None:
    """The child process of ``stage_in_process``: one stage, its JSON saved after every figure."""
    report: dict = {}
    path = args.work / f"{args.stage}.json"

    def save() -> None:
        write_json(path, report)

    if args.stage == "rollout":
        import torch

        from benchmarks import decode_speed
        from benchmarks.common import machine_info

        report["machine"] = machine_info(
            torch.device("cpu" if args.smoke else "cuda"), torch.get_num_threads()
        )
        decode_speed.run_stage(args.smoke, report, save)
    elif args.stage == "mfu":
        measure_mfu(args, report, save)
    else:
        raise SystemExit(f"device_run: --stage {args.stage!r} runs in the parent process")
    save()


# ------------------------------------------------------------------------------------------- quickstart
def smoke_overlay(work: Path) -> Path:
    """Config overlay that shrinks the GPU quickstart to seconds on a CPU: fp32, no compile, a tiny model."""
    import yaml

    from dreamer_dynamics.configs import load_config

    callbacks = load_config("quickstart_gpu")["trainer"]["callbacks"]
    for callback in callbacks:
        if "device" in (callback.get("init_args") or {}):
            callback["init_args"]["device"] = None  # the EMA's copy stays with the model, on the CPU
    overlay = {
        "trainer": {
            "accelerator": "cpu",
            "precision": "32-true",
            "max_steps": 4,
            "limit_val_batches": 0,
            "log_every_n_steps": 1,
            "callbacks": callbacks,
        },
        "model": {
            "model": {"compile_blocks": False, "dim": 16, "heads": 4, "kv_heads": 2, "depth": 2},
            "objective": {"bootstrap_warmup_steps": 2},
            "evaluation": {"rollout_horizon": 2, "rollout_rows": 2},
        },
        "data": {
            "toy": {"episodes": 200},
            "short_batch_size": 2,
            "long_batch_size": 1,
            "val_batches": 1,
            "num_workers": 0,
            "pin_memory": False,
        },
    }
    path = work / "smoke_overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


def fit_command(args: argparse.Namespace, root: Path, train_seconds: float, compile_blocks: bool) -> list:
    minutes, seconds = divmod(max(1, int(train_seconds)), 60)
    cmd = [sys.executable, "-m", "dreamer_dynamics.cli", "fit", "--config", "quickstart_gpu"]
    if args.smoke:
        cmd += ["--config", str(smoke_overlay(root.parent))]
    cmd += [
        f"--trainer.default_root_dir={root}",
        f"--trainer.max_time=00:00:{minutes:02d}:{seconds:02d}",  # DD:HH:MM:SS, from the training's start
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+="
        + json.dumps({"class_path": FIT_TO_TIME, "init_args": {"seconds": train_seconds}}),
    ]
    return cmd + ([] if compile_blocks else ["--model.model.compile_blocks=false"])


def training_summary(root: Path) -> dict:
    """Steps reached and the last validation figures, read back from the run's checkpoint and TensorBoard."""
    import torch

    from benchmarks.tensorboard_curves import read_scalars

    checkpoints = sorted(root.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        return {"checkpoint": None}
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    summary = {
        "checkpoint": str(checkpoints[-1]),
        "global_step": state["global_step"],
        "bootstrap_warmup_steps": state["hyper_parameters"]["objective"]["bootstrap_warmup_steps"],
    }
    scalars = read_scalars(root)
    for tag in ("val/object_accuracy_k4", "val/rollout_es_ratio_k4", "train/latent_tokens_per_s"):
        if tag in scalars:
            summary[tag] = scalars[tag][-1][2]
    return summary


def stage_quickstart(args: argparse.Namespace, seconds: float, work: Path) -> dict:
    """Train the GPU quickstart for what the budget leaves (compiled; if that fails early, again without
    compiling), then score its last checkpoint on 320 contexts of 64 fresh episodes."""
    clock, log_path, env = Clock(seconds), args.out / "quickstart.log", subprocess_env(args.smoke)
    startup = 5 if args.smoke else 40  # interpreter, dataset generation, model, data workers
    result: dict = {"attempts": []}
    for compile_blocks in (True, False):
        cap = clock.left() - (10 if args.smoke else SCORING_SECONDS)
        train = min(args.train_seconds, cap - startup)
        root = work / f"quickstart_gpu_{'compiled' if compile_blocks else 'eager'}"
        attempt = {"compile_blocks": compile_blocks, "max_time_s": int(train)}
        attempt.update(run_capped(fit_command(args, root, train, compile_blocks), cap, log_path, env))
        result["attempts"].append(attempt)
        if attempt["returncode"] == 0 or attempt["timed_out"] or attempt["seconds"] > cap / 2:
            break  # trained (or failed late): no time for a second attempt
    result.update(training_summary(root))
    fitted = re.findall(r"^FitToTime: schedule set to (\{.*\})$", log_path.read_text(), re.M)
    result["fitted_schedule"] = ast.literal_eval(fitted[-1]) if fitted else None
    if result["checkpoint"] is None:
        return result
    score = work / "rollout_errors.json"
    cmd = [sys.executable, "-m", "benchmarks.rollout_errors", result["checkpoint"], "--output", str(score)]
    if args.smoke:
        cmd += "--fresh-episodes 1 --contexts 5 --samples 2 --steps 1 --threads 1".split()
    else:
        cmd += "--fresh-episodes 64 --contexts 320 --steps 4 --device cuda".split()
    result["scoring"] = run_capped(cmd, max(10.0, clock.left()), log_path, env)
    if score.exists():
        result["fresh_contexts"] = json.loads(score.read_text())
    return result


# ---------------------------------------------------------------------------------------------- the run
def stage_seconds(name: str, args: argparse.Namespace, left: float) -> float:
    """A stage's cap: its own (smoke: 120 s) within what is left; the quickstart takes all that is left."""
    if name == "quickstart":
        return left
    return min(120.0 if args.smoke else CAPS[name], left)


def run(args: argparse.Namespace) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="device_run-"))
    work.mkdir(parents=True, exist_ok=True)
    clock = Clock(args.budget)
    report = {
        "benchmark": "device_run",
        "smoke": args.smoke,
        "budget_s": args.budget,
        "train_seconds": args.train_seconds,
        "python": sys.version.split()[0],
        "stages": {},
        "not_run": [],
    }
    runners = {"tests": stage_tests, "quickstart": stage_quickstart}
    for name in args.stages:
        left = clock.left()
        if left < 10:
            report["not_run"].append(name)
            log(args.out, f"{name}: not run, the budget is spent")
            continue
        seconds = stage_seconds(name, args, left)
        log(args.out, f"{name}: starting, at most {seconds:.0f} s ({left:.0f} s of the budget left)")
        start = time.monotonic()
        try:
            if name in runners:
                result = runners[name](args, seconds, work)
            else:
                result = stage_in_process(name, args, seconds, work)
        except Exception as error:  # noqa: BLE001 - one stage's fault must not lose the others' figures
            result = {"failed": f"{type(error).__name__}: {error}"}
        result["stage_seconds"] = time.monotonic() - start
        report["stages"][name] = result
        write_json(args.out / "device_run.json", report)
        log(args.out, f"{name}: done in {result['stage_seconds']:.0f} s: {headline(name, result)}")
    report["total_seconds"] = args.budget - clock.left()
    write_json(args.out / "device_run.json", report)
    return report


def headline(name: str, result: dict) -> str:
    """One line per stage for the log (the JSON holds everything)."""
    if "failed" in result:
        return "FAILED " + result["failed"]
    if name == "tests":
        return f"{result['counts']} failures {result['failures']}"
    if name == "rollout":
        eager = [r for r in result.get("rollouts", []) if r["k"] == 4]
        return (
            ", ".join(f"B={r['batch']} K=4 {r['frames_per_s']:.1f} frames/s" for r in eager) or "no figures"
        )
    if name == "mfu":
        return ", ".join(
            f"{key}: {m['mfu_vs_measured_peak']:.1%} of the measured peak"
            for key, m in result.items()
            if key.startswith("batch_")
        )
    fresh = result.get("fresh_contexts", {}).get("k", {})
    figures = {k: round(v["object_accuracy"], 3) for k, v in fresh.items()}
    return f"steps {result.get('global_step')}, object accuracy on fresh contexts by K {figures}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "device_run")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument(
        "--train-seconds", type=float, default=300.0, help="the quickstart's training time at most"
    )
    parser.add_argument(
        "--nominal-tflops", type=float, default=None, help="vendor dense bf16 peak (H100, H200: 989)"
    )
    parser.add_argument("--smoke", action="store_true", help="every stage on CPU, tiny sizes, fp32")
    parser.add_argument("--stage", choices=("rollout", "mfu"), default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch directory (default: a new temporary one)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_seconds = min(args.train_seconds, 30.0)
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.stage:
        run_stage(args)
        return None
    return run(args)


if __name__ == "__main__":
    main()
