"""Built-in data: the toy world's action dependence, the codec's exact inverse, caching."""

import numpy as np
import pytest
import torch

from dreamer_dynamics.data import LatentDataset, PatchCodec, decoder_for
from dreamer_dynamics.data.building.toy_env import ToyEnv, ToyEnvConfig, rollout_episode
from dreamer_dynamics.data.building.worlds import ToyDatasetConfig, builtin_dataset_root
from dreamer_dynamics.data.reading.patch_codec import dct_matrix


def test_sprite_follows_the_actions_and_frames_depend_on_them():
    env = ToyEnv()
    env.reset(seed=3)
    start = env.sprite.copy()
    for action, move in [(4, (0, 1)), (4, (0, 1)), (2, (1, 0)), (3, (0, -1)), (1, (-1, 0)), (0, (0, 0))]:
        before = env.sprite.copy()
        env.step(action)
        expected = np.clip(before + move, 0, env.config.image_size - env.config.sprite_size)
        np.testing.assert_array_equal(env.sprite, expected)
    assert not np.array_equal(start, np.array([-1, -1]))
    a, b = ToyEnv(), ToyEnv()
    np.testing.assert_array_equal(a.reset(7), b.reset(7))  # same seed, same start
    frames_a = [a.step(4) for _ in range(5)]
    frames_b = [b.step(3) for _ in range(5)]
    assert all(not np.array_equal(x, y) for x, y in zip(frames_a, frames_b))


def test_balls_move_on_their_own_and_bounce_off_the_sprite():
    env = ToyEnv(ToyEnvConfig(num_balls=1))
    env.reset(0)
    env.sprite[:] = (6, 6)
    env.balls[0] = (3, 3)
    env.velocities[0] = (1, 1)
    env.step(0)
    np.testing.assert_array_equal(env.balls[0], (4, 4))  # moves without any action
    env.step(0)  # (5, 5) would overlap the sprite at (6..8, 6..8): it bounces back
    np.testing.assert_array_equal(env.velocities[0], (-1, -1))
    np.testing.assert_array_equal(env.balls[0], (3, 3))


def test_episodes_are_reproducible_and_aligned():
    frames, actions = rollout_episode(ToyEnv(), seed=11, length=20)
    frames2, actions2 = rollout_episode(ToyEnv(), seed=11, length=20)
    np.testing.assert_array_equal(frames, frames2)
    np.testing.assert_array_equal(actions, actions2)
    assert frames.shape == (20, 16, 16, 3) and actions[0] == -1 and (actions[1:] >= 0).all()
    replay = ToyEnv()  # actions[t] led from frame t-1 to frame t
    np.testing.assert_array_equal(replay.reset(11), frames[0])
    for t in range(1, 20):
        np.testing.assert_array_equal(replay.step(int(actions[t])), frames[t])


def test_patch_codec_round_trip_and_orthogonality():
    basis = dct_matrix(48)
    np.testing.assert_allclose(basis @ basis.T, np.eye(48), atol=1e-12)
    codec = PatchCodec(image_size=16, patch=4, mean=0.3, std=0.2)
    images = np.random.default_rng(0).random((2, 3, 16, 16, 3)).astype(np.float32)
    latents = codec.encode(images)
    assert latents.shape == (2, 3, 16, 48) and latents.dtype == np.float32
    np.testing.assert_allclose(codec.decode(latents), images, atol=1e-5)
    torch_images = codec(torch.from_numpy(latents))
    assert isinstance(torch_images, torch.Tensor) and torch_images.shape == (2, 3, 16, 16, 3)
    # a pixel change stays inside its own token
    changed = images.copy()
    changed[0, 0, 5, 9] += 0.1
    diff = np.abs(codec.encode(changed) - latents).sum(-1)[0, 0]
    assert np.count_nonzero(diff > 1e-6) == 1 and diff.argmax() == (5 // 4) * 4 + 9 // 4


def test_builtin_dataset_is_generated_once_and_decodes(tmp_path):
    config = ToyDatasetConfig(episodes=4, length=12)
    root = builtin_dataset_root(config, tmp_path, progress=False)
    stamp = (root / "metadata.json").stat().st_mtime_ns
    assert builtin_dataset_root(config, tmp_path, progress=False) == root
    assert (root / "metadata.json").stat().st_mtime_ns == stamp  # cached, not regenerated
    assert builtin_dataset_root(ToyDatasetConfig(episodes=5, length=12), tmp_path, progress=False) != root
    ds = LatentDataset(root)
    ds.validate(deep=True)
    assert len(ds) == 4 and ds.latent_shape == (16, 48) and ds.num_discrete_actions == (5,)
    latents = ds.window(0, 0, 12)["latents"]
    assert abs(float(latents.std()) - 1.0) < 0.5  # ~unit scale from the fixed statistics
    decoder = decoder_for(ds)
    frames, _ = rollout_episode(ToyEnv(), seed=0, length=12)
    np.testing.assert_allclose(decoder(latents), frames, atol=1e-4)


@pytest.mark.parametrize("size", [8])
def test_env_rejects_bad_config_and_actions(size):
    with pytest.raises(ValueError, match="too small"):
        ToyEnv(ToyEnvConfig(image_size=size - 2))
    env = ToyEnv()
    env.reset(0)
    with pytest.raises(ValueError, match="action 5 outside"):
        env.step(5)
