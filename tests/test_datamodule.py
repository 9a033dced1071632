"""DynamicsDataModule: spec, batch layout, workers, split errors, exact resume under Lightning."""

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from dreamer_dynamics.data import DatasetError, DynamicsDataModule, LatentDatasetWriter
from dreamer_dynamics.data.building.worlds import ToyDatasetConfig, builtin_datamodule
from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.units import LatentUnits
from tests.conftest import quiet_trainer

TOY = ToyDatasetConfig(episodes=10, length=40)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _module(cache, **kwargs):
    defaults = dict(
        short_length=8,
        long_length=16,
        short_batch_size=4,
        long_batch_size=2,
        long_every=3,
        val_fraction=0.2,
        steps_per_epoch=6,
        val_batches=2,
    )
    return builtin_datamodule(toy=TOY, cache_dir=cache, **{**defaults, **kwargs})


def test_builtin_spec_and_batch_layout(cache):
    dm = _module(cache)
    assert (dm.latent_tokens, dm.latent_dim) == (16, 48)
    assert dm.num_discrete_actions == (5,) and dm.num_continuous_actions == 0
    assert dm.token_grid == (4, 4)  # the patch codec's grid, linked into the model's 2-D space positions
    assert _module(cache, token_grid=(2, 8)).token_grid == (2, 8)
    with pytest.raises(ConfigError, match="data.token_grid=.*16 latent tokens"):
        _ = _module(cache, token_grid=(3, 5)).token_grid
    images = dm.decoder(torch.zeros(2, 16, 48))
    assert images.shape == (2, 16, 16, 3) and float(images.min()) >= 0 and float(images.max()) <= 1
    assert dm.val_episodes and sorted(dm.train_episodes + dm.val_episodes) == list(range(10))  # hash split
    batches = list(dm.train_dataloader())
    assert len(batches) == 6
    for step, batch in enumerate(batches):
        long = step % 3 == 2
        assert set(batch) == {"latents", "actions_discrete"}
        assert batch["latents"].shape == ((2, 16, 16, 48) if long else (4, 8, 16, 48))
        assert batch["latents"].dtype == torch.float32 and batch["actions_discrete"].dtype == torch.int64
        assert batch["actions_discrete"].shape[-1] == 1
    val = list(dm.val_dataloader())
    assert len(val) >= 1 and val[0]["latents"].shape[1:] == (8, 16, 48)
    again = list(_module(cache).val_dataloader())
    assert all(torch.equal(a["latents"], b["latents"]) for a, b in zip(val, again))  # fixed windows
    assert next(iter(dm.predict_dataloader()))["latents"].shape[1] == 16
    assert next(iter(dm.test_dataloader()))["latents"].shape[1] == 16


def test_workers_give_the_same_batches(cache):
    reference = list(_module(cache, num_workers=0).train_dataloader())
    with_workers = list(_module(cache, num_workers=2).train_dataloader())
    assert len(reference) == len(with_workers)
    for a, b in zip(reference, with_workers):
        assert torch.equal(a["latents"], b["latents"]) and torch.equal(
            a["actions_discrete"], b["actions_discrete"]
        )


def test_empty_split_and_short_episodes_are_reported(tmp_path):
    with LatentDatasetWriter(tmp_path / "one", latent_shape=(2, 2)) as w:
        w.add_episode(np.zeros((50, 2, 2), np.float32))
    dm = DynamicsDataModule(str(tmp_path / "one"), short_length=4, long_length=8)
    assert dm.latent_tokens == 2 and dm.decoder is None and dm.num_discrete_actions == ()
    with pytest.raises(DatasetError, match="empty validation split: 1 episode"):
        dm.setup("fit")
    DynamicsDataModule(
        str(tmp_path / "one"), short_length=4, long_length=8, val_fraction=0
    ).train_dataloader()
    with LatentDatasetWriter(tmp_path / "short", latent_shape=(2, 2)) as w:
        for _ in range(3):
            w.add_episode(np.zeros((10, 2, 2), np.float32))
    dm = DynamicsDataModule(str(tmp_path / "short"), short_length=4, long_length=32, val_fraction=0.3)
    with pytest.raises(DatasetError, match="no episode is long enough for batches of 32 frames"):
        dm.train_dataloader()
    with pytest.raises(DatasetError, match="no validation episode has 12 frames"):
        DynamicsDataModule(
            str(tmp_path / "short"), short_length=12, long_length=12, val_fraction=0.3
        ).val_dataloader()
    with pytest.raises(DatasetError, match="dataset root does not exist"):
        DynamicsDataModule(str(tmp_path / "nothing"))


def test_no_root_is_one_line_naming_builtin_datamodule():
    with pytest.raises(ConfigError, match=r"needs root=.*builtin_datamodule\(world=") as err:
        DynamicsDataModule()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="needs root="):
        DynamicsDataModule(world="stochastic")


class _Recorder(pl.LightningModule):
    """Trains one scalar and remembers a fingerprint of every training batch it sees."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def training_step(self, batch, batch_idx):
        latents = batch["latents"]
        self.seen.append((tuple(latents.shape), round(float(latents.sum()), 3)))
        return (self.weight * latents.mean() - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_resumed_fit_sees_exactly_the_uninterrupted_batches(cache, tmp_path):
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=9, save_top_k=-1)
    reference = _Recorder()  # 14 steps over epochs of 6: checkpoint after step 9, mid-epoch 1
    quiet_trainer(tmp_path, 14, [checkpoint]).fit(reference, datamodule=_module(cache))
    assert len(reference.seen) == 14
    plain = _module(cache).train_dataloader()  # Lightning's epochs neither skip nor repeat sampler steps
    expected = [
        (tuple(b["latents"].shape), round(float(b["latents"].sum()), 3)) for _ in range(3) for b in plain
    ]
    assert reference.seen == expected[:14]
    path = next(tmp_path.glob("*step=9*.ckpt"))
    assert torch.load(path, weights_only=True)["DynamicsDataModule"]["sampler_step"] == 9
    resumed = _Recorder()
    quiet_trainer(tmp_path, 14).fit(resumed, datamodule=_module(cache), ckpt_path=path)
    assert resumed.seen == reference.seen[9:]
    assert len({s for s, _ in reference.seen}) == 2  # both batch lengths were exercised


_DDP_SCRIPT = """
import json, sys
import json

