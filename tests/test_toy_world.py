"""The stochastic built-in world (docs/data.md): unchanged deterministic episodes, exact replays, the turn
probabilities, and its selection through the DataModule and the CLI."""

from __future__ import annotations

import copy
import hashlib
import itertools
import sys

import numpy as np
import pytest

from dreamer_dynamics.data import LatentDataset
from dreamer_dynamics.data.building.toy_env import ToyEnv, ToyEnvConfig, rollout_episode
from dreamer_dynamics.data.building.worlds import (
    ToyDatasetConfig,
    builtin_datamodule,
    builtin_dataset_root,
    toy_config,
    toy_dataset_key,
)
from dreamer_dynamics.errors import ConfigError
from tests.conftest import replayed_objects

DIAGONALS = list(itertools.product((-1, 1), repeat=2))
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27}  # 0.999 quantiles of the chi-squared law by degrees of freedom
# sha256 of the deterministic world's frames and actions, and of a generated dataset's latents, computed with
# the environment as it was before turns existed: the default world must stay bit-identical
FRAMES_SHA256 = "38d7d6fe1dd413361c74f2ec37ca4bed6a9d47a568a61744c0d3e5f4a770403c"
LATENTS_SHA256 = "95610167705976f69f1bf496d1df04a84e8632a3415a66d500669f19a87c1605"


def next_velocity_probs(ball, velocity, limit: int, p: float) -> dict[tuple[int, int], float]:
    """Analytic law of a ball's next velocity away from the sprite: keep it with 1 - p, else a uniform
    diagonal; then every component that would leave [0, limit] is reversed."""

    def bounced(v):
        return tuple(-c if not 0 <= ball[a] + c <= limit else c for a, c in enumerate(v))

    probs: dict[tuple[int, int], float] = {}
    for v, share in [(tuple(velocity), 1 - p)] + [(d, p / 4) for d in DIAGONALS]:
        probs[bounced(v)] = probs.get(bounced(v), 0.0) + share
    return {v: q for v, q in probs.items() if q > 0}


def chi_squared(counts: dict, probs: dict, n: int) -> float:
    assert set(counts) <= set(probs), f"outcomes {set(counts) - set(probs)} have probability 0"
    return sum((counts.get(v, 0) - n * q) ** 2 / (n * q) for v, q in probs.items())


def test_deterministic_world_is_bit_identical():
    """turn_probability 0 draws nothing: frames, actions and a generated dataset as before turns existed, and
    and one cache key whether turn_probability is unset or 0."""
    h = hashlib.sha256()
    for seed in range(8):
        for cfg in (ToyEnvConfig(), ToyEnvConfig(num_balls=4)):
            frames, actions = rollout_episode(ToyEnv(cfg), seed, 64)
            h.update(frames.tobytes())
            h.update(actions.tobytes())
    assert h.hexdigest() == FRAMES_SHA256
    assert toy_dataset_key(ToyDatasetConfig()) == "toy-v1-4453219e30bc"
    assert toy_dataset_key(ToyDatasetConfig(turn_probability=0.0)) == "toy-v1-4453219e30bc"


def test_cache_key_names_the_codec_import_path(monkeypatch):
    """The built-in dataset's metadata names its codec by import path: a cached dataset that names another
    path is not reused."""
    from dreamer_dynamics.data.reading.patch_codec import PatchCodec

    key = toy_dataset_key(ToyDatasetConfig())
    monkeypatch.setattr(PatchCodec, "__module__", "elsewhere.patch_codec")
    assert toy_dataset_key(ToyDatasetConfig()) != key


def test_deterministic_dataset_is_bit_identical(tmp_path):
    root = builtin_dataset_root(ToyDatasetConfig(episodes=3, length=12), tmp_path, progress=False)
    ds = LatentDataset(root)
    h = hashlib.sha256()
    for i in range(3):
        h.update(np.asarray(ds[i]["latents"]).tobytes())
    assert h.hexdigest() == LATENTS_SHA256
    assert ds.meta.attributes["world"] == "deterministic" and ds.meta.attributes["turn_probability"] == 0.0


def test_stochastic_episodes_replay_exactly_and_differ_from_deterministic():
    world = ToyEnvConfig(turn_probability=0.5)
    frames, actions = rollout_episode(ToyEnv(world), seed=11, length=40)
    again, _ = rollout_episode(ToyEnv(world), seed=11, length=40)
    np.testing.assert_array_equal(frames, again)
    replay = ToyEnv(world)  # (seed, actions) is all a replay needs
    np.testing.assert_array_equal(replay.reset(11), frames[0])
    for t in range(1, 40):
        np.testing.assert_array_equal(replay.step(int(actions[t])), frames[t])
    plain, plain_actions = rollout_episode(ToyEnv(), seed=11, length=40)
    np.testing.assert_array_equal(plain[0], frames[0])  # same layout and policy, different paths
    np.testing.assert_array_equal(plain_actions, actions)
    assert not np.array_equal(plain, frames)


