"""Latent standardisation end to end: the DataModule builds ``LatentUnits`` from the dataset's
``latent_stats``, the module carries them (hparams -> checkpoint -> export -> ``from_pretrained``), and
rollouts / predictions come back in the dataset's own units."""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from dreamer_dynamics.cli import DynamicsCLI
from dreamer_dynamics.cli import main as cli_main
from dreamer_dynamics.data import LatentDataset, LatentDatasetWriter
from dreamer_dynamics.data.building.worlds import ToyDatasetConfig, builtin_dataset_root
from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.model import DynamicsTransformer, RolloutConfig
from dreamer_dynamics.module import DynamicsModule
from dreamer_dynamics.training import RolloutWriter
from dreamer_dynamics.units import LatentUnits
from tests.conftest import quiet_trainer, tiny_datamodule, tiny_module

SCALE, OFFSET = 0.05, 3.0  # raw pixel patches: mean ~0.3, std ~0.13; here a harsher case


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """The same built-in episodes written twice: in the built-in units, and x SCALE + OFFSET."""
    base = tmp_path_factory.mktemp("standardize")
    toy_root = builtin_dataset_root(ToyDatasetConfig(episodes=6, length=24), base / "cache", progress=False)
    toy = LatentDataset(toy_root)
    out = {}
    for name, (scale, offset) in {"unit": (1.0, 0.0), "scaled": (SCALE, OFFSET)}.items():
        with LatentDatasetWriter(
            base / name, latent_shape=toy.latent_shape, num_discrete_actions=(5,), codec=toy.meta.codec
        ) as writer:
            for i in range(len(toy)):
                episode = toy[i]
                latents = np.asarray(episode["latents"], np.float64) * scale + offset  # (T, N_b, D_b)
                writer.add_episode(latents, actions_discrete=np.asarray(episode["actions_discrete"]))
        out[name] = str(base / name)
    return out


class LossHistory(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics["train/shortcut"]))  # unnormalised objective


def train(root, tmp_path, steps=20, **data_kwargs) -> tuple[DynamicsModule, list[float]]:
    pl.seed_everything(0)
    data = tiny_datamodule(root, **data_kwargs)
    module = tiny_module(data)
    history = LossHistory()
    quiet_trainer(tmp_path, steps, [history]).fit(module, data)
    return module.eval(), history.losses


@pytest.mark.slow
def test_scaled_copy_trains_to_the_same_losses_and_rolls_out_in_its_own_units(roots, tmp_path):
    unit, unit_losses = train(roots["unit"], tmp_path / "unit")
    scaled, scaled_losses = train(roots["scaled"], tmp_path / "scaled")
    # standardisation maps both copies to the same data up to float32 rounding: the same run, step by step
    np.testing.assert_allclose(scaled_losses, unit_losses, rtol=1e-4)  # measured: 5e-7
    _, raw_losses = train(roots["scaled"], tmp_path / "raw", standardize=False)
    # unstandardised, the scaled copy is a different problem (measured: 7.5x apart at the median step)
    assert np.median(np.abs(np.asarray(raw_losses) / np.asarray(unit_losses) - 1)) > 0.5

    # rollouts take and return the dataset's own units: scaled context in -> scaled frames out
    episode = LatentDataset(roots["unit"])[0]
    context = torch.from_numpy(np.array(episode["latents"][None, :3]))  # (1, 3, N_b, D_b) built-in units
    actions = torch.from_numpy(np.array(episode["actions_discrete"][None, :7], np.int64))
    kwargs = dict(
        actions_discrete=actions, num_steps=2, unconditional=True
    )  # no continuous actions in the data
    out_unit = unit.model.rollout(context, 4, generator=torch.Generator().manual_seed(5), **kwargs)
    scaled_context = context * SCALE + OFFSET
    out_scaled = scaled.model.rollout(scaled_context, 4, generator=torch.Generator().manual_seed(5), **kwargs)
    assert out_unit.shape == (1, 4, 16, 48)
    expected = (out_unit * SCALE + OFFSET).numpy()
    np.testing.assert_allclose(out_scaled.numpy(), expected, atol=1e-4 * SCALE)  # measured: 5e-6 x SCALE


