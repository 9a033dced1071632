"""End to end on a REAL one-node SLURM cluster: submit, signal, requeue, resume.

The fixture starts the cluster with ``scripts/slurm/start_cluster.sh`` (it installs the Debian packages when
missing); if SLURM cannot start here the test FAILS with the script's reason, it is never skipped. The test
submits ``lightning_configs/slurm/cpu_test.sbatch`` (2 tasks, CPU DDP) with the tiny overlay and the
``tests.distributed_probe.RankRecorder`` callback, waits until training is mid-way, sends SIGUSR1 to the job's
ranks like SLURM does before a time limit (``scancel --signal=USR1 JOBID``), and checks that

- Lightning saved its ``hpc_ckpt_1.ckpt`` and requeued the job (``scontrol show job``: Restarts=1), through
  ``SLURMRequeueAtStepEnd`` at a step end on both ranks (Lightning's handler alone deadlocked 2 of 3 runs);
- the requeued job ran the template again and resumed from that checkpoint: its first step is the one after
  the checkpoint's global step (the step count continues, it does not restart at 0);
- it finished at the requested ``max_steps`` with exit code 0, both ranks agreeing.

Fast single-process tests of ``SLURMRequeueAtStepEnd`` under the variables srun sets follow at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.demos.boring_classes import BoringModel

from dreamer_dynamics.training.slurm import SLURMRequeueAtStepEnd
from tests.conftest import quiet_trainer
from tests.test_ddp import REPO, subprocess_env

START_CLUSTER = REPO / "scripts" / "slurm" / "start_cluster.sh"
STOP_CLUSTER = REPO / "scripts" / "slurm" / "stop_cluster.sh"
TEMPLATE = REPO / "lightning_configs" / "slurm" / "cpu_test.sbatch"
MAX_STEPS = 60  # long enough that the first run cannot finish between the poll and the signal
SIGNAL_AFTER_STEP = 6  # send the requeue signal once rank 0 has finished this many steps


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node cluster; stopped again afterwards if this fixture started it."""
    result = subprocess.run(["bash", str(START_CLUSTER)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(
            f"the SLURM cluster could not start (scripts/slurm/start_cluster.sh exit "
            f"{result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    started_here = "already up" not in result.stdout
    yield result.stdout.strip()
    if started_here:
        subprocess.run(["bash", str(STOP_CLUSTER)], capture_output=True, text=True, timeout=120)


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(condition, timeout: float, what: str, log: Path, poll: float = 0.5):
    """Polls ``condition()`` until it returns a truthy value; fails with the job log after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    tail = log.read_text()[-6000:] if log.exists() else "(no job log yet)"
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n--- job log tail:\n{tail}")


def read_steps(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
def test_sigusr1_requeues_the_job_and_it_resumes_to_max_steps(slurm_cluster, tmp_path):
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    log = tmp_path / "job.out"
    recorder = {"class_path": "tests.distributed_probe.RankRecorder", "init_args": {"out_dir": str(probe)}}
    env = subprocess_env()
    env.update(RUN_DIR=str(run_dir), DREAMER_PYTHON_BIN=str(Path(sys.executable).parent))
    submit = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--output={log}",
            "--time=00:10:00",
            str(TEMPLATE),
            "--config=tests/configs/tiny_scale.yaml",
            f"--trainer.max_steps={MAX_STEPS}",
            "--trainer.val_check_interval=20",
            "--trainer.callbacks+=" + json.dumps(recorder),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submit.returncode == 0, f"sbatch failed: {submit.stderr}"
    job_id = submit.stdout.strip().split(";")[0]
    try:
        # 1) mid-way through the first run, send the signal SLURM sends before the time limit
        wait_for(
            lambda: len(read_steps(probe / "progress-run0.txt")) >= SIGNAL_AFTER_STEP,
            240,
            f"step {SIGNAL_AFTER_STEP} of the first run",
            log,
            poll=0.1,
        )
        # `scancel --signal` reaches the job steps (the srun-launched ranks, where the requeue handler lives),
        # not the batch shell, exactly like `#SBATCH --signal=SIGUSR1@90`.
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True, timeout=30)

        # 2) Lightning requeues, SLURM restarts the job (after AuthInfo cred_expire), it runs to the end
        wait_for(lambda: int(job_fields(job_id).get("Restarts", 0)) >= 1, 120, "the requeue", log)
        finished = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
        wait_for(lambda: job_fields(job_id).get("JobState") in finished, 300, "the resumed job's end", log)
    finally:
        if job_fields(job_id).get("JobState") in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING"):
            subprocess.run(["scancel", job_id], timeout=30)

    text = log.read_text()
    fields = job_fields(job_id)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", f"{fields}\n{text[-6000:]}"
    assert fields["Restarts"] == "1", f"expected exactly one requeue: {fields}"
    # SLURMRequeueAtStepEnd took the signal and ran Lightning's requeue handler on both ranks at a step end
    assert "SLURM requeue signal received: checkpointing at step" in text, text[-6000:]
    assert "Handling auto-requeue signal" in text and f"Requeued SLURM job: {job_id}" in text, text[-6000:]

    # Lightning's hpc checkpoint, written at the step end after the signal and resumed by the second run
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.exists(), f"no hpc checkpoint in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}"
    saved_step = torch.load(hpc, map_location="cpu", weights_only=True)["global_step"]
    assert SIGNAL_AFTER_STEP <= saved_step < MAX_STEPS
    assert f"resuming from {hpc}" in text

    first_run, second_run = read_steps(probe / "progress-run0.txt"), read_steps(probe / "progress-run1.txt")
    assert first_run[0] == 1 and max(first_run) < MAX_STEPS  # interrupted: never reached the end
    assert second_run == list(range(saved_step + 1, MAX_STEPS + 1))  # continues right after the checkpoint
    records = [json.loads((probe / f"rank{r}-run1.json").read_text()) for r in range(2)]
    for record in records:
        assert record["world_size"] == 2
        assert (record["start_step"], record["final_step"]) == (saved_step, MAX_STEPS)
    assert records[0]["loss_rms"] == records[1]["loss_rms"]
    assert not (probe / "rank0-run0.json").exists()  # the first run never ended its fit


# ---------------------------------------------------------------- SLURMRequeueAtStepEnd in one process (fast)
class SignalAtBatch(pl.Callback):
    """Sends the requeue signal to this process when batch ``batch_idx`` starts; records the handlers seen."""

    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx
        self.handler_during_fit = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.batch_idx:
            self.handler_during_fit = signal.getsignal(signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR1)


def fake_slurm_job(monkeypatch, tmp_path) -> None:
    """The variables srun sets for a 1-task job; scontrol is pointed at an empty config so that Lightning's
    ``scontrol requeue`` fails at once (a warning) instead of reaching a real cluster."""
    (tmp_path / "empty_slurm.conf").write_text("")
    variables = dict(
        SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_JOB_NAME="unit",
        SLURM_JOB_ID="0",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
        SLURM_NODELIST="localhost",
        SLURM_CONF=str(tmp_path / "empty_slurm.conf"),
    )
    for key, value in variables.items():
        monkeypatch.setenv(key, value)


def boring_fit(tmp_path, *callbacks, max_steps: int = 6) -> pl.Trainer:
    trainer = quiet_trainer(
        tmp_path, max_steps, callbacks, use_distributed_sampler=True, enable_checkpointing=False
    )
    trainer.fit(BoringModel())
    return trainer


def test_requeue_callback_checkpoints_at_the_step_end_after_the_signal(monkeypatch, tmp_path):
    fake_slurm_job(monkeypatch, tmp_path)
    before = signal.getsignal(signal.SIGUSR1)
    sender, requeue = SignalAtBatch(batch_idx=3), SLURMRequeueAtStepEnd()
    trainer = boring_fit(tmp_path, sender, requeue)
    assert isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
    assert sender.handler_during_fit == requeue._record_signal  # ours, so Lightning did not install its own
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    assert hpc.exists()
    # the signal arrived while batch 3 started (global step 3); the checkpoint was written after that batch's
    # optimiser step, not in the middle of it as Lightning's own handler would have done
    assert torch.load(hpc, map_location="cpu", weights_only=True)["global_step"] == 4
    assert trainer.global_step == 6  # no real SLURM to stop us: training simply continued
    assert signal.getsignal(signal.SIGUSR1) == before  # handler restored after fit


def test_requeue_callback_is_a_no_op_outside_slurm(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    seen = {}

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[batch_idx] = signal.getsignal(signal.SIGUSR1)

    boring_fit(tmp_path, SLURMRequeueAtStepEnd(), Probe(), max_steps=2)
    assert all(handler in (signal.SIG_DFL, None) for handler in seen.values()), seen
    assert not list(tmp_path.glob("hpc_ckpt_*.ckpt"))
    with pytest.raises(ValueError, match="check_every_n_steps"):
        SLURMRequeueAtStepEnd(check_every_n_steps=0)
