"""Every YAML in lightning_configs/ (globbed, so configs added later are covered) parses and instantiates
through the CLI parser without training. Overlays (strategy-only configs) are stacked on the quickstart; GPU
configs instantiate with small model sizes against a tiny dataset (no GPU needed to build the objects)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import yaml
from lightning.pytorch.strategies import Strategy

from dreamer_dynamics.cli import DynamicsCLI
from dreamer_dynamics.data import LatentDatasetWriter
from dreamer_dynamics.module import DynamicsModule

CONFIGS = Path(__file__).resolve().parents[1] / "lightning_configs"
QUICKSTART = CONFIGS / "quickstart.yaml"
ALL_YAMLS = sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml"))
SMALL_MODEL = [
    "--model.model.dim=32",
    "--model.model.depth=2",
    "--model.model.heads=2",
    "--model.model.kv_heads=1",
    "--model.model.activation_checkpointing=false",
]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["dreamer-dynamics"])
    monkeypatch.chdir(tmp_path)  # relative runs/... paths of the configs land in a scratch directory


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> str:
    """Latents 16 x 8 (divisible by pack factors 1, 2, 4, 8), one discrete action with 5 classes."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    rng = np.random.default_rng(0)
    with LatentDatasetWriter(root, latent_shape=(16, 8), num_discrete_actions=(5,)) as writer:
        for _ in range(3):
            writer.add_episode(
                rng.standard_normal((8, 16, 8)).astype(np.float32),
                actions_discrete=rng.integers(0, 5, (8, 1)),
            )
    return str(root)


class BuildWithoutTrainer(DynamicsCLI):
    """Instantiates model, data, strategy, callbacks and logger, not the Trainer (which checks for GPUs)."""

    def instantiate_trainer(self, **kwargs):
        return (
            self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        )


def is_base_config(path: Path) -> bool:
    """A base config describes model and data; anything else is an overlay (strategy, cluster, ...)."""
    content = yaml.safe_load(path.read_text()) or {}
    return (
        isinstance(content, dict) and "data" in content and "model" in content and "model" in content["model"]
    )


def config_args(path: Path) -> list[str]:
    return (
        ["--config", str(path)]
        if is_base_config(path)
        else ["--config", str(QUICKSTART), "--config", str(path)]
    )


def test_every_config_file_is_covered():
    names = {p.name for p in ALL_YAMLS}
    assert {"quickstart.yaml", "minecraft.yaml"} <= names


@pytest.mark.parametrize("path", ALL_YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_instantiates(path, tiny_dataset):
    content = yaml.safe_load(path.read_text()) or {}
    trainer = content.get("trainer", {}) if isinstance(content, dict) else {}
    args = [*config_args(path), "--data.root", tiny_dataset, *SMALL_MODEL]
    if trainer.get("accelerator") in ("gpu", "cuda"):
        cli = BuildWithoutTrainer(args=args, run=False)
        strategy = cli.trainer["strategy"]
        assert isinstance(strategy, (str, Strategy)), strategy
        assert all(isinstance(c, pl.Callback) for c in cli.trainer["callbacks"] or [])
    else:
        cli = DynamicsCLI(args=args, run=False)
        assert isinstance(cli.trainer, pl.Trainer)
    assert isinstance(cli.model, DynamicsModule)
    assert cli.model.config.latent_tokens == 16 and cli.model.config.num_discrete_actions == (5,)  # linked
    assert cli.config["trainer"]["use_distributed_sampler"] is False  # the DataModule shards itself


def test_minecraft_config_holds_the_paper_numbers():
    content = yaml.safe_load((CONFIGS / "minecraft.yaml").read_text())
    model, data, trainer = content["model"]["model"], content["data"], content["trainer"]
    assert trainer["precision"] == "bf16-mixed" and trainer["accelerator"] == "gpu"
    assert (data["short_length"], data["long_length"]) == (64, 256)  # T1, T2
    assert model["context_length"] == 192 and data["long_length"] > model["context_length"]  # C < T2
    assert model["k_max"] == 64 and model["time_every"] == 4
    assert 512 // model["pack_factor"] == 256  # 512 x 16 tokenizer latents -> N_z = 256 spatial tokens
    assert content["model"]["objective"]["image_row_share"] == 0.3
    assert content["model"]["rollout"]["num_steps"] == 4


def test_quickstart_config_runs_on_cpu_in_fp32_with_builtin_data():
    content = yaml.safe_load(QUICKSTART.read_text())
    assert content["trainer"]["accelerator"] == "cpu" and content["trainer"]["precision"] == "32-true"
    assert content["data"]["root"] is None  # built-in procedural environment
    callbacks = [c["class_path"] for c in content["trainer"]["callbacks"]]
    assert "dreamer_dynamics.training.EMA" in callbacks  # checkpoints resume from the live weights


def test_gpu_quickstart_keeps_the_quickstart_objective_and_scales_its_schedule():
    """The GPU quickstart trains the CPU quickstart's objective (every objective setting equal), bf16 and
    compiled, a larger model on larger batches; the phases tied to max_steps keep the quickstart's shares."""
    cpu, gpu = (
        yaml.safe_load((CONFIGS / name).read_text()) for name in ("quickstart.yaml", "quickstart_gpu.yaml")
    )
    schedule_keys = {"model", "optimizer", "scheduler", "objective"}
    assert {k: v for k, v in gpu["model"].items() if k not in schedule_keys} == {
        k: v for k, v in cpu["model"].items() if k not in schedule_keys
    }
    gpu_objective, cpu_objective = (dict(c["model"]["objective"]) for c in (gpu, cpu))
    assert gpu_objective.pop("bootstrap_warmup_steps") and cpu_objective.pop("bootstrap_warmup_steps")
    assert gpu_objective == cpu_objective
    assert gpu["model"]["optimizer"]["class_path"] == cpu["model"]["optimizer"]["class_path"]
    assert gpu["trainer"]["precision"] == "bf16-mixed" and gpu["trainer"]["accelerator"] == "gpu"
    model = gpu["model"]["model"]
    assert model["compile_blocks"] is True and model["k_max"] in (16, 32)
    assert model["dim"] > 96 and model["depth"] > 4 and model["dim"] // model["heads"] >= 16  # flex on CUDA
    assert gpu["data"]["root"] is None and gpu["data"]["short_batch_size"] > cpu["data"]["short_batch_size"]

    def shares(config):  # bootstrap phase and warm-up as shares of max_steps
        steps = config["trainer"]["max_steps"]
        warmup = config["model"]["scheduler"]["init_args"]["warmup_steps"]
        return 1 - config["model"]["objective"]["bootstrap_warmup_steps"] / steps, warmup / steps

    for got, want in zip(shares(gpu), shares(cpu)):
        assert got == pytest.approx(want, abs=0.01)
