"""On-disk latent dataset: round trip, memory mapping, and clear errors for damaged datasets."""

import json
import pickle
import tracemalloc

import numpy as np
import pytest

from dreamer_dynamics.data import (
    DatasetError,
    LatentDataset,
    LatentDatasetWriter,
    LatentWindowDataset,
    split_episodes,
)
from dreamer_dynamics.data.reading.format import FORMAT_VERSION


def _write(root, lengths=(12, 7), shape=(4, 3), **kwargs):
    rng = np.random.default_rng(0)
    episodes = []
    with LatentDatasetWriter(
        root, latent_shape=shape, num_discrete_actions=(5, 3), num_continuous_actions=2, **kwargs
    ) as writer:
        for length in lengths:
            ep = {
                "latents": rng.normal(size=(length, *shape)).astype(np.float32),
                "actions_discrete": np.stack([rng.integers(0, 5, length), rng.integers(-1, 3, length)], 1),
                "actions_continuous": rng.normal(size=(length, 2)).astype(np.float32),
            }
            ep["actions_continuous"][0] = np.nan  # missing label is allowed
            writer.add_episode(**ep)
            episodes.append(ep)
    return episodes


def test_round_trip_and_metadata(tmp_path):
    episodes = _write(tmp_path)
    ds = LatentDataset(tmp_path)
    assert len(ds) == 2 and ds.latent_shape == (4, 3)
    assert ds.num_discrete_actions == (5, 3) and ds.num_continuous_actions == 2
    assert list(ds.episode_lengths) == [12, 7]
    for i, ep in enumerate(episodes):
        for key, value in ep.items():
            np.testing.assert_array_equal(np.asarray(ds[i][key]), value.astype(ds[i][key].dtype))
        assert isinstance(ds[i]["latents"], np.memmap)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["format"] == FORMAT_VERSION and meta["latent_shape"] == [4, 3]
    window = ds.window(0, 3, 5)
    assert window["latents"].dtype == np.float32 and window["actions_discrete"].dtype == np.int64
    np.testing.assert_array_equal(window["latents"], episodes[0]["latents"][3:8])
    with pytest.raises(IndexError):
        ds.window(1, 3, 5)  # episode 1 has 7 frames


def test_float16_storage_reads_float32_and_float64_input_is_cast(tmp_path):
    latents = np.linspace(-2, 2, 5 * 2 * 2).reshape(5, 2, 2)  # float64 input
    with LatentDatasetWriter(tmp_path, latent_shape=(2, 2), latent_dtype="float16") as writer:
        writer.add_episode(latents)
    ds = LatentDataset(tmp_path)
    assert ds[0]["latents"].dtype == np.float16
    window = ds.window(0, 0, 5)["latents"]
    assert window.dtype == np.float32
    np.testing.assert_allclose(window, latents, atol=1e-3)


def test_reading_a_window_does_not_load_the_episode(tmp_path):
    frames = 4096
    with LatentDatasetWriter(tmp_path, latent_shape=(64, 64)) as writer:  # 64 MiB episode
        writer.add_episode(np.ones((frames, 64, 64), dtype=np.float32))
    tracemalloc.start()
    try:
        ds = LatentDataset(tmp_path)
        window = ds.window(0, 1000, 8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert window["latents"].shape == (8, 64, 64)
    # numpy reports its buffers to tracemalloc; np.load of the whole file allocates 64 MiB, a map none
    assert peak < 2 * 2**20, f"peak traced allocation {peak} bytes: the episode was loaded whole"


def test_dataset_pickles_without_open_maps_and_bounds_open_maps(tmp_path):
    _write(tmp_path, lengths=(12, 7, 9))
    ds = LatentDataset(tmp_path, max_open_episodes=2)
    _ = ds[0]["latents"][0]
    copy = pickle.loads(pickle.dumps(LatentWindowDataset(ds)))
    assert len(copy.dataset._maps) == 0
    for i in (0, 1, 2, 1):
        _ = ds[i]["latents"][0]
    assert list(ds._maps) == [2, 1]  # least recently used episode 0 was closed
    np.testing.assert_array_equal(copy[(0, 2, 3)]["latents"].numpy(), ds.window(0, 2, 3)["latents"])


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_metadata", "metadata file is missing"),
        ("bad_json", "not valid JSON"),
        ("bad_version", "unsupported format"),
        ("missing_file", "episode file is missing"),
        ("truncated", "truncated"),
        ("garbage", "corrupt .npy"),
        ("wrong_shape", "does not match the metadata"),
        ("wrong_dtype", "dtype float64 does not match"),
    ],
)
def test_damaged_dataset_errors_name_the_file(tmp_path, damage, message):
    _write(tmp_path)
    latents = tmp_path / "episodes" / "000001.latents.npy"
    target = latents
    if damage == "no_metadata":
        target = tmp_path / "metadata.json"
        target.unlink()
    elif damage == "bad_json":
        target = tmp_path / "metadata.json"
        target.write_text("{not json")
    elif damage == "bad_version":
        target = tmp_path / "metadata.json"
        meta = json.loads(target.read_text())
        meta["format"] = "something-else/9"
        target.write_text(json.dumps(meta))
    elif damage == "missing_file":
        latents.unlink()
    elif damage == "truncated":
        latents.write_bytes(latents.read_bytes()[:-10])
    elif damage == "garbage":
        latents.write_bytes(b"this is not numpy")
    elif damage == "wrong_shape":
        np.save(latents, np.zeros((7, 4, 2), np.float32))
    elif damage == "wrong_dtype":
        np.save(latents, np.zeros((7, 4, 3), np.float64))
    with pytest.raises(DatasetError, match=message) as info:
        LatentDataset(tmp_path)
    assert str(target) in str(info.value)


