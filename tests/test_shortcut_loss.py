"""shortcut_forcing_loss (docs/design.md §3, Eq. 7-8) against analytic Gaussian denoisers and a reference."""

import pytest
import torch

from dreamer_dynamics.objective import (
    LOSS_WEIGHTINGS,
    corrupt,
    ramp_weight,
    shortcut_forcing_loss,
    uniform_weight,
    velocity,
)
from tests.analytic_gaussian import GaussianData

K_MAX = 16


def _full_grid(k_max=K_MAX):
    """Every (tau, d) pair of training: K in {1, 2, ..., k_max}, tau in {0, ..., 1 - 1/K}."""
    pairs = [(i / k, 1 / k) for k in (2**j for j in range(k_max.bit_length())) for i in range(k)]
    tau, d = (torch.tensor([p[n] for p in pairs]).unsqueeze(0) for n in (0, 1))
    return tau, d


def test_exact_shortcut_denoiser_has_zero_bootstrap_loss_everywhere():
    g = GaussianData(mu=0.7, sigma=0.5)
    tau, d = _full_grid()
    tau, d = tau.expand(8, -1), d.expand(8, -1)
    z1 = g.mu + g.sigma * torch.randn(8, tau.shape[1], 64, dtype=torch.float64)
    out = shortcut_forcing_loss(g.shortcut, z1, tau, d, d_min=1 / K_MAX)
    assert out.bootstrap.sum() == 8 * (tau.shape[1] - K_MAX)  # every frame with d > d_min
    assert out.per_frame[out.bootstrap].abs().max() < 1e-20


def test_posterior_mean_flow_term_equals_posterior_variance():
    g = GaussianData(mu=-0.3, sigma=1.5)
    tau = torch.arange(K_MAX).unsqueeze(0) / K_MAX  # the d_min grid
    d = torch.full_like(tau, 1 / K_MAX)
    z1 = g.mu + g.sigma * torch.randn(
        1, K_MAX, 200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    out = shortcut_forcing_loss(g.posterior_mean, z1, tau, d, d_min=1 / K_MAX)
    assert not out.bootstrap.any()
    torch.testing.assert_close(out.per_frame[0], g.posterior_variance(tau[0]).double(), rtol=0.02, atol=1e-4)


class CausalToyDenoiser(torch.nn.Module):
    """A small differentiable denoiser whose output at frame t depends on frames <= t (like the model)."""

    def __init__(self, dim):
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)
        self.mix = torch.nn.Parameter(torch.tensor(0.3))
        self.level = torch.nn.Linear(2, dim)

    def forward(self, z, tau, d, *, bias=None):
        past = z.cumsum(1) / torch.arange(1, z.shape[1] + 1).view(1, -1, 1)
        out = self.proj(z) + self.mix * past + self.level(torch.stack([tau, d], -1))
        return out if bias is None else out + bias.view(-1, 1, 1)


def test_gradient_equals_hand_written_stop_gradient_target():
    torch.manual_seed(0)
    net = CausalToyDenoiser(6)
    B, T = 4, 5
    z1, z0 = torch.randn(B, T, 6), torch.randn(B, T, 6)
    d = torch.tensor([[1 / 16, 1 / 4, 1 / 2, 1 / 16, 1 / 8]] * 3 + [[1 / 16] * 5])
    tau = torch.tensor([[0.25, 0.5, 0.5, 0.9375, 0.375]] * 3 + [[0.0, 0.5, 0.25, 0.125, 0.0625]])
    bias = torch.randn(B)
    out = shortcut_forcing_loss(net, z1, tau, d, d_min=1 / 16, z0=z0, bias=bias)
    grads = torch.autograd.grad(out.loss, list(net.parameters()))

    # Reference written out term by term: teacher passes with detached weights on all rows.
    zt = corrupt(z1, z0, tau)
    x_hat = net(zt, tau, d, bias=bias)
    boot = d > 1 / 16
    with torch.no_grad():
        d_half = torch.where(boot, d / 2, d)
        b1 = velocity(net(zt, tau, d_half, bias=bias), zt, tau)
        z_mid = torch.where(boot.unsqueeze(-1), zt + (d / 2).unsqueeze(-1) * b1, zt)
        tau_mid = torch.where(boot, tau + d / 2, tau)
        b2 = velocity(net(z_mid, tau_mid, d_half, bias=bias), z_mid, tau_mid)
    v_hat = (x_hat - zt) / (1 - tau).unsqueeze(-1)
    boot_loss = (1 - tau) ** 2 * (v_hat - (b1 + b2) / 2).square().mean(-1)
    flow_loss = (x_hat - z1).square().mean(-1)
    reference = (ramp_weight(tau) * torch.where(boot, boot_loss, flow_loss)).mean()
    ref_grads = torch.autograd.grad(reference, list(net.parameters()))

    torch.testing.assert_close(out.loss, reference)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_loss_is_ramp_weighted_count_mean_and_terms_sum_to_it():
    B, T = 3, 4
    z1 = torch.randn(B, T, 2, 5)
    err = torch.arange(B * T, dtype=torch.float32).view(B, T, 1, 1) / 10
    tau = torch.tensor([[0.0, 0.25, 0.5, 0.75]] * B)
    d = torch.full((B, T), 0.25)
    d[:, :2] = 1 / 8  # the first two frames are flow frames
    out = shortcut_forcing_loss(lambda z, t, dd: z1 + err, z1, tau, d, d_min=1 / 8)
    flow = (err.view(B, T) ** 2)[:, :2]
    torch.testing.assert_close(out.per_frame[:, :2], flow)
    torch.testing.assert_close(out.loss, (ramp_weight(tau) * out.per_frame).mean())
    torch.testing.assert_close(out.terms["flow"] + out.terms["bootstrap"], out.loss)
    torch.testing.assert_close(out.terms["flow"], (ramp_weight(tau[:, :2]) * flow).sum() / (B * T))
    # Count-weighted: repeating every frame (a longer batch of the same content) keeps the mean.
    rep = shortcut_forcing_loss(
        lambda z, t, dd: torch.cat([z1, z1], 1) + torch.cat([err, err], 1),
        torch.cat([z1, z1], 1),
        torch.cat([tau, tau], 1),
        torch.cat([d, d], 1),
        d_min=1 / 8,
        z0=torch.zeros(B, 2 * T, 2, 5),
    )
    torch.testing.assert_close(rep.terms["flow"], out.terms["flow"])
    # The uniform weighting: the same per-frame losses, each counted once whatever its signal level.
    flat = shortcut_forcing_loss(lambda z, t, dd: z1 + err, z1, tau, d, d_min=1 / 8, weight=uniform_weight)
    torch.testing.assert_close(flat.per_frame, out.per_frame)
    torch.testing.assert_close(flat.loss, out.per_frame.mean())
    torch.testing.assert_close(flat.terms["flow"], flow.sum() / (B * T))
    assert LOSS_WEIGHTINGS == {"ramp": ramp_weight, "uniform": uniform_weight}


