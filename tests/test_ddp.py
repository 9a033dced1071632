"""A real 2-process DDP group on CPU (gloo) training through the ``dreamer-dynamics`` console script.

One run (about 20 s on 2 cores) of ``fit --config quickstart.yaml --config ddp_cpu.yaml`` with the tiny
overlay ``tests/configs/tiny_scale.yaml`` and the test-only ``tests.distributed_probe.RankRecorder`` callback,
which writes what each rank saw. The tests then check, rank against rank:

- both ranks take the same batch length and size at every step, following the alternating schedule;
- they see disjoint sequences at every step, and different per-rank losses (the data really differs);
- the loss normaliser's running RMS and the weights are identical (the all-reduces happened);
- the logged validation metrics are identical on both ranks (synchronised), though each rank validated on
  different windows;
- exactly one checkpoint was written, it loads with weights-only unpickling, holds the final step and the
  normaliser state, and serves rollouts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed_probe import rollout_from_checkpoint, weights_checksum

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [
    REPO / "lightning_configs" / "quickstart.yaml",
    REPO / "lightning_configs" / "ddp_cpu.yaml",
    REPO / "tests" / "configs" / "tiny_scale.yaml",
]
MAX_STEPS, LONG_EVERY, SHORT_LENGTH, LONG_LENGTH = 6, 3, 6, 8  # as in tiny_scale.yaml
SHORT_BATCH, LONG_BATCH = 4, 2


def console_script(name: str = "dreamer-dynamics") -> str:
    """The console script of the interpreter running the tests (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"console script {name!r} not found beside {sys.executable} or on PATH: pip install -e .")
    return found


def subprocess_env() -> dict[str, str]:
    """Environment of CLI subprocesses: the repo importable (for ``tests.distributed_probe``), one thread per
    rank (2 ranks share the cores), no SLURM variables (Lightning would otherwise adopt a surrounding job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def recorder_arg(out_dir: Path) -> str:
    spec = {"class_path": "tests.distributed_probe.RankRecorder", "init_args": {"out_dir": str(out_dir)}}
    return "--trainer.callbacks+=" + json.dumps(spec)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Runs the 2-rank fit once; returns (run_dir, [rank0 record, rank1 record])."""
    run_dir = tmp_path_factory.mktemp("ddp")
    cmd = [
        console_script(),
        "fit",
        *(f"--config={c}" for c in CONFIGS),
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        recorder_arg(run_dir / "probe"),
    ]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(
            f"DDP fit failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    records = [json.loads((run_dir / "probe" / f"rank{r}-run0.json").read_text()) for r in range(2)]
    return run_dir, records


@pytest.mark.slow
def test_two_ranks_trained_together_to_max_steps(ddp_run):
    _, records = ddp_run
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 and r["strategy"] == "DDPStrategy" for r in records)
    assert all(r["final_step"] == MAX_STEPS and len(r["steps"]) == MAX_STEPS for r in records)


@pytest.mark.slow
def test_both_ranks_take_the_same_batch_length_at_every_step(ddp_run):
    _, (rank0, rank1) = ddp_run
    shapes0 = [(s["length"], s["batch_size"]) for s in rank0["steps"]]
    shapes1 = [(s["length"], s["batch_size"]) for s in rank1["steps"]]
    assert shapes0 == shapes1
    # the schedule itself: every LONG_EVERY-th step is long, with its own per-rank batch size
    expected = [
        (LONG_LENGTH, LONG_BATCH) if step % LONG_EVERY == LONG_EVERY - 1 else (SHORT_LENGTH, SHORT_BATCH)
        for step in range(MAX_STEPS)
    ]
    assert shapes0 == expected


@pytest.mark.slow
def test_ranks_see_disjoint_data(ddp_run):
    _, (rank0, rank1) = ddp_run
    for step0, step1 in zip(rank0["steps"], rank1["steps"]):
        assert len(set(step0["sequences"])) == len(step0["sequences"])  # no window twice in a rank's batch
        shared = set(step0["sequences"]) & set(step1["sequences"])
        assert not shared, f"ranks shared data at step {step0['global_step']}"
    # different data gives different rank-local losses (the flow term is logged without a cross-rank sync)
    flows = [(a["flow"], b["flow"]) for a, b in zip(rank0["steps"], rank1["steps"]) if a["flow"] is not None]
    assert flows and any(abs(a - b) > 1e-6 * max(abs(a), abs(b)) for a, b in flows)


@pytest.mark.slow
def test_loss_normalizer_rms_and_weights_are_identical_across_ranks(ddp_run):
    _, (rank0, rank1) = ddp_run
    assert rank0["loss_rms"] and set(rank0["loss_rms"]) == set(rank1["loss_rms"])  # e.g. {"shortcut"}
    for name, value in rank0["loss_rms"].items():
        assert value > 0
        assert value == pytest.approx(rank1["loss_rms"][name], rel=1e-6), name
    assert rank0["weights_checksum"] == pytest.approx(rank1["weights_checksum"], rel=1e-6)


@pytest.mark.slow
def test_validation_metrics_are_synchronised(ddp_run):
    _, (rank0, rank1) = ddp_run
    assert [v["global_step"] for v in rank0["validations"]] == [3, 6]
    assert [v["global_step"] for v in rank1["validations"]] == [3, 6]
    for val0, val1 in zip(rank0["validations"], rank1["validations"]):
        assert {
            "val/loss",
            "val/rollout_es_k1",
            "val/rollout_es_ratio_k2",
            "val/object_accuracy_k1",
        } <= val0.keys()
        assert val0.keys() == val1.keys()
        for name in val0:
            assert val0[name] == pytest.approx(val1[name], rel=1e-5), f"{name} differs across ranks"


@pytest.mark.slow
def test_ranks_validate_on_different_windows(ddp_run):
    _, (rank0, rank1) = ddp_run
    windows0, windows1 = rank0["validation_windows"], rank1["validation_windows"]
    assert windows0 and len(windows0) == len(windows1)  # equal batch counts: no rank waits in a collective
    assert not set(windows0) & set(windows1), "both ranks validated on the same windows"


@pytest.mark.slow
def test_exactly_one_checkpoint_that_reloads_and_rolls_out(ddp_run):
    run_dir, (rank0, rank1) = ddp_run
    checkpoints = sorted(run_dir.rglob("*.ckpt"))
    assert len(checkpoints) == 1, f"expected one checkpoint, found {checkpoints}"
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert state["global_step"] == MAX_STEPS
    for name, rms in rank0["loss_rms"].items():
        saved = state["state_dict"][f"loss_normalizer.mean_square_{name}"].sqrt().item()
        assert saved == pytest.approx(rms, rel=1e-6)

    # The checkpoint holds the trained weights: the live ones as the resume state, the EMA (which the module
    # holds after fit, tests/configs/tiny_scale.yaml starts it at step 3) as the weights to evaluate.
    module = rollout_from_checkpoint(checkpoints[0])
    assert weights_checksum(module) == rank0["weights_checksum"] == rank1["weights_checksum"]
    module.load_state_dict(state["current_model_state"])
    assert weights_checksum(module) == rank0["live_checksum"] == rank1["live_checksum"]
    assert rank0["live_checksum"] != rank0["weights_checksum"]  # averaging had started: two different sets
