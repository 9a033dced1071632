"""The built-in world's oracle (data/building/oracle.py): exact replays, the true transition law, exact on the
deterministic world."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dreamer_dynamics.data import DynamicsDataModule, LatentDataset
from dreamer_dynamics.data.building.toy_env import locate_objects
from dreamer_dynamics.data.building.worlds import ToyDatasetConfig, builtin_datamodule, evaluation_references
from dreamer_dynamics.data.reading.codec import import_class
from dreamer_dynamics.data.reading.format import METADATA_FILE, DatasetError
from dreamer_dynamics.data.reading.references import REFERENCES_ATTRIBUTE, dataset_references
from dreamer_dynamics.references import EvaluationReferences
from dreamer_dynamics.training.scores import RolloutScores, energy_score, oracle_scores
from tests.test_toy_world import CHI2_999, chi_squared, next_velocity_probs

SMALL = ToyDatasetConfig(episodes=8, length=24)
CTX = 4


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    return {
        world: builtin_datamodule(
            world,
            SMALL,
            cache,
            val_fraction=0.5,
            val_length=12,
            val_batch_size=4,
            val_batches=1,
        )
        for world in ("deterministic", "stochastic")
    }


def oracle_of(dm):
    return dm.references.oracle


def stored(dm, episode: int, start: int, length: int) -> torch.Tensor:
    return torch.from_numpy(dm.dataset.window(episode, start, length)["latents"])


@pytest.mark.parametrize("world", ["deterministic", "stochastic"])
def test_replayed_context_is_the_stored_context(worlds, world):
    dm = worlds[world]
    batch = next(iter(dm.val_dataloader()))
    assert batch["episode"].shape == batch["start"].shape == (4,)
    for row, (e, s) in enumerate(zip(batch["episode"].tolist(), batch["start"].tolist())):
        window = dm.destandardize(batch["latents"][row])  # the batch's fields locate it in its episode
        torch.testing.assert_close(window, stored(dm, e, s, 12), atol=1e-5, rtol=0)
        _, frames = oracle_of(dm).replay(e, s + CTX)
        replayed = torch.from_numpy(oracle_of(dm).encode(frames[s:]))  # (CTX, N_b, D_b)
        torch.testing.assert_close(replayed, stored(dm, e, s, CTX), atol=1e-5, rtol=0)


def test_oracle_is_exact_on_the_deterministic_world(worlds):
    dm = worlds["deterministic"]
    batch = next(iter(dm.val_dataloader()))
    first = batch["start"] + CTX
    samples = oracle_of(dm).sample(batch["episode"], first, batch["actions_discrete"][:, CTX:], 3)
    assert samples.shape == (4, 3, 12 - CTX, 16, 48)
    truth = torch.stack(
        [stored(dm, e, f, 12 - CTX) for e, f in zip(batch["episode"].tolist(), first.tolist())]
    )
    for s in range(3):
        torch.testing.assert_close(samples[:, s], truth, atol=1e-5, rtol=0)
    error, spread = energy_score(samples.transpose(0, 1), truth)
    assert float((error - spread).abs().max()) < 1e-4


def test_oracle_samples_differ_and_repeat_with_their_seed(worlds):
    dm = worlds["stochastic"]
    batch = next(iter(dm.val_dataloader()))
    args = (batch["episode"], batch["start"] + CTX, batch["actions_discrete"][:, CTX:], 6)
    a, b, c = oracle_of(dm).sample(*args), oracle_of(dm).sample(*args), oracle_of(dm).sample(*args, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    distinct = {tuple(a[0, s, -1].flatten().tolist()) for s in range(6)}
    assert len(distinct) > 1  # different futures of one context
    assert oracle_of(dm).sample(batch["episode"][:1], batch["start"][:1] + CTX, [[0] * 3], 2).shape[2] == 3


def free_contexts(oracle, wall: bool):
    """(episode, first, ball, position, velocity) where a ball's next step meets neither the sprite nor the
    other ball (a noop), away from the walls or (``wall``) touching exactly one."""
    limit = oracle.env.image_size - oracle.env.ball_size
    for episode in range(len(oracle.seeds)):
        for first in range(2, 24):
            env, _ = oracle.replay(episode, first)
            for k in range(env.config.num_balls):
                ball = env.balls[k]
                at_wall = int(((ball == 0) | (ball == limit)).sum())
                inside = bool(((ball >= 2) & (ball <= limit - 2)).all())
                if (at_wall == 1) if wall else inside:
                    others = [env.sprite] + [env.balls[j] for j in range(env.config.num_balls) if j != k]
                    if all(np.abs(ball - o).max() >= 5 for o in others):
                        yield episode, first, k, ball.copy(), env.velocities[k].copy()


@pytest.mark.parametrize("wall", [False, True])
def test_oracle_reproduces_the_transition_law(worlds, wall):
    """Next positions of a ball in 3000 oracle samples, located in the decoded frames: chi-squared against
    the analytic law of the world's turns (p = 0.999)."""
    dm = worlds["stochastic"]
    oracle = oracle_of(dm)
    episode, first, k, ball, velocity = next(free_contexts(oracle, wall))
    n = 3000
    latents = oracle.sample([episode], [first], [[0]], n)[0, :, 0]  # (S, N_b, D_b): noop, sprite stays
    positions = locate_objects(dm.decoder(latents), oracle.env)[:, 1 + k]  # (S, 2)
    counts: dict = {}
    for pos in positions.tolist():
        v = (pos[0] - int(ball[0]), pos[1] - int(ball[1]))
        counts[v] = counts.get(v, 0) + 1
    probs = next_velocity_probs(ball, velocity, oracle.env.image_size - oracle.env.ball_size, 0.5)
    assert len(probs) == (2 if wall else 4)
    assert chi_squared(counts, probs, n) < CHI2_999[len(probs) - 1], (counts, probs)