def test_teacher_passes_only_on_bootstrap_rows_without_autograd():
    calls = []
    net = CausalToyDenoiser(3)

    def denoiser(z, tau, d, *, bias):
        calls.append(dict(rows=z.shape[0], grad=torch.is_grad_enabled(), z=z, tau=tau, d=d, bias=bias))
        return net(z, tau, d, bias=bias)

    B, T = 3, 4
    z1, bias = torch.randn(B, T, 3), torch.tensor([1.0, 2.0, 3.0])
    tau = torch.full((B, T), 0.5)
    d = torch.full((B, T), 1 / 8)
    shortcut_forcing_loss(denoiser, z1, tau, d, d_min=1 / 8, bias=bias)
    assert len(calls) == 1  # flow-only batch: no teacher pass at all

    calls.clear()
    d[1, 2] = 1 / 2  # one bootstrap frame, in row 1
    out = shortcut_forcing_loss(denoiser, z1, tau, d, d_min=1 / 8, bias=bias)
    assert [c["rows"] for c in calls] == [
        1,
        1,
        3,
    ]  # two teacher passes on the one bootstrap row, then the student
    assert [c["grad"] for c in calls] == [False, False, True]
    first, second, student = calls
    assert torch.equal(first["bias"], bias[1:2])  # per-row conditioning sliced with the rows
    # Flow frames keep their student inputs and labels in both passes; only the bootstrap frame moves.
    keep = torch.tensor([True, True, False, True])
    for teacher in (first, second):
        assert torch.equal(teacher["z"][0, keep], student["z"][1, keep])
        assert torch.equal(teacher["tau"][0, keep], student["tau"][1, keep])
        assert torch.equal(teacher["d"][0], torch.tensor([1 / 8, 1 / 8, 1 / 4, 1 / 8]))
    assert first["tau"][0, 2] == 0.5 and second["tau"][0, 2] == 0.75
    assert not torch.equal(second["z"][0, 2], student["z"][1, 2])
    assert out.bootstrap.sum() == 1


def test_separate_teacher_is_used_for_targets():
    student_calls, teacher_calls = [], []
    z1 = torch.randn(2, 3, 4)
    tau, d = torch.zeros(2, 3), torch.full((2, 3), 0.5)

    def student(z, t, dd):
        student_calls.append(1)
        return z * 0.5

    def teacher(z, t, dd):
        teacher_calls.append(1)
        return z * 0.5

    shortcut_forcing_loss(student, z1, tau, d, d_min=1 / 4, teacher=teacher)
    assert len(student_calls) == 1 and len(teacher_calls) == 2


def test_rejects_clean_training_level_and_bad_shapes():
    z1 = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="tau = 1"):
        shortcut_forcing_loss(lambda z, t, d: z, z1, torch.ones(2, 3), torch.full((2, 3), 0.25), d_min=0.25)
    with pytest.raises(ValueError, match="must both be"):
        shortcut_forcing_loss(lambda z, t, d: z, z1, torch.zeros(2, 2), torch.full((2, 2), 0.25), d_min=0.25)


def test_teacher_always_runs_both_passes_without_changing_the_loss():
    """Sharded training needs the same forward calls on every rank: with no bootstrap frame the teacher still
    runs twice (on one row), and the loss is exactly the flow-only one."""
    calls = []

    def denoiser(z, tau, d, **_):
        calls.append(z.shape[0])
        return 0.5 * z

    z1 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    tau = torch.full((3, 4), 0.25)
    d = torch.full((3, 4), 0.125)  # every frame at d_min: no bootstrap frame
    z0 = torch.randn(z1.shape, generator=torch.Generator().manual_seed(1))
    plain = shortcut_forcing_loss(denoiser, z1, tau, d, d_min=0.125, z0=z0)
    assert calls == [3]  # the student only
    calls.clear()
    always = shortcut_forcing_loss(denoiser, z1, tau, d, d_min=0.125, z0=z0, teacher_always=True)
    assert calls == [1, 1, 3]  # two teacher passes on one row, then the student
    assert torch.equal(always.loss, plain.loss) and torch.equal(always.per_frame, plain.per_frame)
