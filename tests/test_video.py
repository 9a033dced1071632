"""``from-video``: GIF / MP4 / frame folders -> latent dataset; actions, resuming, codecs and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dreamer_dynamics.data import LatentDataset, PatchCodec
from dreamer_dynamics.data.building.convert import align_actions, resize_frames
from dreamer_dynamics.data.cli import main
from dreamer_dynamics.data.reading.format import DatasetError
from tests.video_fixtures import moving_square, write_gif, write_mp4

pytest.importorskip("av")
PATCH16 = ["--image-size", "16", "--codec-args", '{"patch": 4}']


def write_folder(folder, frames):
    folder.mkdir()
    for t, frame in enumerate(frames):  # frame_1 ... frame_12: natural order, not 1, 10, 11, 12, 2, ...
        Image.fromarray(frame).save(folder / f"frame_{t + 1}.png")
    return folder


def decoded(root, episode):
    ds = LatentDataset(root)
    spec = ds.meta.codec
    assert spec["class_path"] == "dreamer_dynamics.data.reading.patch_codec.PatchCodec"
    return PatchCodec(**spec["init_args"]).decode(np.asarray(ds[episode]["latents"]))


def test_gif_mp4_and_frame_folder_round_trip(tmp_path, capsys):
    gif_frames, mp4_frames, png_frames = (
        moving_square(10, seed=0),
        moving_square(12, seed=1),
        moving_square(12, seed=2),
    )
    gif = write_gif(tmp_path / "a.gif", gif_frames)
    mp4 = write_mp4(tmp_path / "b.mp4", mp4_frames)
    folder = write_folder(tmp_path / "c", png_frames)
    assert main(["from-video", str(tmp_path / "out"), str(gif), str(mp4), str(folder), *PATCH16]) == 0
    assert LatentDataset(tmp_path / "out").episode_lengths.tolist() == [10, 12, 12]
    # lossless inputs come back exactly (up to the area resize 32 -> 16 and float rounding)
    np.testing.assert_allclose(decoded(tmp_path / "out", 0), resize_frames(gif_frames, 16), atol=1e-4)
    np.testing.assert_allclose(decoded(tmp_path / "out", 2), resize_frames(png_frames, 16), atol=1e-4)
    assert np.abs(decoded(tmp_path / "out", 1) - resize_frames(mp4_frames, 16)).mean() < 0.03  # lossy MPEG-4
    assert "wrote 3 episodes" in capsys.readouterr().out


def test_resumes_by_skipping_videos_already_written(tmp_path, capsys):
    a = write_gif(tmp_path / "a.gif", moving_square(8, seed=0))
    b = write_gif(tmp_path / "b.gif", moving_square(9, seed=1))
    out = str(tmp_path / "out")
    assert main(["from-video", out, str(a), *PATCH16]) == 0
    stamp = (tmp_path / "out" / "episodes" / "000000.latents.npy").stat().st_mtime_ns
    assert main(["from-video", out, str(a), str(b), *PATCH16]) == 0  # a: skipped, b: appended
    assert "wrote 1 episodes" in capsys.readouterr().out.splitlines()[-1]
    ds = LatentDataset(out)
    assert ds.episode_lengths.tolist() == [8, 9]
    assert [e.attributes["source"] for e in ds.meta.episodes] == [str(a.resolve()), str(b.resolve())]
    assert (tmp_path / "out" / "episodes" / "000000.latents.npy").stat().st_mtime_ns == stamp


def test_actions_npy_discrete_and_csv_continuous(tmp_path):
    a = write_gif(tmp_path / "a.gif", moving_square(6, seed=0))
    np.save(tmp_path / "a.npy", np.array([[0, 2], [1, 0], [4, 1], [3, 3], [0, 0], [2, 1]]))
    assert (
        main(["from-video", str(tmp_path / "d"), str(a), "--actions", str(tmp_path / "a.npy"), *PATCH16]) == 0
    )
    ds = LatentDataset(tmp_path / "d")
    assert ds.num_discrete_actions == (5, 4)  # largest id + 1 per component
    assert np.asarray(ds[0]["actions_discrete"])[2].tolist() == [4, 1]
    # CSV with a header and T - 1 rows: the first frame has no action (NaN = missing label)
    (tmp_path / "a.csv").write_text("dx,dy\n" + "\n".join(f"{t}.5,{-t}" for t in range(5)) + "\n")
    assert (
        main(["from-video", str(tmp_path / "c"), str(a), "--actions", str(tmp_path / "a.csv"), *PATCH16]) == 0
    )
    acts = np.asarray(LatentDataset(tmp_path / "c")[0]["actions_continuous"])
    assert np.isnan(acts[0]).all() and acts[1:, 0].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    # no header; a NaN in the first row is a missing label, not a header; T rows
    (tmp_path / "b.csv").write_text("nan,7\n" + "\n".join(f"{t}.5,{-t}" for t in range(5)) + "\n")
    assert (
        main(["from-video", str(tmp_path / "b"), str(a), "--actions", str(tmp_path / "b.csv"), *PATCH16]) == 0
    )
    acts = np.asarray(LatentDataset(tmp_path / "b")[0]["actions_continuous"])
    assert np.isnan(acts[0, 0]) and acts[:, 1].tolist() == [7, 0, -1, -2, -3, -4]


def test_alignment_conventions():
    rows = np.array([[10], [11], [12]])
    assert align_actions(rows, 3, "led-to", -1, "x")[:, 0].tolist() == [10, 11, 12]
    assert align_actions(rows[:2], 3, "led-to", -1, "x")[:, 0].tolist() == [-1, 10, 11]
    # taken-at: row t was taken at frame t, so it led to frame t + 1
    assert align_actions(rows, 3, "taken-at", -1, "x")[:, 0].tolist() == [-1, 10, 11]
    with pytest.raises(DatasetError, match="x: actions have shape \\[3, 1\\]; expected .* for the 5 frames"):
        align_actions(rows, 5, "led-to", -1, "x")


def test_own_codec_by_class_path(tmp_path):
    a = write_gif(tmp_path / "a.gif", moving_square(4, seed=0))
    assert (
        main(
            [
                "from-video",
                str(tmp_path / "o"),
                str(a),
                "--image-size",
                "16",
                "--codec",
                "tests.video_fixtures.BlockMeanCodec",
                "--codec-args",
                '{"block": 8}',
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "o" / "metadata.json").read_text())
    assert meta["codec"] == {"class_path": "tests.video_fixtures.BlockMeanCodec", "init_args": {"block": 8}}
    assert meta["latent_shape"] == [4, 3]


def test_errors_name_the_file_and_frame(tmp_path, capsys):
    frames = moving_square(4, seed=0)
    folder = write_folder(tmp_path / "frames", frames)
    (folder / "frame_3.png").write_bytes(b"not a png")
    assert main(["from-video", str(tmp_path / "o"), str(folder), *PATCH16]) == 1
    assert f"error: {folder / 'frame_3.png'}: cannot read frame 2:" in capsys.readouterr().err

    (tmp_path / "x.mp4").write_bytes(b"\x00" * 100)
    assert main(["from-video", str(tmp_path / "o"), str(tmp_path / "x.mp4"), *PATCH16]) == 1
    assert f"error: {tmp_path / 'x.mp4'}: cannot open video" in capsys.readouterr().err

    gif = write_gif(tmp_path / "a.gif", frames)
    np.save(tmp_path / "short.npy", np.zeros((2, 1), np.int64))
    assert (
        main(
            ["from-video", str(tmp_path / "o"), str(gif), "--actions", str(tmp_path / "short.npy"), *PATCH16]
        )
        == 1
    )
    assert f"error: {gif}: actions have shape [2, 1]" in capsys.readouterr().err

    assert main(["from-video", str(tmp_path / "o"), str(gif), str(gif), "--actions", "a.npy"]) == 1
    assert "1 action files for 2 videos" in capsys.readouterr().err
    assert main(["from-video", str(tmp_path / "o"), str(tmp_path / "missing.gif")]) == 1
    assert "missing.gif: no such video file or frame folder" in capsys.readouterr().err
    assert main(["from-video", str(tmp_path / "o"), str(gif), "--codec", "nope.Codec"]) == 1
    assert "cannot import codec class 'nope.Codec'" in capsys.readouterr().err
    assert main(["from-video", str(tmp_path / "o"), str(gif), "--codec-args", "{patch: 4}"]) == 1
    assert "--codec-args: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metadata.json").exists()  # nothing half-written
