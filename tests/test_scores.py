"""The energy score is a proper scoring rule (Gaussian targets, closed form), RolloutScores sums and ratios,
and the built-in world's object locator."""

import math

import numpy as np
import pytest
import torch

from dreamer_dynamics.data.building.toy_env import ToyEnv, locate_objects, rollout_episode
from dreamer_dynamics.training.scores import RolloutScores, energy_score
from tests.conftest import replayed_objects

DIM = 16  # latents per "frame" (N_b x D_b = 4 x 4)
FRAMES = 4000  # independent targets
SIGMA = 0.7


def mean_chi(d: int) -> float:
    """E||N(0, I_d)|| in closed form."""
    return math.sqrt(2.0) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))


def gaussian_case(samples: int, scale: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets y ~ N(mu, SIGMA^2 I) per frame and S forecast samples X ~ N(mu, (scale * SIGMA)^2 I)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(1, FRAMES, 4, 4, generator=g) * 3.0  # (B = 1, H = FRAMES, N_b, D_b)
    target = mu + SIGMA * torch.randn(mu.shape, generator=g)
    forecast = mu + scale * SIGMA * torch.randn((samples,) + mu.shape, generator=g)
    return forecast, target


def mean_es(samples: torch.Tensor, target: torch.Tensor) -> float:
    error, spread = energy_score(samples, target)
    return float((error - spread).mean())


def test_true_distribution_scores_best_and_matches_closed_form():
    truth, target = gaussian_case(samples=8, scale=1.0)
    es_truth = mean_es(truth, target)
    # Closed form: ES(N(mu, s^2 I), y) averages to c_d (sqrt(SIGMA^2 + s^2) - s / sqrt 2), c_d = E||N(0,
    # I_d)||.
    assert es_truth == pytest.approx(mean_chi(DIM) * SIGMA * (math.sqrt(2.0) - 1 / math.sqrt(2.0)), rel=0.02)
    point = gaussian_mean().expand_as(truth)  # the distribution's own mean: a point forecast, no spread
    for name, other in {
        "its own mean (a point forecast)": point,
        "over-dispersed (2 sigma)": gaussian_case(8, 2.0, seed=1)[0],
        "under-dispersed (sigma / 2)": gaussian_case(8, 0.5, seed=1)[0],
    }.items():
        assert es_truth < mean_es(other, target) * 0.97, name
    # Single-sample MSE ranks the blurry mean above a sharp correct sample: why it cannot be the headline.
    assert (point[0] - target).square().mean() < (truth[0] - target).square().mean()


def gaussian_mean() -> torch.Tensor:
    """mu of gaussian_case (same seed, same draw order)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, FRAMES, 4, 4, generator=g) * 3.0


def test_spread_estimator_is_unbiased_for_any_sample_count():
    # The fair estimator averages distinct pairs only; dividing by S^2 instead would shrink the spread by
    # (S - 1) / S and make 2-sample scores disagree with 16-sample scores.
    scores = [mean_es(*gaussian_case(samples=s, scale=1.0, seed=3)) for s in (2, 4, 16)]
    expected = mean_chi(DIM) * SIGMA * (math.sqrt(2.0) - 1 / math.sqrt(2.0))
    for score in scores:
        assert score == pytest.approx(expected, rel=0.03)


def test_energy_score_needs_two_samples_and_matching_shapes():
    with pytest.raises(ValueError, match=">= 2 samples"):
        energy_score(torch.zeros(1, 2, 3, 4, 4), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="do not match"):
        energy_score(torch.zeros(2, 2, 3, 4, 4), torch.zeros(2, 2, 4, 4))


def test_rollout_scores_sums_means_and_ratio_by_hand():
    metric = RolloutScores([1, 4])
    target = torch.zeros(1, 2, 1, 1)  # one context, 2 frames, 1 latent
    context = torch.tensor([4.0, 2.0]).reshape(1, 2, 1, 1)  # copy-last: 2, context mean: 3
    samples = torch.tensor([[1.0, -1.0], [-1.0, 3.0]]).reshape(2, 1, 2, 1, 1)  # (S = 2, B, H, 1, 1)
    hits = torch.tensor([[[True, False]], [[True, True]]])  # (S, B, H)
    metric.update(context, target, {4: samples}, {4: hits})
    out = metric.compute()
    # frame 0: samples 1, -1 -> error 1, spread |1 - (-1)| / 2 = 1, ES 0; frame 1: -1, 3 -> error 2, spread
    # 2, ES 0
    assert out["es_k4"].item() == 0.0
    assert out["spread_k4"].item() == 1.5
    assert out["mean_mse_k4"].item() == 0.5  # sample means 0 and 1
    assert out["mse_k4"].item() == 1.0  # first sample: 1 and -1
    assert out["es_copy_last"].item() == 2.0 and out["es_context_mean"].item() == 3.0
    assert out["es_ratio_k4"].item() == 0.0
    assert out["object_accuracy_k4"].item() == 0.75
    assert "es_k1" not in out


def test_locator_finds_every_object_of_the_toy_world_exactly():
    env = ToyEnv()
    frames, actions = rollout_episode(env, seed=11, length=40)
    expected = replayed_objects(env.config, 11, actions)
    found = locate_objects(torch.as_tensor(frames), env.config)  # (T, 3, 2)
    visible = ~torch.as_tensor([hidden_by_sprite(e, env) for e in expected])  # (T, 3): the sprite hides balls
    assert torch.equal(found[visible], torch.as_tensor(np.stack(expected))[visible])
    assert visible.float().mean() > 0.9


def hidden_by_sprite(objects: np.ndarray, env: ToyEnv) -> list[bool]:
    c = env.config
    sprite = objects[0]
    return [False] + [
        bool(np.all(ball < sprite + c.sprite_size) and np.all(sprite < ball + c.ball_size))
        for ball in objects[1:]
    ]


def test_locator_tolerates_blur_and_noise_but_not_a_shift():
    env = ToyEnv()
    frames, _ = rollout_episode(env, seed=5, length=20)
    clean = torch.as_tensor(frames)  # (T, H, W, 3)
    g = torch.Generator().manual_seed(0)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
    mean3 = torch.nn.functional.avg_pool2d(
        noisy.permute(0, 3, 1, 2), 3, stride=1, padding=1, count_include_pad=False
    ).permute(0, 2, 3, 1)
    blurred = 0.6 * noisy + 0.4 * mean3  # a soft, noisy frame like an imperfect generated one
    truth = locate_objects(clean, env.config)
    offset = (locate_objects(blurred, env.config) - truth).abs().amax(-1)  # (T, objects)
    assert (offset <= 1).all(-1).float().mean() >= 0.95
    shifted = torch.roll(clean, shifts=2, dims=2)  # everything 2 pixels to the right
    offset = (locate_objects(shifted, env.config) - truth).abs().amax(-1)  # (T, objects)
    assert (offset > 1).all(-1).float().mean() > 0.5