def test_units_are_the_datasets_pooled_statistics_and_reach_the_ema_copy(roots, tmp_path):
    data = tiny_datamodule(roots["scaled"])
    stats = LatentDataset(roots["scaled"]).latent_stats
    pooled = np.sqrt(np.mean(np.square(stats["std"])))  # one pooled std for every channel
    assert data.latent_units == LatentUnits(stats["mean"], [pooled] * 48)
    assert LatentUnits.from_stats(stats, "channel").std == tuple(stats["std"])  # what "pooled" is not
    module = tiny_module(data)
    ema = EMAWeightAveraging(decay=0.5)
    seen = {}

    class BeforeTheFirstUpdate(pl.Callback):
        def on_train_start(self, trainer, pl_module):  # the copy validation would swap in at this point
            seen["units"] = ema._average_model.module.model.latent_units

    quiet_trainer(tmp_path, 2, [ema, BeforeTheFirstUpdate()]).fit(module, data)
    assert seen["units"] == module.model.latent_units == data.latent_units
    assert module.hparams.latent_units == data.latent_units.to_dict()


@pytest.mark.parametrize("units", ["none", "other", "raw"])
def test_fit_refuses_a_module_in_other_units_than_its_batches(roots, tmp_path, units):
    """No silent adoption: a module built without the DataModule's units (or with others) is refused."""
    data = tiny_datamodule(roots["scaled"], standardize=False if units == "raw" else True)
    given = {
        "none": None,
        "other": LatentUnits.from_stats(LatentDataset(roots["unit"]).latent_stats),
        "raw": tiny_datamodule(roots["scaled"]).latent_units,  # standardised units, unstandardised batches
    }[units]
    if units == "raw":
        assert data.latent_units == LatentUnits.identity(48)
    with pytest.raises(ConfigError, match="latent_units differ from those of the DataModule"):
        quiet_trainer(tmp_path, 1).fit(tiny_module(data, latent_units=given), data)


def test_checkpoint_carries_the_units_and_predict_writes_data_units(roots, tmp_path):
    data = tiny_datamodule(roots["scaled"])
    module = tiny_module(data)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    quiet_trainer(tmp_path, 1, [checkpoint]).fit(module, data)
    path = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(path, weights_only=True)
    assert state["hyper_parameters"]["latent_units"] == data.latent_units.to_dict()  # a plain dict
    loaded = DynamicsModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.model.latent_units == module.model.latent_units
    z = torch.randn(2, 3, 16, 48)
    units = loaded.model.latent_units
    torch.testing.assert_close(units.destandardize(units.standardize(z)), z, atol=1e-6, rtol=1e-6)

    # a checkpoint without units loads as the identity
    del state["hyper_parameters"]["latent_units"]
    torch.save(state, tmp_path / "old.ckpt")
    old = DynamicsModule.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    assert old.model.latent_units == LatentUnits.identity(48)

    writer = RolloutWriter(output_dir=str(tmp_path / "pred"), format="pt", pictures=False)
    quiet_trainer(tmp_path, 1, [writer]).predict(loaded, datamodule=data, return_predictions=False)
    (file,) = (tmp_path / "pred").iterdir()
    out = torch.load(file, weights_only=True)
    raw_data = tiny_datamodule(roots["scaled"], standardize=False)
    raw = next(iter(raw_data.predict_dataloader()))["latents"]  # the stored values
    torch.testing.assert_close(out["context"], raw[:, :2], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["ground_truth"], raw[:, 2:], atol=1e-5, rtol=0)
    assert abs(float(out["rollout"].mean()) - OFFSET) < 0.5  # generated frames in the same units


def test_module_export_and_pretrained_roll_out_identically(roots, tmp_path):
    """One rollout in data units for a trained module, the `dreamer-dynamics export` of its checkpoint and its
    network's save_pretrained + from_pretrained: the same units (pooled), K and context noise, the same
    frames for the same generator."""
    pl.seed_everything(0)
    data = tiny_datamodule(roots["scaled"])
    module = tiny_module(data, rollout={"num_steps": 2, "context_noise": 0.25})
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    quiet_trainer(tmp_path, 2, [checkpoint]).fit(module, data)
    with pytest.raises(SystemExit) as exited:
        cli_main(
            ["export", str(tmp_path / "ckpt" / "last.ckpt"), str(tmp_path / "cli"), "--weights", "online"]
        )
    assert exited.value.code == 0
    module.model.save_pretrained(tmp_path / "direct")
    loaded = DynamicsModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", weights_only=True)

    episode = LatentDataset(roots["scaled"])[1]
    context = torch.from_numpy(np.array(episode["latents"][None, :3], np.float32))  # data units
    actions = torch.from_numpy(np.array(episode["actions_discrete"][None, :6], np.int64))
    runners = {
        "module": module.model,
        "loaded": loaded.model,
        "export": DynamicsTransformer.from_pretrained(tmp_path / "cli"),
        "save_pretrained": DynamicsTransformer.from_pretrained(tmp_path / "direct"),
    }
    kwargs = {"actions_discrete": actions, "unconditional": True}  # no continuous actions in the data
    out = {
        name: model.rollout(context, 3, generator=torch.Generator().manual_seed(9), **kwargs)
        for name, model in runners.items()
    }
    for name in ("loaded", "export", "save_pretrained"):
        assert runners[name].rollout_defaults == RolloutConfig(2, 0.25), name
        assert torch.equal(out[name], out["module"]), name
    # the pooled units matter: per-channel standardisation of the same statistics rolls out elsewhere
    per_channel = DynamicsTransformer.from_pretrained(tmp_path / "direct")
    per_channel.latent_units = LatentUnits.from_stats(LatentDataset(roots["scaled"]).latent_stats, "channel")
    other = per_channel.rollout(context, 3, generator=torch.Generator().manual_seed(9), **kwargs)
    assert (other - out["module"]).abs().max() > 1e-3  # measured 2e-2; float32 rounding at 3.0 is 2e-7


