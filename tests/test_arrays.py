"""``from-npz`` / ``from-hdf5``: frames or latents plus actions selected by key -> latent dataset; bad keys
and bad shapes give one clear line naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from dreamer_dynamics.data import LatentDataset, PatchCodec
from dreamer_dynamics.data.building.convert import resize_frames
from dreamer_dynamics.data.cli import main
from tests.video_fixtures import moving_square

h5py = pytest.importorskip("h5py")


def npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_frames_and_actions(tmp_path):
    frames = moving_square(6, size=16, seed=0)
    acts = np.arange(6) % 4
    files = [
        npz(tmp_path / "e0.npz", obs=frames, act=acts, vel=np.ones((6, 2), np.float32)),
        npz(tmp_path / "e1.npz", obs=frames[:5], act=acts[:5], vel=np.zeros((5, 2), np.float32)),
    ]
    out = str(tmp_path / "out")
    keys = ["--frames", "obs", "--actions-discrete", "act", "--actions-continuous", "vel"]
    assert main(["from-npz", out, *files, *keys, "--codec-args", '{"patch": 4}']) == 0
    ds = LatentDataset(out)
    assert ds.episode_lengths.tolist() == [6, 5] and ds.latent_shape == (16, 48)
    assert ds.num_discrete_actions == (4,) and ds.num_continuous_actions == 2
    assert ds.meta.codec["init_args"]["image_size"] == 16  # the default codec is sized by the frames
    codec = PatchCodec(**ds.meta.codec["init_args"])
    np.testing.assert_allclose(codec.decode(np.asarray(ds[0]["latents"])), frames / 255.0, atol=1e-5)
    assert np.asarray(ds[1]["actions_discrete"])[:, 0].tolist() == [0, 1, 2, 3, 0]
    assert main(["from-npz", out, *files, *keys]) == 0  # resumed: both already there
    assert len(LatentDataset(out)) == 2


def test_npz_latents_grayscale_and_channels_first(tmp_path):
    latents = np.random.default_rng(0).standard_normal((7, 3, 5)).astype(np.float32)
    assert main(["from-npz", str(tmp_path / "l"), npz(tmp_path / "l.npz", z=latents), "--latents", "z"]) == 0
    ds = LatentDataset(tmp_path / "l")
    np.testing.assert_array_equal(ds[0]["latents"], latents)
    assert ds.meta.codec is None
    gray = (np.random.default_rng(1).random((4, 8, 8)) * 255).astype(np.uint8)

    def frames_from_npz(name: str, frames: np.ndarray, *flags: str) -> int:
        source = npz(tmp_path / f"{name}.npz", x=frames)
        return main(["from-npz", str(tmp_path / name), source, "--frames", "x", *flags])

    assert frames_from_npz("g", gray, "--codec-args", '{"patch": 4, "channels": 1}') == 0
    assert LatentDataset(tmp_path / "g").latent_shape == (4, 16)
    chw = np.random.default_rng(2).random((3, 3, 16, 12)).astype(np.float32)  # [T, C, H, W], not square
    assert (
        frames_from_npz("c", chw, "--channels-first", "--image-size", "8", "--codec-args", '{"patch": 4}')
        == 0
    )
    ds = LatentDataset(tmp_path / "c")
    expected = resize_frames(chw.transpose(0, 2, 3, 1), 8)  # centre-cropped to 12 x 12, then 8 x 8
    np.testing.assert_allclose(PatchCodec(8, 4).decode(np.asarray(ds[0]["latents"])), expected, atol=1e-5)


def test_frames_of_another_size_than_the_codec_are_named(tmp_path, capsys):
    files = [
        npz(tmp_path / "a.npz", x=moving_square(3, size=16)),
        npz(tmp_path / "b.npz", x=moving_square(3, size=10, square=2)),
    ]
    assert (
        main(["from-npz", str(tmp_path / "o"), *files, "--frames", "x", "--codec-args", '{"patch": 4}']) == 1
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {files[1]}: the codec cannot encode frames 0.. of shape [10, 10, 3]")
    assert not (tmp_path / "o").exists()  # an error leaves nothing: the first file is not kept either


def write_robomimic(path, lengths, size=8):
    """robomimic layout: data/demo_N/obs/agentview_image [T, H, W, 3] uint8, data/demo_N/actions [T, 7]."""
    with h5py.File(path, "w") as f:
        for n, length in lengths.items():
            group = f.create_group(f"data/demo_{n}")
            group["obs/agentview_image"] = moving_square(length, size=size, square=2, seed=n)
            group["actions"] = np.full((length, 7), n, np.float32) + np.arange(length)[:, None]
    return str(path)


def test_hdf5_episode_groups_with_taken_at_actions(tmp_path):
    path = write_robomimic(tmp_path / "demos.hdf5", {10: 5, 2: 4})
    out = str(tmp_path / "out")
    assert (
        main(
            [
                "from-hdf5",
                out,
                path,
                "--episodes",
                "data",
                "--frames",
                "obs/agentview_image",
                "--actions-continuous",
                "actions",
                "--alignment",
                "taken-at",
                "--codec-args",
                '{"patch": 2}',
            ]
        )
        == 0
    )
    ds = LatentDataset(out)
    assert ds.episode_lengths.tolist() == [4, 5]  # demo_2 before demo_10 (natural order)
    assert ds.meta.episodes[0].attributes["source"].endswith("demos.hdf5:data/demo_2")
    acts = np.asarray(ds[0]["actions_continuous"])  # taken at frame t -> led to frame t + 1
    assert np.isnan(acts[0]).all() and acts[1:, 0].tolist() == [2.0, 3.0, 4.0]
    with h5py.File(tmp_path / "one.h5", "w") as f:  # no --episodes: the whole file is one episode
        f["latents"] = np.zeros((3, 2, 4), np.float32)
    assert main(["from-hdf5", str(tmp_path / "one"), str(tmp_path / "one.h5"), "--latents", "latents"]) == 0
    assert LatentDataset(tmp_path / "one").episode_lengths.tolist() == [3]


@pytest.mark.parametrize(
    "arrays, args, message",
    [
        (
            {"obs": np.zeros((3, 8, 8, 3), np.uint8)},
            ["--frames", "pixels"],
            "no array 'pixels' \\(available: obs\\)",
        ),
        (
            {"obs": np.zeros((3, 8, 8, 3), np.uint8)},
            ["--frames", "obs", "--actions-discrete", "act"],
            "no array 'act' \\(available: obs\\)",
        ),
        ({"obs": np.zeros((3, 8), np.uint8)}, ["--frames", "obs"], "frames 'obs' have shape \\[3, 8\\]"),
        ({"obs": np.zeros((3, 3, 8, 8), np.uint8)}, ["--frames", "obs"], "pass --channels-first"),
        ({"obs": np.full((3, 8, 8, 3), 2.0)}, ["--frames", "obs"], "must be finite and in \\[0, 1\\]"),
        ({"obs": np.zeros((3, 8, 6, 3), np.uint8)}, ["--frames", "obs"], "are 8x6; pass --image-size"),
        (
            {"z": np.zeros((3, 2, 2, 2), np.float32)},
            ["--latents", "z"],
            "latents 'z' must be float \\[T, N_b, D_b\\]",
        ),
        ({"z": np.zeros((3, 2, 2), np.int32)}, ["--latents", "z"], "latents 'z' must be float"),
        (
            {"z": np.zeros((3, 2, 2), np.float32), "a": np.zeros((5, 1), np.int64)},
            ["--latents", "z", "--actions-discrete", "a"],
            "actions have shape \\[5, 1\\]",
        ),
        (
            {"z": np.zeros((3, 2, 2), np.float32), "a": np.zeros((3, 1), np.float32)},
            ["--latents", "z", "--actions-discrete", "a"],
            "discrete actions must be integers",
        ),
        (
            {"z": np.zeros((3, 2, 2), np.float32), "a": np.full((3, 1), 7)},
            ["--latents", "z", "--actions-discrete", "a", "--num-actions", "4"],
            "action id 7 out of range at frame 0",
        ),
        (
            {"z": np.zeros((3, 2, 2), np.float32)},
            ["--latents", "z", "--frames", "z"],
            "give exactly one of --frames KEY and --latents KEY",
        ),
    ],
)
def test_npz_bad_keys_and_shapes(tmp_path, capsys, arrays, args, message):
    path = npz(tmp_path / "bad.npz", **arrays)
    assert main(["from-npz", str(tmp_path / "out"), path, *args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()  # the progress bar, then the error
    err = lines[-1]
    assert err.startswith("error: ") and sum("error" in line for line in lines) == 1  # one line
    assert __import__("re").search(message, err), err
    if "exactly one" not in message:
        assert "bad.npz" in err  # names the file


def test_hdf5_bad_group_and_key(tmp_path, capsys):
    path = write_robomimic(tmp_path / "d.hdf5", {0: 3})
    assert main(["from-hdf5", str(tmp_path / "o"), path, "--episodes", "demos", "--frames", "obs/x"]) == 1
    assert f"{path}: no group 'demos' (top level: data)" in capsys.readouterr().err
    assert main(["from-hdf5", str(tmp_path / "o"), path, "--episodes", "data", "--frames", "obs/x"]) == 1
    err = capsys.readouterr().err
    assert f"{path}:data/demo_0: no array 'obs/x' (available: actions, obs/agentview_image)" in err
    (tmp_path / "junk.h5").write_bytes(b"junk")
    assert main(["from-hdf5", str(tmp_path / "o"), str(tmp_path / "junk.h5"), "--latents", "z"]) == 1
    assert "junk.h5: cannot open HDF5 file" in capsys.readouterr().err
