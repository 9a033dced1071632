"""Exact resume: a run stopped at step N and resumed from its checkpoint ends bit-identical (CPU) to an
uninterrupted run -- weights, EMA weights and loss-normaliser state -- also with DataLoader worker processes
(which prefetch ahead of the steps), and the checkpoint loads weights-only. Through the console script and
DDP: tests/test_resume_cli.py."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dreamer_dynamics.training import EMA
from tests.conftest import quiet_trainer, tiny_datamodule, tiny_module

TOTAL_STEPS, STOP_AT = 8, 4


def _run(tmp_path, cache, max_steps: int, ckpt_path=None, num_workers=0):
    pl.seed_everything(0, workers=True)
    data = tiny_datamodule(cache=cache, val_batch_size=2, predict_length=None, num_workers=num_workers)
    module = tiny_module(data, noise_seed=None, evaluation={"rollout_horizon": 2, "rollout_steps": [2]})
    ema = EMA(decay=0.9)
    trainer = quiet_trainer(
        tmp_path,
        max_steps,
        [
            ema,
            ModelCheckpoint(
                dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=STOP_AT, save_top_k=-1
            ),
        ],
        limit_val_batches=None,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, data, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module, ema


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_run_is_bit_identical(tmp_path, num_workers):
    cache = tmp_path / "cache"
    straight, straight_ema = _run(tmp_path / "straight", cache, TOTAL_STEPS, num_workers=num_workers)
    _run(tmp_path / "stopped", cache, STOP_AT, num_workers=num_workers)
    checkpoint = tmp_path / "stopped" / "ckpt" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)  # everything in it is weights-only safe
    assert state["global_step"] == STOP_AT
    assert "dreamer_dynamics_rng" in state and "current_model_state" in state  # own RNG + EMA's live weights
    assert any(k.startswith("loss_normalizer.") for k in state["current_model_state"])
    resumed, resumed_ema = _run(
        tmp_path / "resumed", cache, TOTAL_STEPS, ckpt_path=checkpoint, num_workers=num_workers
    )

    assert resumed.trainer.global_step == straight.trainer.global_step == TOTAL_STEPS
    straight_state, resumed_state = straight.state_dict(), resumed.state_dict()
    assert straight_state.keys() == resumed_state.keys()
    for name, value in straight_state.items():
        assert torch.equal(value, resumed_state[name]), f"{name} differs after resume"
    for (name, a), b in zip(
        straight_ema.averaged_model.state_dict().items(), resumed_ema.averaged_model.state_dict().values()
    ):
        assert torch.equal(a, b), f"EMA {name} differs after resume"
    # A run that is not resumed from the checkpoint really is different (the test has teeth).
    fresh, _ = _run(tmp_path / "fresh", cache, TOTAL_STEPS - STOP_AT, num_workers=num_workers)
    assert not all(torch.equal(p, q) for p, q in zip(fresh.parameters(), straight.parameters()))


def test_resume_on_another_world_size_re_derives_the_noise_streams(tmp_path):
    """A checkpoint written by 2 ranks, resumed in 1 process: a warning, and a noise stream derived from
    (noise seed, rank, step) -- not rank 0's saved stream, which rank 1 would otherwise duplicate."""
    cache = tmp_path / "cache"
    _run(tmp_path / "stopped", cache, STOP_AT)
    state = torch.load(tmp_path / "stopped" / "ckpt" / "last.ckpt", weights_only=True)
    saved = state["dreamer_dynamics_rng"]["ranks"][0]
    other = {**saved, "noise_generator": torch.Generator().manual_seed(123).get_state()}
    state["dreamer_dynamics_rng"] = {"world_size": 2, "ranks": [saved, other]}
    torch.save(state, tmp_path / "two_ranks.ckpt")
    with pytest.warns(UserWarning, match="random state of 2 ranks, this run has 1.*re-derived"):
        resumed, _ = _run(tmp_path / "resumed", cache, STOP_AT + 1, ckpt_path=tmp_path / "two_ranks.ckpt")
    original = tmp_path / "stopped" / "ckpt" / "last.ckpt"
    continued, _ = _run(tmp_path / "continued", cache, STOP_AT + 1, ckpt_path=original)
    assert not torch.equal(resumed.noise_generator.get_state(), continued.noise_generator.get_state())
