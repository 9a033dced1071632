"""corrupt / velocity / ramp_weight / euler_sample, against closed forms (docs/design.md §2)."""

import pytest
import torch

from dreamer_dynamics.objective import corrupt, euler_sample, ramp_weight, velocity
from tests.analytic_gaussian import GaussianData


def test_corrupt_endpoints_and_broadcast():
    z1, z0 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    tau = torch.tensor([[0.0, 0.25, 1.0], [1.0, 0.5, 0.0]])
    zt = corrupt(z1, z0, tau)
    assert torch.equal(zt[0, 0], z0[0, 0])  # tau = 0: pure noise
    assert torch.equal(zt[0, 2], z1[0, 2])  # tau = 1: clean data
    torch.testing.assert_close(zt[0, 1], 0.75 * z0[0, 1] + 0.25 * z1[0, 1])


def test_velocity_of_exact_prediction_points_from_noise_to_data():
    z1, z0 = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    tau = torch.tensor([[0.0, 0.5, 0.75], [0.125, 0.25, 0.9]])
    v = velocity(z1, corrupt(z1, z0, tau), tau)
    torch.testing.assert_close(v, z1 - z0)  # the straight path's velocity


def test_ramp_weight_is_heavy_near_clean_data():
    tau = torch.tensor([[0.0, 0.5, 1.0]])
    torch.testing.assert_close(ramp_weight(tau), torch.tensor([[0.1, 0.55, 1.0]]))


def test_corrupt_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="does not match"):
        corrupt(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(3, 2))


@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_euler_sample_with_exact_shortcut_denoiser_reproduces_gaussian(num_steps):
    g = GaussianData(mu=0.7, sigma=0.5)
    z0 = torch.randn(4000, 2, 16, generator=torch.Generator().manual_seed(num_steps), dtype=torch.float64)
    sample = euler_sample(g.shortcut, z0, num_steps)
    # The exact flow map from noise to data is z -> mu + sigma z, whatever the number of steps.
    torch.testing.assert_close(sample, g.mu + g.sigma * z0)
    assert abs(sample.mean().item() - g.mu) < 0.01 and abs(sample.std().item() - g.sigma) < 0.01


def test_euler_sample_calls_denoiser_on_the_grid_of_its_step_size():
    seen = []

    def denoiser(z, tau, d, *, tag):
        assert tag == "cond" and tau.shape == d.shape == z.shape[:2]
        seen.append((tau[0, 0].item(), d[0, 0].item()))
        return torch.zeros_like(z)

    euler_sample(denoiser, torch.randn(2, 3, 4), 4, tag="cond")
    assert seen == [(0.0, 0.25), (0.25, 0.25), (0.5, 0.25), (0.75, 0.25)]


def test_euler_sample_last_step_lands_on_prediction():
    target = torch.randn(2, 3, 5)
    out = euler_sample(lambda z, tau, d: target, torch.randn(2, 3, 5), 8)
    torch.testing.assert_close(out, target)


def test_euler_sample_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        euler_sample(lambda z, tau, d: z, torch.randn(1, 1, 2), 3)
