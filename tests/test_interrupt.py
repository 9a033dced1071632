"""A run stopped at any moment loses nothing (dreamer_dynamics/training/interrupt.py, docs/training.md).

* SIGTERM and Ctrl-C stop ``fit`` within a step with a resumable ``last.ckpt``;
* SIGKILL at random moments, including while a checkpoint is being written, never leaves a checkpoint that
  ``--ckpt_path last`` cannot load; every restart continues, and the run ends bit-identical to one never
  interrupted.

Each run is a real ``dreamer-dynamics fit`` process, forked from a server that has the package imported
(``multiprocessing`` forkserver), so a restart costs milliseconds, not an interpreter start.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.test_ddp import REPO
from tests.test_resume_cli import assert_equal_tree

pytestmark = pytest.mark.slow
CONFIGS = ["quickstart", REPO / "tests/configs/tiny_scale.yaml", REPO / "tests/configs/resume_exact.yaml"]
STEPS = 100  # long enough that 10 kills land before the run ends, also on a quiet machine
COMPARED = ("current_model_state", "state_dict", "averaging_state", "optimizer_states", "lr_schedulers")


class StepFile(pl.Callback):
    """Test observer: writes the global step after every training step to ``path`` (how far a run got)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        Path(self.path).write_text(str(trainer.global_step))


def run_cli(argv: list[str], cwd: str, cache: str, log: str) -> None:
    """Child process: ``dreamer-dynamics fit ...`` with its output in ``log``."""
    os.chdir(cwd)
    os.environ["DREAMER_DYNAMICS_CACHE"] = cache
    torch.set_num_threads(1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from dreamer_dynamics.cli import main

    main(argv)


@pytest.fixture(scope="module")
def context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["dreamer_dynamics.cli", "tests.test_interrupt"])
    return ctx


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("toy_cache")


class Run:
    """A run directory; ``start`` forks a ``fit`` into it (``--ckpt_path last``: resume where it stopped)."""

    def __init__(self, root: Path, cache: Path, context, every_n_steps: int) -> None:
        self.root, self.cache, self.context = root, cache, context
        self.ckpt_dir = root / "ckpt"
        self.step_file = root / "step"
        self.argv = [
            "fit",
            *[f"--config={c}" for c in CONFIGS],
            f"--trainer.max_steps={STEPS}",
            "--trainer.val_check_interval=20",
            f"--trainer.default_root_dir={root}",
            f"--trainer.callbacks.dirpath={self.ckpt_dir}",
            f"--trainer.callbacks.every_n_train_steps={every_n_steps}",
            f'--trainer.callbacks+={{"class_path": "tests.test_interrupt.StepFile", '
            f'"init_args": {{"path": "{self.step_file}"}}}}',
            "--ckpt_path=last",
        ]
        root.mkdir(parents=True)

    def start(self):
        process = self.context.Process(
            target=run_cli, args=(self.argv, str(self.root), str(self.cache), str(self.root / "log"))
        )
        process.start()
        return process

    def step(self) -> int:
        try:
            return int(self.step_file.read_text() or -1)
        except (FileNotFoundError, ValueError):
            return -1

    def finish(self) -> dict:
        process = self.start()
        process.join(120)
        assert process.exitcode == 0, (self.root / "log").read_text()[-3000:]
        return self.final()

    def final(self) -> dict:
        return torch.load(self.ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)


def wait_for(condition, timeout: float = 60.0, poll: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache, context) -> dict:
    """The run never interrupted."""
    return Run(tmp_path_factory.mktemp("straight") / "run", cache, context, 100_000).finish()


def assert_same_run(final: dict, straight: dict) -> None:
    assert final["global_step"] == straight["global_step"] == STEPS
    for key in COMPARED:
        assert_equal_tree(final[key], straight[key], key)
    rng = [run["dreamer_dynamics_rng"] for run in (final, straight)]
    assert_equal_tree(rng[0], rng[1], "dreamer_dynamics_rng")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_and_ctrl_c_stop_within_a_step_with_a_resumable_checkpoint(
    tmp_path, cache, context, straight, signum
):
    run = Run(tmp_path / "run", cache, context, 100_000)  # no checkpoint of its own before the end
    process = run.start()
    assert wait_for(lambda: run.step() >= 5), (run.root / "log").read_text()[-3000:]
    at_signal = run.step()
    os.kill(process.pid, signum)
    process.join(60)
    assert process.exitcode == 128 + signum, (run.root / "log").read_text()[-3000:]
    stopped = run.final()
    assert at_signal <= stopped["global_step"] <= at_signal + 2 < STEPS
    assert_same_run(run.finish(), straight)


def test_sigkill_at_random_moments_never_loses_the_run(tmp_path, cache, context, straight):
    """10 SIGKILLs, every third as soon as a checkpoint write has begun (its temporary file exists), the
    others at a random moment after the run made progress; after each, every ``*.ckpt`` loads and the next
    start resumes from the newest."""
    run = Run(tmp_path / "run", cache, context, 1)  # a checkpoint every step: kills often land in a write
    rng = random.Random(0)
    kills = while_writing = 0
    while kills < 10:
        before = run.step()
        process = run.start()
        if kills % 3 == 0:
            landed = wait_for(lambda: any(run.ckpt_dir.glob(".tmp-*")) or not process.is_alive(), poll=0)
            while_writing += landed and process.is_alive()
        else:
            wait_for(lambda: run.step() > before or not process.is_alive())
            time.sleep(rng.uniform(0.0, 0.3))
        if not process.is_alive():
            break  # finished before the kill
        os.kill(process.pid, signal.SIGKILL)
        process.join(30)
        kills += 1
        for path in run.ckpt_dir.glob("*.ckpt"):
            torch.load(path, map_location="cpu", weights_only=True)  # complete, or the previous file
    assert kills == 10 and while_writing >= 2
    assert_same_run(run.finish(), straight)
    assert not list(run.ckpt_dir.glob(".tmp-*"))  # the killed writers' temporaries are cleaned up
