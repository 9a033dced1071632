"""Bring your own video, end to end: a generated GIF and MP4 -> ``from-video`` -> validate -> a 20-step
``fit`` -> ``predict`` writes decoded PNG frames -> ``export`` -> ``from_pretrained``, whose rollout (in a
process without Lightning) equals the checkpoint's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dreamer_dynamics.data import PatchCodec
from tests.conftest import QUICKSTART, TINY_CLI, run_python
from tests.video_fixtures import moving_square, write_gif, write_mp4

pytest.importorskip("av")

TINY = [  # the tiny CLI overrides with 3 context frames, 8-frame predictions and two K
    *TINY_CLI,
    "--model.model.k_max=8",
    "--data.predict_length=8",
    "--model.evaluation.context_frames=3",
    "--model.evaluation.rollout_steps=[1,2]",
]

ROLLOUT_WITHOUT_LIGHTNING = """
import sys, torch
from dreamer_dynamics.model import DynamicsTransformer
model = DynamicsTransformer.from_pretrained(sys.argv[1])
inputs = torch.load(sys.argv[2], weights_only=True)
out = model.rollout(inputs["context"], 4, actions_discrete=inputs["actions"],
                    generator=torch.Generator().manual_seed(7))
torch.save(out, sys.argv[3])
assert not any(m.split(".")[0] == "lightning" for m in sys.modules), "lightning was imported"
"""


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dreamer-dynamics"])


def callbacks_config(tmp_path: Path) -> str:
    """Loggers (TensorBoard and a wandb-style ``log_image`` logger) and callbacks of the run: EMA from step 5
    (so EMA and online weights differ), checkpoints, rollout pictures and the prediction writer."""
    config = {
        "trainer": {
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": str(tmp_path), "name": "tensorboard"},
                },
                {
                    "class_path": "tests.image_logger.ImageListLogger",
                    "init_args": {"save_dir": str(tmp_path / "logged")},
                },
            ],
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.EMAWeightAveraging",
                    "init_args": {"decay": 0.9, "update_starting_at_step": 5},
                },
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True},
                },
                {"class_path": "dreamer_dynamics.training.RolloutImageLogger"},
                {
                    "class_path": "dreamer_dynamics.training.RolloutWriter",
                    "init_args": {"output_dir": str(tmp_path / "predictions")},
                },
            ],
        }
    }
    path = tmp_path / "callbacks.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_video_to_exported_model(tmp_path, monkeypatch):
    from dreamer_dynamics.cli import main
    from dreamer_dynamics.data.cli import main as data_main
    from dreamer_dynamics.export import main as export_main
    from dreamer_dynamics.model import DynamicsTransformer
    from dreamer_dynamics.module import DynamicsModule

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    videos = [
        write_gif(tmp_path / "a.gif", moving_square(20, seed=0)),
        write_mp4(tmp_path / "b.mp4", moving_square(24, seed=1)),
    ]
    actions = []
    for video, length in zip(videos, (20, 24), strict=True):
        actions.append(tmp_path / f"{video.stem}.npy")
        np.save(actions[-1], rng.integers(0, 3, (length, 1)))
    data = tmp_path / "data"
    assert (
        data_main(
            [
                "from-video",
                str(data),
                *map(str, videos),
                "--actions",
                *map(str, actions),
                "--image-size",
                "16",
                "--codec-args",
                '{"patch": 4}',
            ]
        )
        == 0
    )
    assert data_main(["validate", str(data)]) == 0
    meta = json.loads((data / "metadata.json").read_text())
    assert meta["latent_shape"] == [16, 48] and meta["num_discrete_actions"] == [3]
    assert [e["length"] for e in meta["episodes"]] == [20, 24]

    common = [
        "--config",
        QUICKSTART,
        "--config",
        callbacks_config(tmp_path),
        "--data.root",
        str(data),
        *TINY,
        f"--trainer.default_root_dir={tmp_path}",
        "--data.val_fraction=0.5",
    ]
    main(["validate", *common])  # the untrained model on the new data: the Lightning side accepts it
    main(["fit", *common, "--trainer.max_steps=20", "--trainer.val_check_interval=20"])
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 20
    events = list((tmp_path / "tensorboard").glob("version_*/events.out.tfevents.*"))
    assert events, "no TensorBoard events"
    # Rollout pictures reach every image-capable logger, not TensorBoard only, at the validation scalars' step
    # (19: Lightning logs step N's metrics at N - 1): rows = context, truth, K in {1, 2}; a 56-pixel label
    # column, then 3 frames (3 context frames, 2 generated); 16 x 16 pixels each.
    logged = sorted((tmp_path / "logged").glob("val_rollout_*_19_0.npy"))
    assert len(logged) == 2 and np.load(logged[0]).shape == (4 * 16, 56 + 3 * 16, 3)

    main(["predict", *common, "--ckpt_path", str(checkpoint)])
    written = tmp_path / "predictions" / "rollouts_rank0_batch000000"
    rollout = np.load(f"{written}.rollout.npy")
    context = np.load(f"{written}.context.npy")
    assert (
        rollout.shape[1:] == (5, 16, 48) and context.shape[1] == 3
    )  # predict windows: 3 context + 5 generated
    for b in range(min(4, rollout.shape[0])):  # every generated frame, decoded by the dataset's codec
        grid = (
            np.asarray(Image.open(f"{written}.seq{b}.png")) / 255.0
        )  # rows: rollout, truth; cols: 3 + 5 frames
        assert grid.shape == (2 * 16, 8 * 16, 3)
        pictures = grid[:16].reshape(16, 8, 16, 3).transpose(1, 0, 2, 3)[3:]  # (5, 16, 16, 3): the rollout
        decoded = PatchCodec(16, 4).decode(rollout[b], clip=True)
        np.testing.assert_allclose(pictures, decoded, atol=0.5 / 255 + 1e-6)

    with pytest.raises(SystemExit) as exit_code:
        main(["export", str(checkpoint), str(tmp_path / "exported")])
    assert exit_code.value.code == 0
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["codec"]["init_args"]["patch"] == 4 and exported["model"]["latent_dim"] == 48

    # The checkpoint's rollout (EMA weights, as EMAWeightAveraging stores them) vs the export's, same noise.
    module = DynamicsModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    episode = np.load(data / "episodes" / "000001.latents.npy")
    context = torch.from_numpy(episode[None, :4].copy())  # (1, 4, 16, 48)
    acts = torch.from_numpy(np.load(actions[1])[None, :8].astype(np.int64))  # (1, 8, 1)
    expected = module.model.rollout(
        context, 4, actions_discrete=acts, generator=torch.Generator().manual_seed(7)
    )
    torch.save({"context": context, "actions": acts}, tmp_path / "inputs.pt")
    run_python(ROLLOUT_WITHOUT_LIGHTNING, tmp_path / "exported", tmp_path / "inputs.pt", tmp_path / "out.pt")
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert got.shape == (1, 4, 16, 48)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    online = DynamicsModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    online.load_state_dict(torch.load(checkpoint, weights_only=True)["current_model_state"])
    differs = online.eval().model.rollout(
        context, 4, actions_discrete=acts, generator=torch.Generator().manual_seed(7)
    )
    assert not torch.allclose(
        differs, got, atol=1e-4
    )  # the export holds the EMA weights, not the online ones
    assert export_main([str(checkpoint), str(tmp_path / "online"), "--weights", "online"]) == 0
    online_export = DynamicsTransformer.from_pretrained(tmp_path / "online")
    again = online_export.rollout(
        context, 4, actions_discrete=acts, generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(again, differs, rtol=0, atol=1e-6)