@pytest.mark.parametrize(
    "ball,velocity",
    [((6, 6), (1, 1)), ((0, 7), (-1, 1)), ((5, 14), (1, 1)), ((0, 0), (-1, -1))],  # open, walls, corner
)
@pytest.mark.parametrize("p", [0.5, 0.2])
def test_turns_follow_the_analytic_law(ball, velocity, p):
    """Next velocities of a ball over fresh turn draws: chi-squared against the analytic law (p = 0.999)."""
    env = ToyEnv(ToyEnvConfig(num_balls=1, turn_probability=p))
    env.reset(0)
    env.sprite[:] = (13, 13) if ball[0] < 9 else (0, 0)  # far from the ball: no sprite bounce
    env.balls[0], env.velocities[0] = ball, velocity
    n, counts = 4000, {}
    for i in range(n):
        trial = copy.deepcopy(env)
        trial.rng = np.random.default_rng([123, i])
        trial.step(0)
        v = tuple(int(c) for c in trial.velocities[0])
        np.testing.assert_array_equal(trial.balls[0], np.add(ball, v))  # it moves along its new velocity
        counts[v] = counts.get(v, 0) + 1
    probs = next_velocity_probs(ball, velocity, 14, p)
    if len(probs) == 1:  # a corner: one way out
        assert counts == {v: n for v in probs}
    else:
        assert chi_squared(counts, probs, n) < CHI2_999[len(probs) - 1], (counts, probs)


def test_world_selection_and_metadata(tmp_path):
    small = dict(episodes=4, length=12)
    stochastic = builtin_datamodule("stochastic", ToyDatasetConfig(**small), str(tmp_path), val_fraction=0.25)
    attributes = stochastic.dataset.meta.attributes
    assert attributes["world"] == "stochastic" and attributes["turn_probability"] == 0.5
    assert attributes["config"]["turn_probability"] == 0.5
    weaker = builtin_datamodule("stochastic", {**small, "turn_probability": 0.25}, str(tmp_path))
    plain = builtin_datamodule(toy=ToyDatasetConfig(**small), cache_dir=str(tmp_path))
    assert len({stochastic.root, weaker.root, plain.root}) == 3  # the cache key covers the strength
    assert weaker.dataset.meta.attributes["turn_probability"] == 0.25
    assert plain.dataset.meta.attributes["world"] == "deterministic"
    with pytest.raises(ConfigError, match="data.world=stochastic"):
        toy_config("deterministic", ToyDatasetConfig(turn_probability=0.5))
    with pytest.raises(ConfigError, match="data.world must be one of"):
        toy_config("chaotic")
    with pytest.raises(ConfigError, match=r"turn_probability must be in \[0, 1\]"):
        toy_config("stochastic", {"turn_probability": 1.5})
    with pytest.raises(ConfigError, match=r"data.toy has no field\(s\) \['episode'\]"):
        toy_config("stochastic", {"episode": 3})


def test_cli_selects_the_stochastic_world(tmp_path, monkeypatch):
    from dreamer_dynamics.cli import DynamicsCLI

    monkeypatch.setattr(sys, "argv", ["dreamer-dynamics"])
    monkeypatch.setenv("DREAMER_DYNAMICS_CACHE", str(tmp_path))
    args = [
        "--data.world=stochastic",
        "--data.toy.episodes=4",
        "--data.toy.length=12",
        "--data.toy.turn_probability=0.25",
        "--model.model.dim=16",
        "--model.model.depth=2",
        "--model.model.heads=2",
        "--model.model.kv_heads=1",
    ]
    cli = DynamicsCLI(args=args, run=False)
    attributes = cli.datamodule.dataset.meta.attributes
    assert attributes["world"] == "stochastic" and attributes["turn_probability"] == 0.25
    assert cli.config.data.root is None  # the saved config names the world, not this machine's cache
    assert cli.datamodule.hparams.world == "stochastic" and cli.datamodule.hparams.toy["episodes"] == 4


def test_locator_finds_the_objects_of_the_stochastic_world():
    """Same palette and sides: the object locator (object accuracy) works on the stochastic world's frames."""
    import torch

    from dreamer_dynamics.data.building.toy_env import locate_objects

    def hidden(objects: np.ndarray) -> list[bool]:  # covered by the sprite or a later ball (drawn on top)
        def overlap(a, sa, b, sb):
            return bool(np.all(a < b + sb) and np.all(b < a + sa))

        s, c = env.config.sprite_size, env.config.ball_size
        balls = objects[1:]
        return [False] + [
            overlap(ball, c, objects[0], s) or any(overlap(ball, c, later, c) for later in balls[k + 1 :])
            for k, ball in enumerate(balls)
        ]

    env = ToyEnv(ToyEnvConfig(turn_probability=0.5))
    frames, actions = rollout_episode(env, seed=11, length=40)
    expected = replayed_objects(env.config, 11, actions)
    found = locate_objects(torch.as_tensor(frames), env.config)  # (T, 3, 2)
    visible = ~torch.as_tensor([hidden(e) for e in expected])
    assert torch.equal(found[visible], torch.as_tensor(np.stack(expected))[visible])
    assert visible.float().mean() > 0.8  # the rest is covered: balls overlap (and turn) often here
