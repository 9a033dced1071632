"""A conversion that fails leaves nothing that blocks the corrected rerun: a new root is left as it was
(absent, or the empty folder it was), an existing dataset byte-identical; actions of the wrong rank are named
in one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dreamer_dynamics.data import LatentDataset
from dreamer_dynamics.data.cli import main


def npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def episode(tmp_path, name, length=4, actions=None, nan_frame=None) -> str:
    rng = np.random.default_rng(len(name))
    z = rng.standard_normal((length, 2, 3)).astype(np.float32)
    if nan_frame is not None:
        z[nan_frame] = np.nan
    a = np.zeros((length, 1), np.int64) if actions is None else np.asarray(actions)
    return npz(tmp_path / f"{name}.npz", z=z, a=a)


def convert(out, *files) -> int:
    return main(["from-npz", str(out), *files, "--latents", "z", "--actions-discrete", "a"])


def snapshot(root) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "bad",
    [
        {"actions": [[0], [-3], [1], [0]]},  # a negative action id (not the -1 missing label)
        {"nan_frame": 2},  # a non-finite latent
    ],
)
def test_a_failed_conversion_into_a_new_root_leaves_nothing(tmp_path, capsys, bad):
    out = tmp_path / "out"
    good = episode(tmp_path, "good", actions=[[0], [1], [1], [0]])
    assert convert(out, good, episode(tmp_path, "bad", **bad)) == 1
    assert "bad.npz" in capsys.readouterr().err
    assert not out.exists()
    # the corrected rerun is not misled by the failed run's action spec (2 classes here, not 1)
    assert convert(out, good, episode(tmp_path, "fixed", actions=[[0], [1], [0], [1]])) == 0
    assert LatentDataset(out).num_discrete_actions == (2,) and len(LatentDataset(out)) == 2


def test_an_existing_empty_folder_is_left_empty(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert convert(out, episode(tmp_path, "bad", nan_frame=0)) == 1
    assert out.is_dir() and not any(out.iterdir())


def test_a_failed_conversion_into_an_existing_dataset_leaves_it_byte_identical(tmp_path, capsys):
    out = tmp_path / "out"
    assert convert(out, episode(tmp_path, "first", actions=[[0], [1], [2], [0]])) == 0
    before = snapshot(out)
    more = [episode(tmp_path, "second"), episode(tmp_path, "third", actions=[[0], [5], [0], [0]])]
    assert convert(out, *more) == 1
    assert "action id 5 out of range" in capsys.readouterr().err
    assert snapshot(out) == before


def test_actions_of_the_wrong_rank_are_named_with_the_expected_shape(tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * t, np.uint8)).save(frames / f"{t}.png")
    actions = tmp_path / "actions.npy"
    np.save(actions, np.zeros((4, 2, 3), np.int64))
    args = ["from-video", str(tmp_path / "v"), str(frames), "--actions", str(actions), "--image-size", "16"]
    assert main(args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"error: {actions}: ") and "[T, n]" in lines[-1] and "[4, 2, 3]" in lines[-1]
    assert sum("error" in line for line in lines) == 1
    assert not (tmp_path / "v").exists()

    bad = npz(tmp_path / "rank.npz", z=np.zeros((4, 2, 3), np.float32), a=np.zeros((4, 2, 3), np.int64))
    assert convert(tmp_path / "n", bad) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "rank.npz" in err and "[T, n]" in err and "[4, 2, 3]" in err