def test_oracle_exists_only_for_the_builtin_world(worlds, tmp_path):
    from tests.test_cli import write_dataset

    assert oracle_of(worlds["stochastic"]).env.turn_probability == 0.5
    assert oracle_of(worlds["deterministic"]).env.turn_probability == 0.0
    own = write_dataset(tmp_path / "own")
    assert evaluation_references(own) == EvaluationReferences()
    assert DynamicsDataModule(own, val_fraction=0.25).references == EvaluationReferences()


def test_the_description_names_the_references_and_a_bad_name_is_one_line(worlds, tmp_path):
    """A built-in dataset's metadata names ``evaluation_references`` by import path; the DataModule builds its
    references from that name; a name that cannot be imported is refused in one line naming the dataset."""
    dm = worlds["stochastic"]
    path = dm.dataset.meta.attributes[REFERENCES_ATTRIBUTE]
    assert import_class(path) is evaluation_references
    assert dm.references.oracle.seeds == evaluation_references(dm).oracle.seeds
    assert dm.references.object_locator is not None
    copy = tmp_path / "renamed"
    shutil.copytree(dm.root, copy)
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["attributes"][REFERENCES_ATTRIBUTE] = "no_such_package.references"
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(
        DatasetError, match="cannot import evaluation_references function 'no_such_package"
    ) as err:
        dataset_references(LatentDataset(copy))
    assert str(copy) in str(err.value) and "\n" not in str(err.value)


def test_references_take_a_root_a_dataset_or_its_metadata(worlds):
    dm = worlds["stochastic"]
    for given in (dm.root, dm.dataset, dm.dataset.meta, LatentDataset(dm.root)):
        references = evaluation_references(given)
        assert references.oracle.seeds == oracle_of(dm).seeds and references.object_locator is not None


def test_object_locator_reads_dataset_units(worlds):
    """The locator takes latents in the dataset's own units: the decoded frames' objects, wherever the
    DataModule's batches are standardised."""
    dm = worlds["deterministic"]
    latents = dm.destandardize(next(iter(dm.val_dataloader()))["latents"])  # (B, T, N_b, D_b), data units
    locate = evaluation_references(dm).object_locator
    env = oracle_of(dm).env
    torch.testing.assert_close(locate(latents), locate_objects(dm.decoder(latents), env))
    assert locate(latents).shape == (*latents.shape[:2], 1 + env.num_balls, 2)


def test_excess_by_hand():
    metric = RolloutScores([4])
    target = torch.zeros(1, 2, 1, 1)
    context = torch.tensor([4.0, 2.0]).reshape(1, 2, 1, 1)  # copy-last ES 2
    samples = torch.tensor([[1.0, 2.0], [1.0, 2.0]]).reshape(2, 1, 2, 1, 1)  # ES 1 and 2: mean 1.5
    metric.update(
        context,
        target,
        {4: samples},
        oracle={"oracle_es": torch.tensor([[0.5, 1.5]]), "oracle_mean_es": torch.tensor([[1.0, 2.0]])},
    )
    out = metric.compute()
    assert out["oracle_es"].item() == 1.0 and out["oracle_mean_es"].item() == 1.5
    assert out["excess_k4"].item() == pytest.approx((1.5 - 1.0) / (2.0 - 1.0))
    plain = RolloutScores([4])
    plain.update(context, target, {4: samples})
    assert "excess_k4" not in plain.compute() and "oracle_es" not in plain.compute()


@pytest.mark.parametrize("world", ["deterministic", "stochastic"])
def test_oracle_scores_floor_blur_and_excess(worlds, world):
    """The oracle beats its own mean (a blur) where the future is uncertain; another draw of the oracle scored
    as the model has an excess of about 0; on the deterministic world the floor is 0 and the excess is the ES
    ratio."""
    dm = worlds[world]
    batch = next(iter(dm.val_dataloader()))
    context = dm.destandardize(batch["latents"][:, :CTX])
    target = dm.destandardize(batch["latents"][:, CTX:])  # (B, H, N_b, D_b), data units
    figures = oracle_scores(oracle_of(dm), batch, CTX, target, samples=16)
    assert figures["oracle_es"].shape == figures["oracle_mean_es"].shape == target.shape[:2]
    model = oracle_of(dm).sample(
        batch["episode"], batch["start"] + CTX, batch["actions_discrete"][:, CTX:], 16, 9
    )
    metric = RolloutScores([1])
    metric.update(context, target, {1: model.transpose(0, 1)}, oracle=figures)
    out = metric.compute()
    if world == "deterministic":
        assert out["oracle_es"].item() < 1e-4 and out["oracle_mean_es"].item() < 1e-4
        assert out["excess_k1"].item() == pytest.approx(out["es_ratio_k1"].item(), abs=1e-4)
    else:
        assert out["oracle_es"].item() < 0.8 * out["oracle_mean_es"].item()
        assert out["oracle_mean_es"].item() < out["es_copy_last"].item()
        assert abs(out["excess_k1"].item()) < 0.05, out
