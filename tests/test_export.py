"""``dreamer-dynamics export``: it says which weights it wrote (the EMA's only once averaging started), writes
files as readable as every other output, and the README's decoding of an exported rollout runs; the tool's
``--help`` describes it and lists ``export``."""

from __future__ import annotations

import os
import stat
import sys

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dreamer_dynamics.cli import main
from dreamer_dynamics.data import load_codec
from dreamer_dynamics.export import main as export_main
from dreamer_dynamics.model import DynamicsTransformer
from dreamer_dynamics.training import EMA
from tests.test_module import make_data, make_module, make_trainer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoints after steps 1 and 3 of a run whose EMA first updates at (zero-based) step 2."""
    root = tmp_path_factory.mktemp("export")
    data = make_data(root / "cache")
    module = make_module(data)
    saver = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1)
    ema = EMA(decay=0.5, update_starting_at_step=2)
    trainer = make_trainer(root, max_steps=3, logger=False, limit_val_batches=0, callbacks=[saver, ema])
    trainer.fit(module, data)
    found = {int(p.stem.split("step=")[1]): p for p in (root / "ckpt").glob("*.ckpt")}
    return found[1], found[3]


def test_export_names_the_weights_it_wrote(tmp_path, capsys, checkpoints):
    before, after = checkpoints
    assert export_main([str(before), str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "(online weights" in out and "EMA" in out and "(ema weights)" not in out  # EMA not started yet
    assert export_main([str(after), str(tmp_path / "b")]) == 0
    assert "(EMA weights)" in capsys.readouterr().out
    assert export_main([str(after), str(tmp_path / "c"), "--weights", "online"]) == 0
    assert "(online weights)" in capsys.readouterr().out


def test_exported_files_follow_the_umask(tmp_path, checkpoints):
    old = os.umask(0o022)
    try:
        assert export_main([str(checkpoints[1]), str(tmp_path / "e")]) == 0
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / "e" / name).stat().st_mode) == 0o644, name


def test_the_readme_decodes_an_exported_rollout_to_pixels(tmp_path, checkpoints):
    assert export_main([str(checkpoints[1]), str(tmp_path / "exported")]) == 0
    model = DynamicsTransformer.from_pretrained(tmp_path / "exported")
    cfg = model.config
    context = torch.randn(1, 2, cfg.latent_tokens, cfg.latent_dim)
    actions = torch.zeros(1, 5, len(cfg.num_discrete_actions), dtype=torch.long)
    frames = model.rollout(context, horizon=3, actions_discrete=actions)  # as in the README
    codec = load_codec(model.codec_spec)  # the dataset's codec, recorded by the export
    pixels = codec.decode(frames[0].numpy())  # [horizon, H, W, C]
    size = codec.image_size
    assert pixels.shape == (3, size, size, 3) and np.isfinite(pixels).all()


def test_help_describes_the_tool_and_lists_export(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dreamer-dynamics"])
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Lightning Trainer command line tool" not in out
    assert "world model" in out and "export CKPT DIR" in out
