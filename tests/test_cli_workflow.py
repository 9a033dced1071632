"""A new user's workflow through the real ``dreamer-dynamics`` console script (subprocess): packaged configs
by name, outputs under ``--trainer.default_root_dir``, ``--ckpt_path last`` resume in the same log version, a
checkpoint that brings its own data, one-line errors before any folder exists, one optimiser setting, quiet
output with a step progress bar, stable splits on append, and predict from a context file to .npy/PNG/GIF.

One tiny dataset (with a patch-codec decoder) and one 2-step run are shared by the module."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamer_dynamics.cli import LINKED_DATA_FIELDS
from dreamer_dynamics.data import LatentDatasetWriter, codec_spec
from dreamer_dynamics.data.reading.patch_codec import PatchCodec
from dreamer_dynamics.model import DynamicsConfig

pytestmark = pytest.mark.slow
SCRIPT = str(Path(sys.executable).parent / "dreamer-dynamics")
CODEC = PatchCodec(4, 2, 3, 0.5, 0.25)  # 4x4 RGB frames -> 4 tokens x 12 dims
TINY = [
    "--model.model.dim=16",
    "--model.model.depth=2",
    "--model.model.heads=2",
    "--model.model.kv_heads=1",
    "--model.model.k_max=4",
    "--model.model.check_inputs=false",
    "--model.evaluation.rollout_steps=[1]",
    "--model.evaluation.context_frames=2",
    "--model.evaluation.rollout_horizon=2",
    "--model.evaluation.rollout_rows=2",
    "--data.short_length=4",
    "--data.long_length=6",
    "--data.short_batch_size=2",
    "--data.long_batch_size=1",
    "--data.val_batch_size=2",
    "--data.val_batches=1",
    "--data.val_length=4",
    "--data.test_length=4",
    "--data.predict_length=4",
    "--data.steps_per_epoch=2",
    "--data.val_fraction=0.3",
    "--trainer.log_every_n_steps=1",
    "--trainer.val_check_interval=2",
]
CKPT_EVERY = [
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    "--trainer.callbacks.save_last=true",
]


def write_dataset(root: Path, latent_shape=(4, 12), episodes=6, codec=True, start=0) -> Path:
    rng = np.random.default_rng(start)
    with LatentDatasetWriter(
        root, latent_shape=latent_shape, num_discrete_actions=(3,), codec=codec_spec(CODEC) if codec else None
    ) as writer:
        for _ in range(episodes):
            writer.add_episode(
                rng.random((10, *latent_shape)).astype(np.float32),
                actions_discrete=rng.integers(0, 3, (10, 1)),
            )
    return root


def run(*args: str, cwd: Path, expect: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DREAMER_DYNAMICS_CACHE": str(cwd / "cache"), **(env or {})}
    result = subprocess.run([SCRIPT, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert result.returncode == expect, f"rc={result.returncode}\n{result.stderr[-3000:]}"
    return result


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The error is the last line of stderr and the only one of its kind (Lightning's "Seed set" info may
    precede it); no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:] and lines[-1].startswith("dreamer-dynamics: error: "), result.stderr[-2000:]
    return lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step quickstart run on the tiny dataset, outputs under an explicit default_root_dir."""
    base = tmp_path_factory.mktemp("workflow")
    data = write_dataset(base / "data")
    out = base / "out"
    result = run(
        "fit",
        "--config",
        "quickstart",
        "--data.root",
        str(data),
        *TINY,
        "--trainer.max_steps=2",
        f"--trainer.default_root_dir={out}",
        cwd=base,
    )
    return base, data, out, result


def test_outputs_follow_default_root_dir_and_output_is_quiet(trained):
    base, _, out, result = trained
    version = out / "tensorboard" / "version_0"
    assert list(version.glob("events.out.tfevents.*")) and (version / "checkpoints" / "last.ckpt").is_file()
    assert not (base / "runs").exists()  # the quickstart's runs/quickstart is only the default
    spurious = ("LeafSpec", "💡", "overrides the configure_model", "Seed set to", "FLOPs", "logging interval")
    for message in spurious:
        assert message not in result.stderr + result.stdout, message
    bar = result.stdout + result.stderr
    assert re.search(r"step: +100%.* 2/2 ", bar), bar[-1500:]  # global step against max_steps
    assert "loss=" in bar
    updates = re.findall(r"step: +50%.* 1/2 ", bar)
    assert len(updates) == 1, updates  # each update printed once (a log file shows every one)
    # the closing summary: validation figures, the checkpoint, the TensorBoard command
    assert re.search(r"validation: loss [0-9.]+, .*rollout_es_ratio_k1 [0-9.]+", result.stdout), result.stdout
    assert f"checkpoint: {version / 'checkpoints' / 'last.ckpt'}" in result.stdout
    assert f"TensorBoard: tensorboard --logdir {out}" in result.stdout


