"""Non-finite data never trains silently: a NaN latent is refused before any step (one line naming the episode
file and the frame), ``validate --quick`` finds it, and a non-finite loss stops the run at its step without
writing a checkpoint of it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dreamer_dynamics.cli import main
from dreamer_dynamics.data import DynamicsDataModule, LatentDatasetWriter
from dreamer_dynamics.data.cli import main as data_main
from dreamer_dynamics.data.reading.format import DatasetError
from dreamer_dynamics.errors import NonFiniteLossError
from tests.conftest import QUICKSTART, TINY_CLI, tiny_datamodule, tiny_module
from tests.test_module import make_trainer


def dataset_with_a_nan(root, *, episode=2, frame=5, keep_stats=False):
    """Four finite episodes written by the writer, then one frame of one episode overwritten with NaN (as a
    tool writing the files by hand could leave it); returns the latents file holding it."""
    rng = np.random.default_rng(0)
    with LatentDatasetWriter(root, latent_shape=(6, 10)) as writer:
        for _ in range(4):
            writer.add_episode(rng.standard_normal((12, 6, 10)).astype(np.float32))
    path = root / "episodes" / f"{episode:06d}.latents.npy"
    latents = np.load(path)
    latents[frame, 3, 7] = np.nan
    np.save(path, latents)
    if not keep_stats:
        meta = json.loads((root / "metadata.json").read_text())
        del meta["latent_stats"]
        (root / "metadata.json").write_text(json.dumps(meta))
    return path


def test_the_datamodule_refuses_a_nan_latent_naming_the_file_and_frame(tmp_path):
    path = dataset_with_a_nan(tmp_path / "d")
    with pytest.raises(DatasetError, match=rf"{path}: latents contain NaN/inf at frame 5"):
        DynamicsDataModule(root=str(tmp_path / "d"))
    assert "latent_stats" not in json.loads((tmp_path / "d" / "metadata.json").read_text())  # none recorded


def test_fit_refuses_it_in_one_line_before_any_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dreamer-dynamics"])
    monkeypatch.delenv("DREAMER_DYNAMICS_TRACEBACK", raising=False)
    path = dataset_with_a_nan(tmp_path / "d")
    runs = tmp_path / "runs"
    args = ["fit", "--config", QUICKSTART, "--data.root", str(tmp_path / "d"), *TINY_CLI]
    with pytest.raises(SystemExit) as stopped:
        main([*args, f"--trainer.default_root_dir={runs}"])
    assert stopped.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"dreamer-dynamics: error: {path}: latents contain NaN/inf at frame 5"], lines
    assert not list(runs.rglob("*.ckpt"))


@pytest.mark.parametrize("keep_stats", [False, True])
def test_validate_quick_finds_it(tmp_path, capsys, keep_stats):
    path = dataset_with_a_nan(tmp_path / "d", keep_stats=keep_stats)
    if keep_stats:  # statistics recorded over the NaN (NaN is not valid JSON for the format: refused on read)
        meta = json.loads((tmp_path / "d" / "metadata.json").read_text())
        meta["latent_stats"]["mean"][7] = float("nan")
        (tmp_path / "d" / "metadata.json").write_text(json.dumps(meta))
    assert data_main(["validate", "--quick", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert (str(path) in err[0] and "frame 5" in err[0]) if not keep_stats else "latent_stats" in err[0]
    assert data_main(["validate", str(tmp_path / "d")]) == 1  # the full check too
    err = capsys.readouterr().err
    assert ("frame 5" in err) if not keep_stats else ("latent_stats" in err)


def test_a_non_finite_loss_stops_the_run_at_its_step_and_writes_no_checkpoint_of_it(tmp_path, cache):
    from dreamer_dynamics.module import DynamicsModule

    class NanAtStepTwo(DynamicsModule):
        extra_loss_names = ("probe",)

        def extra_loss_terms(self, batch, output):
            return {"probe": output.loss * (float("nan") if self.global_step == 2 else 1.0)}

    data = tiny_datamodule(cache=cache)
    module = tiny_module(data, cls=NanAtStepTwo)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    trainer = make_trainer(tmp_path, max_steps=5, logger=False, limit_val_batches=0, callbacks=[checkpoints])
    with pytest.raises(NonFiniteLossError, match=r"step 3\b.*not finite") as error:
        trainer.fit(module, data)
    assert "\n" not in str(error.value)
    assert trainer.global_step == 2
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("toy_cache")