def test_deep_validation_finds_bad_values(tmp_path):
    _write(tmp_path)
    LatentDataset(tmp_path).validate(deep=True)  # clean dataset passes
    path = tmp_path / "episodes" / "000000.latents.npy"
    bad = np.load(path)
    bad[3, 1, 1] = np.nan
    np.save(path, bad)
    with pytest.raises(DatasetError, match="NaN/inf") as info:
        LatentDataset(tmp_path).validate(deep=True)
    assert str(path) in str(info.value)
    np.save(path, np.nan_to_num(bad))
    actions = tmp_path / "episodes" / "000001.actions_discrete.npy"
    a = np.load(actions)
    a[2, 1] = 3  # component 1 has 3 classes
    np.save(actions, a)
    with pytest.raises(DatasetError, match="action id 3 out of range"):
        LatentDataset(tmp_path).validate(deep=True)


def test_split_by_episode_is_deterministic_and_never_empty():
    train, val = split_episodes(20, 0.1, seed=3)
    assert (train, val) == split_episodes(20, 0.1, seed=3)
    assert 0 < len(val) < 7 and sorted(train + val) == list(range(20))
    many = split_episodes(4000, 0.1, seed=3)[1]
    assert abs(len(many) - 400) < 80  # about val_fraction of the episodes are held out
    assert split_episodes(20, 0.1, seed=4) != (train, val)
    assert len(split_episodes(3, 0.01, seed=0)[1]) == 1  # at least one validation episode
    assert split_episodes(2, 0.9, seed=0)[0] != []  # and at least one training episode
    assert split_episodes(1, 0.1, seed=0) == ([0], [])
    assert split_episodes(5, 0.0, seed=0) == ([0, 1, 2, 3, 4], [])


@pytest.mark.parametrize(
    "record, message",
    [
        ({"mean": [0.0] * 3, "std": [1.0] * 2, "count": 5}, r"latent_stats.std must be a list of D_b=3"),
        ({"mean": [0.0] * 3, "std": [1.0, -1.0, 1.0], "count": 5}, "latent_stats.std must be >= 0"),
        ({"mean": [0.0, float("nan"), 0.0], "std": [1.0] * 3, "count": 5}, "latent_stats.mean must be a"),
        ({"mean": [0.0] * 3, "std": [1.0] * 3, "count": 0}, "latent_stats.count must be an integer >= 1"),
        ({"mean": [0.0] * 3, "std": [1.0] * 3}, 'keys "mean", "std" and "count"'),
    ],
)
def test_malformed_latent_stats_are_reported(tmp_path, record, message):
    _write(tmp_path)
    path = tmp_path / "metadata.json"
    meta = json.loads(path.read_text())
    meta["latent_stats"] = record
    path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=message) as info:
        LatentDataset(tmp_path)
    assert str(path) in str(info.value)


def test_validator_warns_about_missing_and_fails_on_stale_stats(tmp_path, capsys):
    from dreamer_dynamics.data.cli import main

    _write(tmp_path)
    path = tmp_path / "metadata.json"
    meta = json.loads(path.read_text())
    assert main(["validate", str(tmp_path)]) == 0 and "warning" not in capsys.readouterr().err
    good = meta.pop("latent_stats")
    path.write_text(json.dumps(meta))
    assert main(["validate", str(tmp_path)]) == 0  # still a valid dataset
    assert f"warning: {path}: no latent_stats" in capsys.readouterr().err
    for key, value, quick_sees_it in (("count", good["count"] + 4, True), ("std", [1.5] * 3, False)):
        path.write_text(json.dumps({**meta, "latent_stats": {**good, key: value}}))
        assert main(["validate", "--quick", str(tmp_path)]) == (1 if quick_sees_it else 0)
        assert main(["validate", str(tmp_path)]) == 1  # the full scan recomputes the statistics
        err = capsys.readouterr().err
        assert f"error: {path}: latent_stats are stale" in err and "dreamer-dynamics-data stats" in err
    assert main(["stats", str(tmp_path)]) == 0  # recomputes and records them
    assert json.loads(path.read_text())["latent_stats"]["count"] == good["count"]
    np.testing.assert_allclose(json.loads(path.read_text())["latent_stats"]["std"], good["std"], rtol=1e-12)
    assert main(["validate", str(tmp_path)]) == 0


def test_split_is_stable_when_episodes_are_appended():
    """Each episode's side is a function of its own name: growing a dataset never moves a validation episode
    into training (a seeded permutation of the episode count would re-split everything)."""
    names = [f"{i:06d}" for i in range(300)]
    before_train, before_val = split_episodes(names[:100], 0.2, seed=1)
    after_train, after_val = split_episodes(names, 0.2, seed=1)
    assert before_val and set(before_val) <= set(after_val)
    assert set(before_train) <= set(after_train)
    assert split_episodes(100, 0.2, seed=1) == (before_train, before_val)  # a count means the default names