import lightning.pytorch as pl
import torch
from dreamer_dynamics.data.building.worlds import ToyDatasetConfig, builtin_datamodule


class Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def training_step(self, batch, batch_idx):
        x = batch["latents"]
        self.seen.append([x.shape[1], x.double().sum(dim=(1, 2, 3)).tolist()])
        return (self.weight * x.mean() - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    out, cache = sys.argv[1], sys.argv[2]
    dm = builtin_datamodule(toy=ToyDatasetConfig(episodes=10, length=40), cache_dir=cache, short_length=8,
                            long_length=16, short_batch_size=2, long_batch_size=1, long_every=3,
                            steps_per_epoch=5,
                            val_fraction=0.2)
    model = Recorder()
    pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=7, logger=False,
               enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
               limit_val_batches=0).fit(model, datamodule=dm)
    with open(f"{out}/rank{model.global_rank}.json", "w") as f:
        json.dump(model.seen, f)
    torch.distributed.destroy_process_group()  # gloo's threads end before the interpreter does
"""


@pytest.mark.slow
def test_two_process_ddp_ranks_share_lengths_and_split_each_global_batch(cache, tmp_path):
    import subprocess
    import sys

    _module(cache)  # generate the cache before the ranks start
    script = tmp_path / "ddp_fit.py"
    script.write_text(_DDP_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), cache],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 7
    single = _module(
        cache, short_batch_size=4, long_batch_size=2, steps_per_epoch=5
    )  # one process, global batch
    train_loader = single.train_dataloader()
    loader = iter(list(train_loader) + list(train_loader))  # two epochs
    for (len0, sums0), (len1, sums1) in zip(*ranks):
        assert len0 == len1  # same length on both ranks at every step
        expected = next(loader)["latents"].double().sum(dim=(1, 2, 3)).tolist()
        assert len(sums0) == len(sums1) == len(expected) // 2
        np.testing.assert_allclose(sorted(sums0 + sums1), sorted(expected), rtol=1e-9)
        assert not set(np.round(sums0, 6)) & set(np.round(sums1, 6))  # disjoint windows


@pytest.mark.parametrize("scale", ["pooled", "channel"])
def test_batches_are_standardised_with_the_recorded_stats(cache, scale):
    dm, raw = _module(cache, standardize=scale), _module(cache, standardize=False)
    assert raw.latent_units == LatentUnits.identity(raw.latent_dim)
    mean = torch.tensor(dm.dataset.latent_stats["mean"], dtype=torch.float64)
    channel_std = torch.tensor(dm.dataset.latent_stats["std"], dtype=torch.float64)
    # pooled: one std for every channel, the RMS of the channel stds; channel: each channel by its own
    std = channel_std.square().mean().sqrt().expand_as(channel_std) if scale == "pooled" else channel_std
    for a, b in zip(dm.train_dataloader(), raw.train_dataloader()):  # the same windows, other units
        expected = ((b["latents"].double() - mean) / std).float()
        torch.testing.assert_close(a["latents"], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dm.destandardize(a["latents"]), b["latents"], atol=1e-5, rtol=1e-5)
        assert torch.equal(a["actions_discrete"], b["actions_discrete"])
    everything = torch.cat([b["latents"].flatten(0, 2) for b in dm.train_dataloader()])  # (vectors, D_b)
    assert everything.mean(0).abs().max() < 0.5
    if scale == "channel":  # unit variance per channel
        assert (everything.std(0) - 1).abs().max() < 0.5
    else:  # unit mean square over all channels, quiet channels stay quiet
        assert abs(everything.square().mean().item() - 1) < 0.2 and everything.std(0).min() < 0.5


def test_missing_stats_are_computed_once_and_recorded(tmp_path):
    rng = np.random.default_rng(0)
    scales = np.array([0.1, 1.0, 10.0, 0.0])  # the last channel is constant: its std is floored
    with LatentDatasetWriter(tmp_path, latent_shape=(2, 4)) as w:
        for _ in range(4):
            w.add_episode((rng.standard_normal((20, 2, 4)) * scales + 5).astype(np.float32))
    path = tmp_path / "metadata.json"
    meta = json.loads(path.read_text())
    written = meta.pop("latent_stats")
    path.write_text(json.dumps(meta))
    dm = DynamicsDataModule(
        str(tmp_path), short_length=4, long_length=8, val_fraction=0.25, standardize="channel"
    )
    recorded = json.loads(path.read_text())["latent_stats"]  # recorded for the next run
    np.testing.assert_allclose(recorded["mean"], written["mean"], rtol=1e-12)
    np.testing.assert_allclose(recorded["std"], written["std"], rtol=1e-12, atol=1e-12)
    assert dm.latent_units == LatentUnits.from_stats(recorded, "channel")
    batch = next(iter(dm.train_dataloader()))["latents"]
    assert torch.isfinite(batch).all() and batch[..., 3].abs().max() == 0  # constant channel -> exactly 0
