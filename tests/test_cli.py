"""The ``dreamer-dynamics`` console script (LightningCLI): data -> model linking, complete --print_config,
weights-only checkpoint loading, and end-to-end fit / validate / test / predict through the real script."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dreamer_dynamics.cli import LINKED_DATA_FIELDS, DynamicsCLI, main
from dreamer_dynamics.data import LatentDatasetWriter
from dreamer_dynamics.field_docs import field_comments
from dreamer_dynamics.model import DynamicsConfig, RolloutConfig
from dreamer_dynamics.training.config import EvaluationConfig, ObjectiveConfig
from tests.conftest import QUICKSTART, TINY_CLI


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI(args=...) warns when sys.argv also holds arguments (pytest's own)."""
    monkeypatch.setattr(sys, "argv", ["dreamer-dynamics"])


def write_dataset(
    root: Path, latent_shape=(6, 10), discrete=(3, 4), continuous=2, episodes=4, length=12
) -> str:
    rng = np.random.default_rng(0)
    with LatentDatasetWriter(
        root, latent_shape=latent_shape, num_discrete_actions=discrete, num_continuous_actions=continuous
    ) as writer:
        for _ in range(episodes):
            writer.add_episode(
                rng.standard_normal((length, *latent_shape)).astype(np.float32),
                actions_discrete=np.stack([rng.integers(0, n, length) for n in discrete], -1)
                if discrete
                else None,
                actions_continuous=rng.standard_normal((length, continuous)).astype(np.float32)
                if continuous
                else None,
            )
    return str(root)


def test_data_root_alone_switches_latent_shape_and_action_spec(tmp_path):
    root = write_dataset(tmp_path / "data")
    cli = DynamicsCLI(args=["--config", QUICKSTART, "--data.root", root, *TINY_CLI], run=False)
    config = cli.model.config
    assert (config.latent_tokens, config.latent_dim) == (6, 10)
    assert config.num_discrete_actions == (3, 4) and config.num_continuous_actions == 2
    assert cli.model.model.latent_in.in_features == 10  # the network was built for the new data
    assert config.token_grid is None  # no codec, no grid: 1-D positions over the token index
    gridded = DynamicsCLI(
        args=["--config", QUICKSTART, "--data.root", root, "--data.token_grid=[2,3]", *TINY_CLI], run=False
    )
    assert gridded.model.config.token_grid == (2, 3) and gridded.model.config.space_grid == (2, 3)


def test_fit_validate_test_in_process_on_a_custom_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_dataset(tmp_path / "data")
    common = [
        "--config",
        QUICKSTART,
        "--data.root",
        root,
        *TINY_CLI,
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        # a zero-initialised output head passes no gradient to the blocks on the very first step
        "--model.model.zero_init_output=false",
        # the tiny validation batch must hold bootstrap frames for val/bootstrap_loss to be a number
        "--model.objective.d_min_share=0.5",
    ]
    initial = DynamicsCLI(args=common, run=False).model  # same seed: the weights fit starts from
    fit = DynamicsCLI(args=["fit", *common, "--trainer.fast_dev_run=true"])
    assert fit.trainer.state.finished and fit.trainer.global_step == 1  # fast_dev_run: one optimiser step
    assert fit.model.config.latent_dim == 10  # built for the custom dataset
    changed = [not torch.equal(a, b) for a, b in zip(fit.model.parameters(), initial.parameters())]
    assert all(changed), "fit did not train every parameter"  # one Adam step moves every one with a gradient
    for subcommand, prefix in (("validate", "val"), ("test", "test")):
        cli = DynamicsCLI(args=[subcommand, *common, "--trainer.fast_dev_run=true"])
        metrics = cli.trainer.callback_metrics
        assert f"{prefix}/loss" in metrics, sorted(metrics)
        logged = [torch.as_tensor(v) for k, v in metrics.items() if k.startswith(prefix)]
        assert all(torch.isfinite(v).all() for v in logged)


def test_print_config_is_complete_and_commented(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICKSTART, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["weights_only"] is True  # checkpoints load with weights-only unpickling by default
    assert printed["trainer"]["use_distributed_sampler"] is False
    model = printed["model"]
    groups = {"objective": ObjectiveConfig, "evaluation": EvaluationConfig, "rollout": RolloutConfig}
    assert {"model", "optimizer", "scheduler", "noise_seed", *groups} == model.keys()  # nothing else to set
    for name, cls in groups.items():
        assert model[name].keys() == {f.name for f in dataclasses.fields(cls)}, name
    assert {"dim", "depth", "k_max", "context_length", "pack_factor"} <= model["model"].keys()
    assert not set(LINKED_DATA_FIELDS) & model["model"].keys()  # linked from the data, not settable
    assert "root" in printed["data"]
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICKSTART, "--print_config=comments"])
    commented = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    helped = " ".join(capsys.readouterr().out.split())  # the help text, its line wrapping undone
    for cls in (DynamicsConfig, *groups.values()):  # every field of every group has its help line
        comments = field_comments(cls)
        assert comments.keys() == {f.name for f in dataclasses.fields(cls)}, cls.__name__
        for field, comment in comments.items():
            if cls is DynamicsConfig and field in LINKED_DATA_FIELDS:
                continue  # linked from the data: not printed
            assert f"# {comment.split('(')[0].strip()}" in commented, (cls.__name__, field)
            group = next((g for g, c in groups.items() if c is cls), "model")
            assert f"--model.{group}.{field} " in helped, (group, field)  # an option with its help line
            assert " ".join(comment.split("(")[0].split()) in helped, (group, field)


def run_script(*args: str, cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "dreamer-dynamics"
    result = subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_console_script_fit_then_predict_from_checkpoint(tmp_path):
    """The real console script, run from a scratch directory (the config's runs/... paths land there)."""
    env = {**os.environ, "DREAMER_DYNAMICS_CACHE": str(tmp_path / "cache")}
    common = [
        "--config",
        QUICKSTART,
        *TINY_CLI,
        "--data.toy.episodes=6",
        "--data.toy.length=24",
    ]  # small built-in data
    run_script("fit", *common, "--trainer.fast_dev_run=true", cwd=tmp_path, env=env)
    run_script(
        "fit",
        *common,
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path}/ckpt",
        "--trainer.callbacks.save_last=true",
        cwd=tmp_path,
        env=env,
    )
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2
    assert list((tmp_path / "runs" / "quickstart" / "tensorboard").glob("version_*/events.out.tfevents.*"))
    run_script("predict", *common, "--ckpt_path", str(checkpoint), cwd=tmp_path, env=env)
    predictions = (
        tmp_path / "runs" / "quickstart" / "predictions" / "version_0"
    )  # quickstart's RolloutWriter, default_root_dir, this predict's own folder
    files = sorted(predictions.glob("*.rollout.npy"))
    assert files, "predict wrote no rollouts"
    rollout = np.load(files[0])
    assert rollout.shape[1:] == (4, 16, 48)  # predict window 6 - 2 context frames; built-in latents 16 x 48
    assert list(predictions.glob("*.png")) and list(
        predictions.glob("*.gif")
    )  # the built-in data has a decoder
