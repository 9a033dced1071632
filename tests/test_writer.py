"""LatentDatasetWriter: validation before disk, append mode, locking, and crash safety under SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamer_dynamics.data import DatasetError, LatentDataset, LatentDatasetWriter


def _good(length=6):
    return np.zeros((length, 2, 3), np.float32), np.zeros((length, 1), np.int64)


@pytest.mark.parametrize(
    "latents, actions, message",
    [
        (np.zeros((6, 2, 4), np.float32), _good()[1], r"latents must have shape \[T, 2, 3\]"),
        (np.zeros((6, 2, 3), np.int64), _good()[1], "must be floating point"),
        (np.full((6, 2, 3), np.nan, np.float32), _good()[1], "NaN/inf"),
        (np.full((6, 2, 3), np.inf, np.float32), _good()[1], "NaN/inf"),
        (np.full((6, 2, 3), 1e6, np.float32), _good()[1], "overflow the storage dtype float16"),
        (_good()[0], np.full((6, 1), 4), "action id 4 out of range at frame 0"),
        (_good()[0], np.full((6, 1), -2), "action id -2 out of range"),
        (_good()[0], np.zeros((5, 1), np.int64), r"actions_discrete must have shape \[T=6, 1\]"),
        (_good()[0], np.zeros((6, 1), np.float32), "actions_discrete must be integers"),
        (_good()[0], None, "actions_discrete missing"),
    ],
)
def test_bad_episodes_are_rejected_before_touching_disk(tmp_path, latents, actions, message):
    dtype = "float16" if "float16" in message else "float32"
    with LatentDatasetWriter(
        tmp_path, latent_shape=(2, 3), num_discrete_actions=(4,), latent_dtype=dtype
    ) as w:
        w.add_episode(*_good())
        before = sorted(p.name for p in (tmp_path / "episodes").iterdir())
        with pytest.raises(DatasetError, match=message) as info:
            w.add_episode(latents, actions_discrete=actions)
        assert "episode 000001" in str(info.value) and str(tmp_path) in str(info.value)
        assert sorted(p.name for p in (tmp_path / "episodes").iterdir()) == before
    assert len(LatentDataset(tmp_path)) == 1


def test_continuous_actions_rules(tmp_path):
    with LatentDatasetWriter(tmp_path, latent_shape=(2, 3), num_continuous_actions=2) as w:
        w.add_episode(_good()[0], actions_continuous=np.full((6, 2), np.nan))  # NaN = missing label
        with pytest.raises(DatasetError, match="contain inf"):
            w.add_episode(_good()[0], actions_continuous=np.full((6, 2), np.inf))
        with pytest.raises(DatasetError, match="actions_discrete given"):
            w.add_episode(
                _good()[0], actions_discrete=np.zeros((6, 1), np.int64), actions_continuous=np.zeros((6, 2))
            )


def test_torch_input_append_mode_and_spec_mismatch(tmp_path):
    with LatentDatasetWriter(tmp_path, latent_shape=(2, 3), num_discrete_actions=(4,)) as w:
        w.add_episode(torch.randn(5, 2, 3), actions_discrete=torch.randint(0, 4, (5,)))
    with LatentDatasetWriter(tmp_path, latent_shape=(2, 3), num_discrete_actions=(4,)) as w:
        assert w.num_episodes == 1
        assert w.add_episode(*_good(9)) == 1
    ds = LatentDataset(tmp_path)
    assert list(ds.episode_lengths) == [5, 9]
    with pytest.raises(DatasetError, match="cannot append: existing latent_shape"):
        LatentDatasetWriter(tmp_path, latent_shape=(2, 4), num_discrete_actions=(4,))
    with pytest.raises(DatasetError, match="cannot append: existing num_discrete_actions"):
        LatentDatasetWriter(tmp_path, latent_shape=(2, 3), num_discrete_actions=(5,))


def test_second_writer_is_locked_out(tmp_path):
    with LatentDatasetWriter(tmp_path, latent_shape=(2, 3)):
        with pytest.raises(DatasetError, match="another LatentDatasetWriter"):
            LatentDatasetWriter(tmp_path, latent_shape=(2, 3))
    LatentDatasetWriter(tmp_path, latent_shape=(2, 3)).close()  # lock released on close


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from dreamer_dynamics.data import LatentDatasetWriter
    from dreamer_dynamics.data.building import writer as writer_module
    root, where = sys.argv[1], sys.argv[2]
    w = LatentDatasetWriter(root, latent_shape=(8, 8), num_discrete_actions=(3,))
    for i in range(3):
        w.add_episode(np.full((20, 8, 8), i, np.float32), actions_discrete=np.zeros((20, 1), np.int64))
    real_save, real_replace = np.save, os.replace
    def dying_save(f, array, allow_pickle=False):  # half a temp file on disk, then SIGKILL
        f.write(np.lib.format.magic(1, 0)); f.write(b"x" * 100); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    def dying_metadata(path, data):  # all episode files are renamed into place, metadata not yet rewritten
        os.kill(os.getpid(), signal.SIGKILL)
    if where == "during_file":
        writer_module.np.save = dying_save
    else:
        writer_module.write_json_atomically = dying_metadata
    w.add_episode(np.full((20, 8, 8), 9, np.float32), actions_discrete=np.zeros((20, 1), np.int64))
    print("not killed")
""")