def test_cli_links_the_units_into_the_model(roots, monkeypatch):
    from tests.conftest import QUICKSTART, TINY_CLI

    monkeypatch.setattr(sys, "argv", ["dreamer-dynamics"])
    args = ["--config", QUICKSTART, "--data.root", roots["scaled"], *TINY_CLI]
    cli = DynamicsCLI(args=args, run=False)
    stored = json.loads(open(f"{roots['scaled']}/metadata.json").read())["latent_stats"]
    assert cli.datamodule.latent_units == LatentUnits.from_stats(stored, "pooled")
    assert cli.model.model.latent_units == cli.datamodule.latent_units
    assert cli.model.hparams.latent_units == cli.datamodule.latent_units.to_dict()
    cli = DynamicsCLI(args=[*args, "--data.standardize=false"], run=False)
    assert cli.model.model.latent_units == cli.datamodule.latent_units == LatentUnits.identity(48)


def test_rollout_images_are_decoded_in_the_datasets_units(roots, tmp_path):
    import io

    from lightning.pytorch.loggers import TensorBoardLogger
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dreamer_dynamics.training import RolloutImageLogger

    data = tiny_datamodule(roots["scaled"])
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = quiet_trainer(
        tmp_path,
        1,
        [RolloutImageLogger(max_sequences=1)],
        logger=logger,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        val_check_interval=1,
        check_val_every_n_epoch=None,
    )
    trainer.fit(tiny_module(data), data)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    png = events.Images("val/rollout_0")[-1].encoded_image_string
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255  # (rows*16, 56+3*16, 3)
    # rows 1 and 2 (after a 56-pixel label column): the 2 context frames and the 3 true frames after them,
    # decoded from the stored values
    raw = next(iter(tiny_datamodule(roots["scaled"], standardize=False).val_dataloader()))["latents"][0, :5]
    expected = data.decoder(raw).clamp(0, 1)  # (5, 16, 16, 3)
    expected = expected.permute(1, 0, 2, 3).flatten(1, 2).numpy()  # (16, 5*16, 3)
    np.testing.assert_allclose(image[:16, 56 : 56 + 2 * 16], expected[:, : 2 * 16], atol=1.5 / 255)
    np.testing.assert_allclose(image[16:32, 56:], expected[:, 2 * 16 :], atol=1.5 / 255)


def test_rollout_energy_scores_are_in_the_datasets_units(roots, tmp_path):
    """Validation scores rollouts, truth and the copy-last baseline in the dataset's units: on the scaled copy
    (same batches after standardisation, same weights) every energy score is SCALE times the built-in one
    and the ratio to copy-last is unchanged. A baseline scored in other units than the samples breaks both."""
    scores = {}
    for name, root in roots.items():
        data = tiny_datamodule(root)
        torch.manual_seed(0)
        module = tiny_module(data, evaluation={"rollout_steps": [1, 4]})
        trainer = quiet_trainer(tmp_path / name, 0)
        trainer.limit_val_batches = 1
        trainer.validate(module, data, verbose=False)
        scores[name] = {k: float(v) for k, v in trainer.callback_metrics.items() if "rollout_es" in k}
    unit, scaled = scores["unit"], scores["scaled"]
    assert {"val/rollout_es_ratio_k4", "val/rollout_es_copy_last", "val/rollout_es_k4"} <= set(unit)
    for key in unit:
        expected = unit[key] if "ratio" in key else SCALE * unit[key]
        assert scaled[key] == pytest.approx(expected, rel=1e-3), key
