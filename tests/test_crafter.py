"""Crafter recording (optional extra) and the dreamer-dynamics-data command line."""

import json

import numpy as np
import pytest

from dreamer_dynamics.data import LatentDataset, decoder_for
from dreamer_dynamics.data.cli import main


def test_record_two_crafter_episodes(tmp_path):
    pytest.importorskip("crafter")
    from dreamer_dynamics.data.building.crafter_recorder import CrafterRecordingConfig, record_crafter

    record_crafter(tmp_path, CrafterRecordingConfig(episodes=2, length=12, policy="explore"), progress=False)
    ds = LatentDataset(tmp_path)
    ds.validate(deep=True)
    assert len(ds) == 2 and ds.latent_shape == (64, 192) and ds.num_discrete_actions == (17,)
    assert list(ds.episode_lengths) == [12, 12]
    actions = np.asarray(ds[0]["actions_discrete"])[:, 0]
    assert actions[0] == -1 and ((actions[1:] >= 0) & (actions[1:] < 17)).all()
    images = decoder_for(ds)(ds.window(0, 0, 12)["latents"])
    assert images.shape == (12, 64, 64, 3)
    # 8-bit frames survive the codec: decoded pixels are (almost) multiples of 1/255
    assert np.abs(images * 255 - np.round(images * 255)).max() < 1e-3
    assert not np.array_equal(images[0], images[-1])  # the agent moved / the world changed
    assert main(["validate", str(tmp_path)]) == 0


def test_cli_make_toy_info_and_validate(tmp_path, capsys):
    root = tmp_path / "toy"
    assert main(["make-toy", str(root), "--episodes", "3", "--length", "10"]) == 0
    capsys.readouterr()
    assert main(["info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 3 and info["frames"] == 30 and info["latent_shape"] == [16, 48]
    assert main(["validate", str(root)]) == 0
    assert "ok: 3 episodes" in capsys.readouterr().out
    (root / "episodes" / "000002.actions_discrete.npy").unlink()
    assert main(["validate", str(root), "--quick"]) == 1
    err = capsys.readouterr().err
    assert "000002.actions_discrete.npy: episode file is missing" in err and "Traceback" not in err
    assert main(["info", str(tmp_path / "missing")]) == 1