@pytest.mark.parametrize("where", ["during_file", "before_metadata"])
def test_writer_killed_mid_episode_leaves_committed_episodes(tmp_path, where):
    script = tmp_path / "writer.py"
    script.write_text(_KILLED_WRITER)
    root = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, str(script), str(root), where], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    ds = LatentDataset(root)
    ds.validate(deep=True)
    assert len(ds) == 3
    assert [float(ds[i]["latents"][0, 0, 0]) for i in range(3)] == [0.0, 1.0, 2.0]
    with LatentDatasetWriter(
        root, latent_shape=(8, 8), num_discrete_actions=(3,)
    ) as w:  # append after a crash
        w.add_episode(np.full((20, 8, 8), 7, np.float32), actions_discrete=np.ones((20, 1), np.int64))
    ds = LatentDataset(root)
    assert len(ds) == 4 and float(ds[3]["latents"][0, 0, 0]) == 7.0
    assert not [p for p in os.listdir(root / "episodes") if p.startswith(".tmp")]


def _stats(root):
    return json.loads((Path(root) / "metadata.json").read_text())["latent_stats"]


def _assert_stats_match(record, episodes):
    # reference in extended precision (two-pass), so that float64 rounding in numpy's own std is not the limit
    data = np.concatenate(episodes).astype(np.longdouble).reshape(-1, episodes[0].shape[-1])  # (N, D_b)
    assert record["count"] == data.shape[0]
    np.testing.assert_allclose(record["mean"], data.mean(0).astype(np.float64), rtol=1e-12, atol=0)
    np.testing.assert_allclose(record["std"], data.std(0).astype(np.float64), rtol=1e-12, atol=0)


def test_latent_stats_are_exact_across_appends_and_reopening(tmp_path):
    rng = np.random.default_rng(0)
    # per-channel offsets up to 800 x the spread: a float64 sum-of-squares variance would lose digits here
    episodes = [
        (10 * np.arange(5) + rng.normal(0, 0.05, (int(rng.integers(1, 9)), 3, 5))).astype(np.float32)
        for _ in range(6)
    ]
    with LatentDatasetWriter(tmp_path, latent_shape=(3, 5)) as w:
        assert "latent_stats" not in json.loads((tmp_path / "metadata.json").read_text())  # empty: none yet
        for e in episodes[:3]:
            w.add_episode(e)
        _assert_stats_match(_stats(tmp_path), episodes[:3])  # committed with every episode
    with LatentDatasetWriter(tmp_path, latent_shape=(3, 5), commit_every=2) as w:
        for e in episodes[3:]:
            w.add_episode(e)
    _assert_stats_match(_stats(tmp_path), episodes)
    assert LatentDataset(tmp_path).latent_stats == _stats(tmp_path)


def test_appending_to_a_dataset_without_stats_leaves_them_out_until_the_stats_command(tmp_path):
    from dreamer_dynamics.data.cli import main

    episodes = [np.random.default_rng(i).normal(2.0, 3.0, (4, 2, 3)).astype(np.float16) for i in range(3)]
    with LatentDatasetWriter(tmp_path, latent_shape=(2, 3), latent_dtype="float16") as w:
        w.add_episode(episodes[0])
    meta = json.loads((tmp_path / "metadata.json").read_text())
    del meta["latent_stats"]  # as written by a version without statistics
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="without up-to-date latent_stats"):
        with LatentDatasetWriter(tmp_path, latent_shape=(2, 3), latent_dtype="float16") as w:
            w.add_episode(episodes[1])  # a partial count would be wrong: nothing is recorded
    assert LatentDataset(tmp_path).latent_stats is None
    assert main(["stats", str(tmp_path)]) == 0
    _assert_stats_match(_stats(tmp_path), episodes[:2])  # of the stored float16 values, in float64
    with LatentDatasetWriter(tmp_path, latent_shape=(2, 3), latent_dtype="float16") as w:
        w.add_episode(episodes[2])  # and the writer continues from them
    _assert_stats_match(_stats(tmp_path), episodes)
