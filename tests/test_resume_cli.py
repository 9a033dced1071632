"""Exact resume at any stop, through the ``dreamer-dynamics`` console script, in one process and in a real
2-rank CPU DDP group (gloo).

A finished run of N steps extended to 2N with ``--ckpt_path`` ends bit-identical to a straight 2N-step run:
the live weights (``current_model_state``), the averaged weights (``state_dict``), the averaging state, the
optimiser state and every rank's random state. N = 60 stops before the EMA starts averaging (step 100), N =
150 after it. The tiny overlay ``tests/configs/resume_exact.yaml`` keeps each run to a few seconds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from dreamer_dynamics.cli import DynamicsCLI
from tests.test_ddp import REPO, console_script, subprocess_env

CONFIGS = [
    REPO / "lightning_configs" / "quickstart.yaml",
    REPO / "tests" / "configs" / "tiny_scale.yaml",
    REPO / "tests" / "configs" / "resume_exact.yaml",
]
DDP = REPO / "lightning_configs" / "ddp_cpu.yaml"
EMA_START = 100  # resume_exact.yaml: update_starting_at_step


def configs(devices: int) -> list[str]:
    chosen = CONFIGS[:1] + ([DDP] if devices == 2 else []) + CONFIGS[1:]
    return [f"--config={c}" for c in chosen]


def fit(run_dir: Path, cache: Path, devices: int, max_steps: int, ckpt_path: Path | None = None) -> dict:
    """One ``dreamer-dynamics fit``; returns its final checkpoint (written when fit ends)."""
    cmd = [
        console_script(),
        "fit",
        *configs(devices),
        f"--trainer.max_steps={max_steps}",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.callbacks.dirpath={run_dir / 'ckpt'}",
    ]
    if ckpt_path is not None:
        cmd.append(f"--ckpt_path={ckpt_path}")
    env = {**subprocess_env(), "DREAMER_DYNAMICS_CACHE": str(cache)}
    result = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(
            f"fit failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-5000:]}"
        )
    return torch.load(run_dir / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_equal_tree(a, b, where: str) -> None:
    """Bitwise equality of nested checkpoint content (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_equal_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("toy_cache")


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2], ids=["one_process", "ddp2"])
@pytest.mark.parametrize("first,total", [(60, 120), (150, 300)])
def test_extending_a_finished_run_is_exact(tmp_path, cache, devices, first, total):
    stopped = fit(tmp_path / "stopped", cache, devices, first)
    first_checkpoint = tmp_path / "stopped" / "ckpt" / "last.ckpt"
    resumed = fit(tmp_path / "resumed", cache, devices, total, ckpt_path=first_checkpoint)
    straight = fit(tmp_path / "straight", cache, devices, total)

    assert stopped["global_step"] == first and resumed["global_step"] == straight["global_step"] == total
    # The resume state is the live weights; before the averaging start the export weights are the live ones
    # too.
    started = first > EMA_START
    assert int(stopped["averaging_state"]["n_averaged"]) == max(0, first - EMA_START)
    same = max_difference(stopped["state_dict"], stopped["current_model_state"]) == 0.0
    assert same is not started, "state_dict: the live weights before the averaging start, the average after"
    # Random state of every rank, in rank order, and not the same stream twice.
    ranks = stopped["dreamer_dynamics_rng"]["ranks"]
    assert stopped["dreamer_dynamics_rng"]["world_size"] == len(ranks) == devices
    if devices == 2:
        assert not torch.equal(ranks[0]["noise_generator"], ranks[1]["noise_generator"])

    for key in (
        "current_model_state",
        "state_dict",
        "averaging_state",
        "optimizer_states",
        "lr_schedulers",
        "dreamer_dynamics_rng",
    ):
        assert_equal_tree(resumed.get(key), straight.get(key), key)
    # The data position (the batches are a function of the global step). Lightning's epoch counters may differ
    # by one after resuming from a checkpoint written at an epoch's last batch; nothing here depends on them.
    loaders = [run["loops"]["fit_loop"]["state_dict"]["combined_loader"][0] for run in (resumed, straight)]
    assert [loader["sampler_step"] for loader in loaders] == [total, total]
    # Teeth: the second half really trained (the checkpoint of the first half is far from the end).
    assert max_difference(stopped["current_model_state"], straight["current_model_state"]) > 1e-3


@pytest.mark.slow
def test_a_run_that_stops_before_the_averaging_start_keeps_its_training(tmp_path, cache, monkeypatch):
    """A 50-step run (EMA from step 100): both weight sets in its checkpoint are the trained ones, not the
    initial weights (which the CLI builds from the same seed before training)."""
    checkpoint = fit(tmp_path / "run", cache, 1, 50)
    monkeypatch.setenv("DREAMER_DYNAMICS_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    cli = DynamicsCLI(args=[*configs(1), "--trainer.logger=false"], run=False)
    initial = cli.model.state_dict()
    for key in ("state_dict", "current_model_state"):
        weights = checkpoint[key]
        matrices = [k for k in initial if k.startswith("model.") and initial[k].ndim == 2]
        assert matrices and all(not torch.equal(weights[k], initial[k]) for k in matrices), key
    assert_equal_tree(checkpoint["state_dict"], checkpoint["current_model_state"], "export == live")
