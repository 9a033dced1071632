"""Fully sharded training: ``lightning_configs/gpu_fsdp.yaml`` (FSDP1) and FSDP2 on CPU.

- CPU, FSDP1: Lightning refuses ``FSDPStrategy`` without CUDA and PyTorch's FSDP1 needs an accelerator, so the
  overlay is built through the real CLI parser without the Trainer (which checks for GPUs) and its objects are
  inspected: sharding per transformer block, full-state-dict checkpoints, bf16-mixed, norm clipping,
  activation checkpointing, no EMA callback.
- CPU, FSDP2: ``fully_shard`` per block through ``ModelParallelStrategy`` runs on 2 gloo ranks with the
  ``configure_model`` proposed for DynamicsModule; it checks norm clipping over the whole sharded gradient,
  identical normaliser state on both ranks, and that the full checkpoint reloads unsharded on CPU and rolls
  out.
- GPU, FSDP1 (only where CUDA exists): a 1-GPU run of gpu_fsdp.yaml through the console script, with norm
  clipping; its one full checkpoint reloads on CPU and rolls out.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from dreamer_dynamics.cli import DynamicsCLI
from dreamer_dynamics.data import LatentDatasetWriter
from dreamer_dynamics.model.transformer import Block
from tests.distributed_probe import rollout_from_checkpoint
from tests.test_ddp import CONFIGS as DDP_CONFIGS
from tests.test_ddp import REPO, console_script, subprocess_env

MINECRAFT = REPO / "lightning_configs" / "minecraft.yaml"
QUICKSTART = REPO / "lightning_configs" / "quickstart.yaml"
GPU_FSDP = REPO / "lightning_configs" / "gpu_fsdp.yaml"
TINY = DDP_CONFIGS[-1]  # tests/configs/tiny_scale.yaml


class BuildWithoutTrainer(DynamicsCLI):
    """Instantiates model, data, strategy, callbacks and logger, not the Trainer (which checks for GPUs)."""

    def instantiate_trainer(self, **kwargs):
        return self.config_init["trainer"]


@pytest.fixture()
def tiny_dataset(tmp_path) -> str:
    """Latents 16 x 8 (divisible by minecraft's pack factor 2), one discrete action with 5 classes."""
    rng = np.random.default_rng(0)
    with LatentDatasetWriter(tmp_path / "data", latent_shape=(16, 8), num_discrete_actions=(5,)) as writer:
        for _ in range(3):
            writer.add_episode(
                rng.standard_normal((8, 16, 8)).astype(np.float32),
                actions_discrete=rng.integers(0, 5, (8, 1)),
            )
    return str(tmp_path / "data")


def test_gpu_fsdp_overlay_shards_blocks_in_bf16_with_norm_clipping(tiny_dataset, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["dreamer-dynamics"])
    monkeypatch.chdir(tmp_path)
    cli = BuildWithoutTrainer(
        args=[
            "--config",
            str(MINECRAFT),
            "--config",
            str(GPU_FSDP),
            "--data.root",
            tiny_dataset,
            "--model.model.dim=32",
            "--model.model.depth=4",
            "--model.model.heads=2",
            "--model.model.kv_heads=1",
        ],
        run=False,
    )
    trainer = cli.trainer
    strategy = trainer["strategy"]
    assert type(strategy) is FSDPStrategy
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and set(policy._module_classes) == {Block}
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy._state_dict_type == "full"  # one .ckpt that loads without FSDP
    assert strategy.kwargs["use_orig_params"]  # per-parameter optimiser groups (no decay on norms)
    assert trainer["precision"] == "bf16-mixed"
    assert trainer["gradient_clip_algorithm"] == "norm" and trainer["gradient_clip_val"] > 0
    assert trainer["use_distributed_sampler"] is False
    callbacks = trainer["callbacks"]
    assert not any(isinstance(c, WeightAveraging) for c in callbacks)  # cannot average sharded parameters
    assert any(isinstance(c, ModelCheckpoint) and c.save_last for c in callbacks)
    assert cli.model.config.activation_checkpointing is True
    blocks = [m for m in cli.model.modules() if isinstance(m, Block)]
    assert len(blocks) == 4  # the wrap units exist in the model the strategy will wrap


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a CUDA GPU")
def test_fsdp_training_on_one_gpu_writes_a_full_checkpoint_that_rolls_out_on_cpu(tmp_path):
    # the FSDP overlay last: its callbacks list (no EMA) replaces the tiny overlay's
    cmd = [
        console_script(),
        "fit",
        f"--config={QUICKSTART}",
        f"--config={TINY}",
        f"--config={GPU_FSDP}",
        "--trainer.devices=1",
        "--data.num_workers=0",
        "--data.pin_memory=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.gradient_clip_val=0.01",
    ]  # small enough that clipping acts at every step
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert state["global_step"] == 6
    assert not any("_fsdp_wrapped_module" in key for key in state["state_dict"])  # full, unwrapped keys

    rollout_from_checkpoint(checkpoints[0])


@pytest.mark.slow
def test_fsdp2_on_two_cpu_ranks_clips_the_global_norm_and_its_checkpoint_rolls_out(tmp_path):
    """FSDP2 (``fully_shard`` per block, ``DynamicsModule.configure_model``) through ModelParallelStrategy,
    2 gloo ranks, via the console script."""
    recorder = {
        "class_path": "tests.distributed_probe.RankRecorder",
        "init_args": {"out_dir": str(tmp_path / "p")},
    }
    fsdp2 = REPO / "tests" / "configs" / "fsdp2_cpu.yaml"
    cmd = [
        sys.executable,
        "-m",
        "dreamer_dynamics.cli",
        "fit",
        f"--config={QUICKSTART}",
        f"--config={TINY}",
        f"--config={fsdp2}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.callbacks+=" + json.dumps(recorder),
    ]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]
    rank0, rank1 = (json.loads((tmp_path / "p" / f"rank{r}-run0.json").read_text()) for r in range(2))
    assert rank0["strategy"] == "ModelParallelStrategy" and rank0["world_size"] == 2
    # clipping acted on the norm of the WHOLE (sharded) gradient: above 0.01 before, at 0.01 after, every step
    for record in (rank0, rank1):
        assert all(step["grad_norm"] > 0.01 for step in record["steps"])
        assert len(record["clipped_grad_norms"]) == 6
        assert all(norm == pytest.approx(0.01, rel=1e-3) for norm in record["clipped_grad_norms"])
    assert rank0["loss_rms"] == rank1["loss_rms"] and rank0["weights_checksum"] == rank1["weights_checksum"]

    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert state["global_step"] == 6 and all(type(v) is torch.Tensor for v in state["state_dict"].values())

    module = rollout_from_checkpoint(checkpoints[0])
    checksum = sum(float(p.detach().abs().sum()) for p in module.parameters())
    assert checksum == pytest.approx(rank0["weights_checksum"], rel=1e-5)  # the gathered weights, all of them