def test_resume_last_continues_in_the_same_version_and_warns_on_changed_data(trained):
    base, data, out, _ = trained
    grown = base / "grown"
    shutil.copytree(data, grown)
    write_dataset(grown, episodes=2, start=7)  # append two episodes
    run_dir = out  # resumed in place: the checkpoint callback keeps writing last.ckpt there
    result = run(
        "fit",
        "--config",
        "quickstart",
        "--data.root",
        str(grown),
        *TINY,
        "--trainer.max_steps=4",
        f"--trainer.default_root_dir={run_dir}",
        "--ckpt_path",
        "last",
        "--resume_other_dataset=true",  # a grown copy at another root: another dataset, as far as is known
        cwd=base,
    )
    versions = sorted(p.name for p in (run_dir / "tensorboard").iterdir())
    assert versions == ["version_0"], versions
    state = torch.load(run_dir / "tensorboard" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4
    assert result.stderr.count("changed since the checkpoint") == 1 and "6 -> 8 episodes" in result.stderr


def test_checkpoint_brings_its_data_and_refuses_other_data(trained):
    base, data, out, _ = trained
    ckpt = str(out / "tensorboard" / "version_0" / "checkpoints" / "last.ckpt")
    # only --ckpt_path: the model AND the data (root, window lengths) come from the checkpoint; the built-in
    # world would not fit, and the default 16-frame windows would not fit its 10-frame episodes
    result = run("validate", "--ckpt_path", ckpt, f"--trainer.default_root_dir={base / 'val'}", cwd=base)
    recorded = {str(data.resolve()), str((base / "grown").resolve())}  # before / after the resume test
    used = re.search(r"data: the checkpoint's dataset (\S+)", result.stderr + result.stdout)
    assert used and used.group(1) in recorded
    other = write_dataset(base / "other", latent_shape=(4, 6), codec=False)
    fresh = base / "never_created"
    for sub in ("validate", "fit"):
        bad = run(
            sub,
            "--config",
            "quickstart",
            *TINY,
            "--ckpt_path",
            ckpt,
            "--data.root",
            str(other),
            f"--trainer.default_root_dir={fresh}",
            cwd=base,
            expect=1,
        )
        line = one_error_line(bad)
        assert "latents [4, 12] with discrete actions (3,)" in line and "latents [4, 6]" in line, line
        assert not fresh.exists()


def test_data_errors_are_one_line_before_any_folder_and_traceback_on_request(tmp_path):
    fresh = tmp_path / "never_created"
    args = (
        "fit",
        "--config",
        "quickstart",
        "--data.root",
        str(tmp_path / "missing"),
        *TINY,
        f"--trainer.default_root_dir={fresh}",
    )
    line = one_error_line(run(*args, cwd=tmp_path, expect=1))
    assert "missing" in line and "does not exist" in line
    empty = tmp_path / "empty"
    with LatentDatasetWriter(empty, latent_shape=(4, 12)):
        pass
    line = one_error_line(run(*args[:4], str(empty), *args[5:], cwd=tmp_path, expect=1))
    assert "no episodes" in line
    assert not fresh.exists()
    debug = run(*args, cwd=tmp_path, expect=1, env={"DREAMER_DYNAMICS_TRACEBACK": "1"})
    assert "Traceback" in debug.stderr


def test_one_optimizer_setting_and_every_config_field_documented(tmp_path):
    refused = run(
        "fit",
        "--config",
        "quickstart",
        "--optimizer",
        "torch.optim.SGD",
        "--print_config",
        cwd=tmp_path,
        expect=1,
    )  # LightningCLI's automatic optimizer would replace model.optimizer
    assert "unknown key 'optimizer'; did you mean model.optimizer" in refused.stderr
    text = run("fit", "--help", cwd=tmp_path).stdout
    linked = set(LINKED_DATA_FIELDS)  # data description: set through --data.*, not --model.model.*
    for field in dataclasses.fields(DynamicsConfig):
        if field.name in linked:
            continue
        # the option's own entry: from its line to the next option; help text comes before "(type: ...)"
        match = re.search(rf"^  --model\.model\.{field.name} \S+\n(.*?)(?=^  --)", text, re.S | re.M)
        assert match, f"--model.model.{field.name} missing from --help"
        assert match.group(1).split("(type:")[0].strip(), f"no help line for DynamicsConfig.{field.name}"


def test_predict_from_a_context_file_writes_npy_and_pictures(trained):
    base, data, out, _ = trained
    ckpt = str(out / "tensorboard" / "version_0" / "checkpoints" / "last.ckpt")
    rng = np.random.default_rng(1)
    context = base / "context.npz"
    np.savez(
        context,
        context=rng.random((2, 3, 4, 12)).astype(np.float32),
        actions_discrete=rng.integers(0, 3, (2, 5)),
    )  # [B, T]: one component, 3 context + 2 new frames
    pred_dir = base / "pred"
    predict = ["predict", "--config", "quickstart", *TINY, "--ckpt_path", ckpt, "--data.predict_context"]
    # --model.evaluation.predict_horizon wins over the checkpoint's value (the command line's)
    run(
        *predict,
        str(context),
        "--model.evaluation.predict_horizon=1",
        f"--trainer.default_root_dir={pred_dir}",
        cwd=base,
    )
    files = sorted(p.name for p in (pred_dir / "predictions" / "version_0").iterdir())
    rollout = np.load(pred_dir / "predictions" / "version_0" / "rollouts_rank0_batch000000.rollout.npy")
    assert rollout.shape == (2, 1, 4, 12) and np.isfinite(rollout).all()
    assert {"rollouts_rank0_batch000000.seq0.png", "rollouts_rank0_batch000000.seq1.gif"} <= set(files), files
    from PIL import Image

    with Image.open(pred_dir / "predictions" / "version_0" / "rollouts_rank0_batch000000.seq0.gif") as gif:
        assert gif.n_frames == 4  # 3 context + 1 generated frame
    missing = base / "no_actions.npy"
    np.save(missing, rng.random((1, 3, 4, 12)).astype(np.float32))
    bad = run(*predict, str(missing), f"--trainer.default_root_dir={base / 'pred2'}", cwd=base, expect=1)
    assert "action-conditioned" in one_error_line(bad)


def test_packaged_configs_are_the_repository_configs_and_ship_in_the_wheel(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    for link in (repo / "lightning_configs").glob("*.yaml"):
        target = link.resolve()
        assert link.is_symlink() and target.parent == repo / "dreamer_dynamics" / "configs", link
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(repo),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    import zipfile

    (wheel,) = tmp_path.glob("dreamer_dynamics-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for link in (repo / "lightning_configs").glob("*.yaml"):
        assert f"dreamer_dynamics/configs/{link.name}" in names


def test_predict_and_validate_with_only_a_checkpoint_write_beside_its_run(trained):
    """``predict --ckpt_path CKPT`` alone (the README's command, no config): rollouts of the checkpoint's own
    validation windows as .npy + PNG/GIF in ``<run>/predictions/version_N``, the folder printed, a second
    predict in a new folder; ``validate --ckpt_path CKPT`` logs beside the run; nothing lands in the cwd."""
    base, _, out, _ = trained
    ckpt = out / "tensorboard" / "version_0" / "checkpoints" / "last.ckpt"
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    for version in (0, 1):
        result = run("predict", "--ckpt_path", str(ckpt), cwd=elsewhere)
        folder = out / "predictions" / f"version_{version}"
        assert str(folder) in result.stdout + result.stderr
        names = {p.name for p in folder.iterdir()}
        assert {
            "rollouts_rank0_batch000000.rollout.npy",
            "rollouts_rank0_batch000000.ground_truth.npy",
        } <= names
        assert {"rollouts_rank0_batch000000.seq0.png", "rollouts_rank0_batch000000.seq0.gif"} <= names
        rollout = np.load(folder / "rollouts_rank0_batch000000.rollout.npy")
        assert rollout.shape[1:] == (2, 4, 12) and np.isfinite(rollout).all()  # 4-frame windows, 2 context
    run("validate", "--ckpt_path", str(ckpt), cwd=elsewhere)
    assert [p.name for p in elsewhere.iterdir() if p.name != "cache"] == []
    assert list(out.glob("lightning_logs/version_*/events.out.tfevents.*"))


def test_runs_on_different_datasets_stay_apart(trained):
    """``--data.root PATH`` alone puts the run in ``runs/<PATH's name>`` (not the config's runs/quickstart);
    resuming a checkpoint on another dataset of the same shape is refused in one line naming the flag that
    allows it."""
    base, data, out, _ = trained
    cwd = base / "apart"
    cwd.mkdir()
    other = write_dataset(base / "same_shape", episodes=5, start=7)  # same shape, other episodes
    common = ["--config", "quickstart", *TINY, "--trainer.max_steps=1"]
    run("fit", *common, "--data.root", str(other), cwd=cwd)
    assert list((cwd / "runs" / "same_shape" / "tensorboard").glob("version_0/checkpoints/last.ckpt"))
    assert not (cwd / "runs" / "quickstart").exists()

    ckpt = str(out / "tensorboard" / "version_0" / "checkpoints" / "last.ckpt")
    resume = ["fit", *common, "--data.root", str(other), "--ckpt_path", ckpt, "--trainer.max_steps=3"]
    line = one_error_line(run(*resume, cwd=cwd, expect=1))
    assert f"not {other}" in line and "--resume_other_dataset true" in line, line
    run(*resume, "--resume_other_dataset=true", cwd=cwd)
